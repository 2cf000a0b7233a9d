"""The report's paired comparison of GTA with each rival: mean difference over seeds, seeds ahead, and a paired
bootstrap interval over test images and seeds (checked against a slow reference)."""
import json

import numpy as np
import pytest

from gtaseg.report import make_report
from gtaseg.report.paired import bootstrap_interval
from gtaseg.rundir import Prediction, RunDir
from tests.test_report import fake_run, read_csv

# ----------------------------------------------------------------------------------------------- bootstrap


def slow_interval(a, b, resamples, seed=0, level=0.95):
    """The bootstrap spelled out: per resample, draw seeds and then images as the fast code does, score each
    method's top-1 on the drawn images for each drawn seed, and average the differences."""
    rng = np.random.default_rng(seed)
    seeds, images = len(a), len(a[0])
    stats = []
    for _ in range(resamples):
        drawn_seeds = rng.integers(0, seeds, seeds)
        drawn_images = rng.integers(0, images, images)
        total = 0.0
        for k in drawn_seeds:
            top1_a = 100.0 * sum(a[k][i] for i in drawn_images) / images
            top1_b = 100.0 * sum(b[k][i] for i in drawn_images) / images
            total += top1_a - top1_b
        stats.append(total / seeds)
    tail = 100 * (1 - level) / 2
    return tuple(np.percentile(stats, [tail, 100 - tail]))


# 3 seeds × 8 test images, by hand: a is ahead on a few images, behind on one.
A = [[1, 1, 0, 1, 0, 1, 1, 0], [1, 0, 1, 1, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1, 0, 0]]
B = [[1, 0, 0, 1, 0, 0, 1, 0], [1, 0, 1, 0, 0, 1, 1, 0], [0, 1, 1, 1, 0, 1, 1, 0]]


def test_bootstrap_matches_the_slow_reference():
    fast = bootstrap_interval(A, B, resamples=300)
    assert fast == pytest.approx(slow_interval(A, B, 300), abs=1e-9)
    assert fast[0] <= 100.0 * (np.mean(A) - np.mean(B)) <= fast[1]


def test_bootstrap_of_fractional_scores_matches_the_slow_reference():
    # Per-image Jaccard in [0, 1], as Table 4's paired comparison resamples them.
    rng = np.random.default_rng(3)
    a, b = rng.random((3, 8)), rng.random((3, 8))
    fast = bootstrap_interval(a.tolist(), b.tolist(), resamples=300)
    assert fast == pytest.approx(slow_interval(a.tolist(), b.tolist(), 300), abs=1e-9)
    assert fast[0] <= 100.0 * (a.mean() - b.mean()) <= fast[1]


def test_interval_excludes_zero_for_a_clear_lead():
    rng = np.random.default_rng(1)
    b = rng.random((3, 200)) < 0.5
    a = b | (rng.random((3, 200)) < 0.3)  # right wherever b is, and on about 30 % of the rest
    low, high = bootstrap_interval(a, b, resamples=2000)
    assert 0 < low < high


def test_interval_includes_zero_without_a_lead():
    rng = np.random.default_rng(2)
    a = rng.random((3, 200)) < 0.5
    b = a.copy()
    for k in range(3):  # flip 20 images each way: the same top-1, different images right
        right, wrong = rng.permutation(np.flatnonzero(a[k]))[:20], rng.permutation(np.flatnonzero(~a[k]))[:20]
        b[k, right], b[k, wrong] = False, True
    assert a.sum() == b.sum()
    low, high = bootstrap_interval(a, b, resamples=2000)
    assert low < 0 < high


def test_bootstrap_is_deterministic_and_seeded():
    assert bootstrap_interval(A, B, resamples=500) == bootstrap_interval(A, B, resamples=500)
    assert bootstrap_interval(A, B, resamples=500, seed=1) != bootstrap_interval(A, B, resamples=500)
    with pytest.raises(ValueError, match="same seeds"):
        bootstrap_interval(A, [row[:7] for row in B])


# ------------------------------------------------------------------------------------------------- report


def run_with_predictions(root, name, correct, **kw):
    """A fake finished run whose final.json top1 is that of ``correct`` (one bool per test image)."""
    d = fake_run(root, name, top1=100.0 * sum(correct) / len(correct), **kw)
    RunDir(d).write_predictions([Prediction(f"c{i % 2}/{i}.png", f"c{i % 2}", f"c{i % 2}" if ok else "other")
                                 for i, ok in enumerate(correct)])
    return d


def test_report_pairs_gta_with_each_rival(tmp_path):
    rng = np.random.default_rng(0)
    for s in range(3):
        base = rng.random(60) < 0.5
        run_with_predictions(tmp_path, f"cub/baseline_r0.15_s{s}", base.tolist(), method="baseline", lam=0.0, seed=s)
        # GTA: right wherever the baseline is, and on a third of the rest
        run_with_predictions(tmp_path, f"cub/gta_r0.15_s{s}", (base | (rng.random(60) < 0.33)).tolist(), seed=s)
    # L2-SP: an old run folder without predictions, and only seeds 0 and 1
    l2sp = [55.0, 40.0]
    for s, top1 in enumerate(l2sp):
        fake_run(tmp_path, f"cub/l2sp_r0.15_s{s}", method="l2sp", seed=s, top1=top1)
    rep = make_report(tmp_path)
    rows = {r["rival"]: r for r in read_csv(tmp_path / "paired.csv")}
    assert set(rows) == {"baseline", "l2sp"}
    gta = {s: json.loads((tmp_path / f"cub/gta_r0.15_s{s}/final.json").read_text())["top1"] for s in range(3)}
    base = {s: json.loads((tmp_path / f"cub/baseline_r0.15_s{s}/final.json").read_text())["top1"] for s in range(3)}
    b = rows["baseline"]
    assert b["seeds"] == "0;1;2" and b["seeds_ahead"] == "3"
    assert float(b["mean_difference"]) == pytest.approx(np.mean([gta[s] - base[s] for s in range(3)]), abs=1e-4)
    assert 0 < float(b["ci_low"]) < float(b["mean_difference"]) < float(b["ci_high"])
    assert b["test_images"] == "60" and b["resamples"] == "10000" and b["ci_missing"] == ""
    # Only the seeds both have count; without predictions, the mean and seeds ahead but no interval.
    l = rows["l2sp"]
    assert l["seeds"] == "0;1" and l["n_seeds"] == "2"
    assert l["seeds_ahead"] == str(sum(gta[s] > l2sp[s] for s in range(2)))
    assert float(l["mean_difference"]) == pytest.approx(np.mean([gta[s] - l2sp[s] for s in range(2)]), abs=1e-4)
    assert l["ci_low"] == l["ci_high"] == "" and "no test predictions" in l["ci_missing"]
    assert "## GTA against each rival" in rep.markdown and "10000 resamples" in rep.markdown
    assert f"| {float(l['mean_difference']):+.2f} | n/a |" in rep.markdown
    assert make_report(tmp_path).markdown == rep.markdown  # the same interval every time


def test_no_paired_section_without_gta(tmp_path):
    for m in ("baseline", "l2sp"):
        fake_run(tmp_path, f"cub/{m}_r0.15_s0", method=m)
    assert "GTA against" not in make_report(tmp_path).markdown
    assert not (tmp_path / "paired.csv").exists()
