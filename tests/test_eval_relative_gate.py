"""check-attention's gates relative to a reference model, and the per-block / per-head report."""
import csv
import json

import pytest
import torch

from gtaseg.evaluation.gate import Gate
from gtaseg.models import create_vit, model_info, save_model
from tests.test_eval_voc import invoke, one_line_error, voc_root  # noqa: F401 (fixture)


@pytest.fixture
def two_models(tmp_path):
    """Two saved random ViT-Ti: 'same' is a copy of 'source', so its ratio to it is exactly 1."""
    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224")
    paths = {}
    for name in ("source", "same"):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_model(paths[name], model, model_info(model, "vit_tiny_patch16_224"))
    torch.manual_seed(1)
    other = create_vit("vit_tiny_patch16_224")
    paths["other"] = tmp_path / "other.safetensors"
    save_model(paths["other"], other, model_info(other, "vit_tiny_patch16_224"))
    return paths


def test_relative_gates_pass_and_fail(voc_root, two_models, tmp_path):  # noqa: F811
    base = ["check-attention", "--voc-root", voc_root, "--image-size", 64, "--workers", 0, "--variant", "merged"]
    same = [*base, "--ckpt", two_models["same"], "--reference", two_models["source"]]
    passed = invoke(*same, "--min-ratio", 1.0, "--max-drop", 0)
    assert passed.exit_code == 0, passed.output
    assert passed.stdout.startswith("PASS: merged Jaccard") and "1.000 × the reference's" in passed.stdout
    failed = invoke(*same, "--min-ratio", 1.001)
    verdict = [line for line in failed.stderr.splitlines() if line.strip() and not line.startswith("eval:")]  # no bars
    assert failed.exit_code == 1 and len(verdict) == 1 and verdict[0].startswith("FAIL: ")
    assert invoke(*same, "--max-drop", -0.01).exit_code == 1  # must beat the reference by 0.01: it ties
    # Against another model: the verdict follows the two Jaccards measured in the same run.
    out = tmp_path / "gate.json"
    other = invoke(*base, "--ckpt", two_models["other"], "--reference", two_models["source"], "--min-ratio", 0.9,
                   "--max-drop", 5, "--min-jaccard", 0, "--out", out)
    report = json.loads(out.read_text())
    value, ref = report["jaccard"], report["reference_jaccard"]
    expected = value >= 0.9 * ref and value >= ref - 5
    assert other.exit_code == (0 if expected else 1), other.output
    assert report["passed"] == expected and len(report["checks"]) == 3
    assert report["protocol"]["preset"] == "gtaseg" and report["protocol"]["heads"] == "merged"


def test_relative_gate_needs_a_reference(voc_root, two_models):  # noqa: F811
    base = ["check-attention", "--voc-root", voc_root, "--ckpt", two_models["same"], "--workers", 0]
    one_line_error(invoke(*base, "--min-ratio", 0.9), "need --reference")
    one_line_error(invoke(*base, "--reference", two_models["source"]), "--min-jaccard is required")


def test_per_block_report(voc_root, two_models, tmp_path):  # noqa: F811
    out, prefix = tmp_path / "r.json", tmp_path / "blocks"
    result = invoke("eval-voc", "--ckpt", two_models["source"], "--voc-root", voc_root, "--image-size", 64,
                    "--workers", 0, "--out", out, "--per-block", prefix)
    assert result.exit_code == 0, result.output
    assert "Jaccard % per block and head" in result.output and "head2" in result.output
    report = json.loads(out.read_text())
    blocks = report["per_block"]
    assert blocks["blocks"] == list(range(12)) and len(blocks["per_head"]) == 12 and len(blocks["per_head"][0]) == 3
    # The last block's row is the main report's numbers.
    assert blocks["best"][-1] == pytest.approx(report["jaccard"]["best"])
    assert blocks["merged"][-1] == pytest.approx(report["jaccard"]["merged"])
    # A head alone never beats the best head per class.
    for row, best in zip(blocks["per_head"], blocks["best"]):
        assert max(row) <= best + 1e-9
    rows = list(csv.reader((tmp_path / "blocks.csv").open()))
    assert rows[0] == ["block", "head0", "head1", "head2", "best", "merged"] and len(rows) == 13
    assert float(rows[-1][4]) == pytest.approx(report["jaccard"]["best"])
    assert (tmp_path / "blocks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_checks_each_threshold_set():
    gate = Gate(min_jaccard=40, min_ratio=0.9, max_drop=5)
    assert gate.relative and not Gate(min_jaccard=40).relative
    assert gate.checks(45.0, 48.0) == [("the minimum is 40.00", True),
                                       ("0.938 × the reference's 48.00 (allowed down to 0.9 ×)", True),
                                       ("dropped 3.00 J from the reference's 48.00 (allowed 5)", True)]
    assert [ok for _, ok in gate.checks(39.0, 50.0)] == [False, False, False]
    assert Gate(min_jaccard=40).checks(45.0) == [("the minimum is 40.00", True)]
    # The FAIL line, worded as a sentence.
    assert Gate(max_drop=5).checks(26.26, 33.0) == [("dropped 6.74 J from the reference's 33.00 (allowed 5)", False)]
    assert Gate(max_drop=5).checks(34.0, 33.0)[0][0] == "rose 1.00 J above the reference's 33.00 (allowed 5)"
