import os
from pathlib import Path

import pytest
import torch

# Keep test runs off the user's cache and reproducible.
os.environ.setdefault("GTASEG_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test"))
torch.set_num_threads(min(2, torch.get_num_threads()))

# Real photos lie beside the repository (../shared/data, each folder with a README on provenance and terms),
# never in it. GTASEG_SHARED_DATA points elsewhere, for a checkout (a git worktree, say) with no ../shared.
SHARED_DATA = Path(os.environ.get("GTASEG_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
HORSES = SHARED_DATA / "weizmann-horses-voc"
VOC12 = SHARED_DATA / "voc2012-subset"
COCO128 = SHARED_DATA / "coco128-seg"


def _shared(root: Path, marker: str, what: str) -> Path:
    """``root`` when its ``marker`` file is there, else skip the test saying what is missing and where."""
    if not (root / marker).is_file():
        pytest.skip(f"{what} not found at {root} (../shared/data beside the repository, or GTASEG_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def horses_root() -> Path:
    return _shared(HORSES, "ImageSets/Segmentation/val.txt", "real horse photos")


@pytest.fixture(scope="session")
def voc12_root() -> Path:
    return _shared(VOC12, "ImageSets/Main/trainval.txt", "real VOC 2012 photos (voc2012-subset)")


@pytest.fixture(scope="session")
def coco128_root() -> Path:
    return _shared(COCO128, "annotations/instances_train2017.json", "real COCO photos (coco128-seg)")


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
