import os
from pathlib import Path

import pytest
import torch

# Keep test runs off the user's cache and reproducible.
os.environ.setdefault("GTASEG_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test"))
torch.set_num_threads(min(2, torch.get_num_threads()))

HORSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "weizmann-horses-voc"


@pytest.fixture(scope="session")
def horses_root() -> Path:
    if not (HORSES / "ImageSets" / "Segmentation" / "val.txt").is_file():
        pytest.skip(f"real horse photos not found at {HORSES}")
    return HORSES


def make_image_folder(root: Path, classes: int = 3, train: int = 6, test: int = 3, size: int = 40) -> Path:
    """A tiny ImageFolder with train/ and test/, each class a different brightness so it is learnable."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray((rng.random((size, size, 3)) * 80 + c * 60).astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tinyds"))


# Settings that make a training run take a second or two on the CPU.
TINY_TRAIN = ["--init", "random:vit_tiny_patch16_224", "--image-size", "32", "--batch-size", "4", "--workers", "0"]


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from more threads, and lose a lot on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
