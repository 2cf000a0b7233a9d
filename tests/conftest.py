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
