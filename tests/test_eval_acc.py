"""eval-acc: top-1/top-5 of a saved checkpoint on an ImageFolder test split."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gtaseg.cli import main
from gtaseg.data.transforms import eval_transform
from gtaseg.models import create_vit, model_info, save_model

CLASSES = ["cat", "dog", "eel"]


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for c in CLASSES:
        folder = tmp_path / "data" / "test" / c
        folder.mkdir(parents=True)
        for i in range(3):
            paths.append((folder / f"{i}.jpg", CLASSES.index(c)))
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(paths[-1][0])
    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224", num_classes=len(CLASSES))
    ckpt = tmp_path / "model.safetensors"
    info = model_info(model, "vit_tiny_patch16_224", CLASSES)
    save_model(ckpt, model, info)
    return tmp_path, ckpt, model.eval(), info, paths


def test_eval_acc_matches_a_direct_count(setup):
    tmp_path, ckpt, model, info, paths = setup
    out = tmp_path / "acc.json"
    result = CliRunner().invoke(main, ["eval-acc", "--ckpt", str(ckpt), "--data-root", str(tmp_path / "data"),
                                       "--image-size", "32", "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    transform = eval_transform(32, info.mean, info.std, 0.875)  # the paper preset's crop for ImageFolder data
    with torch.inference_mode():
        logits = model(torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in paths]))
    labels = torch.tensor([y for _, y in paths])
    report = json.loads(out.read_text())
    assert report["count"] == 9
    assert report["top1"] == pytest.approx(100 * (logits.argmax(-1) == labels).float().mean().item())
    assert report["top5"] == 100.0  # 3 classes: top-5 is top-3
    assert f"{report['top1']:.2f}" in result.output


def test_eval_acc_refuses_other_classes(setup):
    tmp_path, ckpt, *_ = setup
    (tmp_path / "data" / "test" / "fox").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "test" / "fox" / "0.jpg")
    result = CliRunner().invoke(main, ["eval-acc", "--ckpt", str(ckpt), "--data-root", str(tmp_path / "data"),
                                       "--workers", "0"])
    assert result.exit_code == 1 and "head has 3 classes" in result.output and "has 4" in result.output


def test_eval_acc_reproduces_final_json_of_a_run_at_its_own_resolution(tmp_path, tiny_folder, one_thread):
    """A run at --image-size 48 (the folder preset says 224): eval-acc reads the size and the centre crop from
    the checkpoint, scores through training's accuracy path, and gets final.json's numbers."""
    from tests.conftest import TINY_TRAIN

    run = tmp_path / "run"
    args = [a if a != "32" else "48" for a in TINY_TRAIN]
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_folder), *args, "--steps", "2", "--out", str(run)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "acc.json"
    result = CliRunner().invoke(main, ["eval-acc", "--ckpt", str(run / "model.safetensors"), "--data-root",
                                       str(tiny_folder), "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report, final = json.loads(out.read_text()), json.loads((run / "final.json").read_text())
    assert report["image_size"] == 48 and report["crop_pct"] == 0.875
    assert (report["top1"], report["top5"], report["count"]) == (final["top1"], final["top5"], final["test_images"])


def test_eval_acc_out_help_says_what_it_writes():
    text = " ".join(CliRunner().invoke(main, ["eval-acc", "--help"]).output.split())
    assert "Jaccard" not in text and "accuracy (top1, top5" in text
