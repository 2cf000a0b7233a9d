"""`gtaseg eval-masks`: the Jaccard protocol on a classification dataset's own masks."""
import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from gtaseg.cli import main
from tests.fake_layouts import make_pet


def test_pet_trimaps_are_scored_with_their_own_convention(tmp_path):
    make_pet(tmp_path)
    out = tmp_path / "masks.json"
    result = CliRunner().invoke(main, ["eval-masks", "--ckpt", "random:vit_tiny_patch16_224", "--data", "pet",
                                       "--data-root", str(tmp_path), "--image-size", "32", "--workers", "0",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images"] > 0 and report["scored"] == report["images"]
    # Trimap 2 (background) must not count as object: each image is scored on class 1 only.
    assert all(set(img["classes"]) == {"1"} for img in report["per_image"])


def test_folder_without_masks_is_a_one_line_error(tmp_path, tiny_folder):
    result = CliRunner().invoke(main, ["eval-masks", "--ckpt", "random:vit_tiny_patch16_224", "--data", str(tiny_folder),
                                       "--image-size", "32", "--workers", "0"])
    assert result.exit_code == 1
    assert "no object masks" in result.output and len(result.output.strip().splitlines()) == 1


def test_imagefolder_masks_give_the_expected_score(tmp_path):
    """An object covering the whole image: every mask that keeps any patch has IoU = its share of the image."""
    for split in ("test",):
        (tmp_path / split / "a").mkdir(parents=True)
        (tmp_path / "masks" / split / "a").mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / split / "a" / "x.png")
        Image.fromarray(np.ones((32, 32), np.uint8)).save(tmp_path / "masks" / split / "a" / "x.png")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["eval-masks", "--ckpt", "random:vit_tiny_patch16_224", "--data", str(tmp_path),
                                       "--image-size", "32", "--workers", "0", "--mass", "1.0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # mass 1.0 keeps every patch, so the mask is the whole image and IoU with an all-object mask is 100.
    assert report["jaccard"]["merged"] == 100.0 and report["jaccard"]["best"] == 100.0
