"""gtaseg report on hand-made run folders: mean ± std, the best-λ choice, the CSV columns, the PNG."""
import csv
import json
import math

import pytest
from click.testing import CliRunner

from gtaseg.cli import main
from gtaseg.errors import GtasegError
from gtaseg.report import CSV_COLUMNS, collect, make_report, mean_std


def fake_run(root, name, *, method="gta", lam=None, data="cub", rate=0.15, seed=0, top1=50.0, transmix=False,
             source="dino.pth", finished=True, steps=3000, **final):
    from gtaseg.methods import METHODS

    lam = METHODS[method].default_lam if lam is None else lam
    d = root / name
    d.mkdir(parents=True)
    config = {"method": method, "lam": lam, "init": source, "source": source, "data": data, "sampling_rate": rate,
              "seed": seed, "steps": steps, "transmix": transmix, "workers": 8}
    (d / "config.json").write_text(json.dumps(config))
    if finished:
        (d / "final.json").write_text(json.dumps({"top1": top1, "top5": min(100.0, top1 + 20), "method": method,
                                                  "lam": lam, "sampling_rate": rate, "seed": seed, "steps": steps,
                                                  "transmix": transmix, "data": data, **final}))
    return d


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # baseline: 3 seeds
    for s, acc in enumerate([60.0, 62.0, 64.0]):
        fake_run(root, f"cub/baseline_r0.15_s{s}", method="baseline", lam=0.0, seed=s, top1=acc)
    # gta at 0.1, 1, 10 (candidates) and 100 (outside 0.1α..10α: never chosen for Table 2, though the best)
    gta = {0.1: [65.0, 66.0, 67.0], 1.0: [70.0, 71.0, 75.0], 10.0: [69.0, 70.0, 71.0], 100.0: [90.0, 90.0, 90.0]}
    for lam, accs in gta.items():
        for s, acc in enumerate(accs):
            fake_run(root, f"cub/gta_lam{lam:g}_r0.15_s{s}", method="gta", lam=lam, seed=s, top1=acc)
    # l2sp (α = 0.01): 10α is best
    for lam, acc in {0.001: 61.0, 0.01: 62.0, 0.1: 63.5}.items():
        for s in range(3):
            fake_run(root, f"cub/l2sp_lam{lam:g}_r0.15_s{s}", method="l2sp", lam=lam, seed=s, top1=acc + s)
    # one run still going: left out
    fake_run(root, "cub/gta_lam1_r0.3_s0", rate=0.3, finished=False)
    return root


def test_mean_std():
    m, s = mean_std([70.0, 71.0, 75.0])
    assert m == pytest.approx(72.0)
    assert s == pytest.approx(math.sqrt(((2 ** 2) + 1 + 9) / 2))  # sample std, n - 1
    assert mean_std([5.0]) == (5.0, 0.0)


def test_table2_numbers_and_best_lambda(runs):
    rep = make_report(runs)
    rows = {r["method"]: r for r in read_csv(runs / "table2.csv")}
    assert list(read_csv(runs / "table2.csv")[0]) == CSV_COLUMNS
    assert set(rows) == {"baseline", "l2sp", "gta"}
    gta = rows["gta"]
    assert float(gta["lam"]) == 1.0  # best mean among 0.1, 1, 10; λ = 100 is not a candidate
    assert gta["lams_tried"] == "0.1;1;10" and gta["lam_fallback"] == "0"
    assert float(gta["top1_mean"]) == pytest.approx(72.0)
    assert float(gta["top1_std"]) == pytest.approx(math.sqrt(7.0), abs=1e-4)
    assert gta["n"] == "3" and gta["seeds"] == "0;1;2"
    assert float(rows["l2sp"]["lam"]) == pytest.approx(0.1)
    assert float(rows["l2sp"]["top1_mean"]) == pytest.approx(64.5)
    assert float(rows["baseline"]["top1_mean"]) == pytest.approx(62.0)
    assert float(rows["baseline"]["top1_std"]) == pytest.approx(2.0)
    # Markdown: the cell, the best in bold, the footnote about choosing λ on test accuracy
    assert "**72.00 ± 2.65**" in rep.markdown
    assert "62.00 ± 2.00" in rep.markdown
    assert "| CUB-200-2011 |" in rep.markdown and "15%" in rep.markdown
    assert "test accuracy" in rep.markdown and "0.1α, α, 10α" in rep.markdown
    assert "1 unfinished run folder" in rep.markdown
    assert (runs / "report.md").read_text() == rep.markdown
    assert not (runs / "table3.csv").exists() and not (runs / "table5.csv").exists()


def test_figure4_png_and_csv(runs):
    from PIL import Image

    make_report(runs)
    png = runs / "figure4.png"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    points = read_csv(runs / "figure4.csv")
    assert {r["method"] for r in points} == {"gta"}
    assert [float(r["lam"]) for r in points] == [0.1, 1.0, 10.0, 100.0]
    assert float(points[-1]["top1_mean"]) == 90.0


def test_fallback_when_no_candidate_lambda(tmp_path):
    for s in range(2):
        fake_run(tmp_path, f"pet/gta_lam100_r1_s{s}", lam=100.0, data="pet", rate=1.0, seed=s, top1=80.0 + s)
    rep = make_report(tmp_path)
    row = read_csv(tmp_path / "table2.csv")[0]
    assert row["lam"] == "100" and row["lam_fallback"] == "1"
    assert "80.50 ± 0.71 †" in rep.markdown


def test_tables_3_5_6(tmp_path):
    for m in ("guide-block", "guide-msa", "gta", "baseline"):
        for src, bonus in (("ckpt/dino_vits16.pth", 0.0), ("ckpt/deit_small.pth", -5.0)):
            for tm in (False, True):
                for s in range(2):
                    fake_run(tmp_path, f"dogs/{m}_{'tm_' if tm else ''}r0.5_s{s}_{src[5:9]}", method=m, data="dogs",
                             rate=0.5, seed=s, source=src, transmix=tm, top1=70.0 + bonus + s + (2 if tm else 0))
    (tmp_path / "sweep.t6.json").write_text(json.dumps({"labels": {"init": {"ckpt/dino_vits16.pth": "SSL (DINO)",
                                                                             "ckpt/deit_small.pth": "supervised"}}}))
    rep = make_report(tmp_path)
    for name in ("table2", "table3", "table5", "table6"):
        assert (tmp_path / f"{name}.csv").is_file(), name
    t3 = read_csv(tmp_path / "table3.csv")
    assert {r["method"] for r in t3} == {"guide-block", "guide-msa", "gta"}
    assert all(r["transmix"] == "0" for r in t3)
    assert "| attention logits (GTA) [SSL (DINO)] |" in rep.markdown
    t5 = read_csv(tmp_path / "table5.csv")
    assert {(r["method"], r["transmix"]) for r in t5} >= {("gta", "0"), ("gta", "1"), ("baseline", "1")}
    tm_on = [r for r in t5 if r["method"] == "gta" and r["transmix"] == "1" and r["source"] == "SSL (DINO)"][0]
    assert float(tm_on["top1_mean"]) == pytest.approx(72.5)
    t6 = read_csv(tmp_path / "table6.csv")
    assert {r["source"] for r in t6} == {"SSL (DINO)", "supervised"}
    sup = [r for r in t6 if r["method"] == "gta" and r["source"] == "supervised"][0]
    assert float(sup["top1_mean"]) == pytest.approx(65.5)
    assert "guide-block" not in {r["method"] for r in read_csv(tmp_path / "table2.csv")}


@pytest.fixture
def masked_runs(tmp_path):
    """Pet (with masks): top-1 picks GTA's λ = 1, the Jaccard would pick λ = 10. Cars: no masks, Jaccard null."""
    root = tmp_path / "runs"
    per_lam = {  # λ: (top-1, Jaccard merged, Jaccard best, drift) per seed
        0.1: ([83.0, 83.0, 83.0], [55.0, 56.0, 57.0], [65.0, 65.0, 65.0], [0.5, 0.5, 0.5]),
        1.0: ([85.0, 86.0, 90.0], [45.0, 47.0, 52.0], [60.0, 61.0, 62.0], [1.5, 2.5, 3.5]),
        10.0: ([84.0, 84.0, 84.0], [70.0, 71.0, 72.0], [80.0, 80.0, 80.0], [9.0, 9.0, 9.0]),
    }
    for lam, (top1, merged, best, drift) in per_lam.items():
        for s in range(3):
            fake_run(root, f"pet/gta_lam{lam:g}_r1_s{s}", lam=lam, data="pet", rate=1.0, seed=s, top1=top1[s],
                     jaccard_merged=merged[s], jaccard_best=best[s], drift=drift[s])
    for s, (top1, merged) in enumerate([(80.0, 40.0), (81.0, 44.0), (82.0, None)]):  # seed 2: no Jaccard
        fake_run(root, f"pet/baseline_r1_s{s}", method="baseline", lam=0.0, data="pet", rate=1.0, seed=s,
                 top1=top1, jaccard_merged=merged, jaccard_best=merged, drift=4.0)
    fake_run(root, "cars/gta_lam1_r1_s0", data="cars", rate=1.0, top1=70.0, jaccard_merged=None, jaccard_best=None,
             drift=2.0)
    return root


def test_attention_table_at_table2_lambda(masked_runs):
    rep = make_report(masked_runs)
    t2 = {(r["dataset"], r["method"]): r for r in read_csv(masked_runs / "table2.csv")}
    att = {(r["dataset"], r["method"]): r for r in read_csv(masked_runs / "table2_attention.csv")}
    assert set(att) == set(t2)
    gta = att[("pet", "gta")]
    # λ = 1 (mean top-1 87 beats 83 and 84), although λ = 10 has the best Jaccard (71)
    assert float(t2[("pet", "gta")]["lam"]) == 1.0 and float(gta["lam"]) == 1.0
    assert float(gta["jaccard_merged_mean"]) == pytest.approx(48.0)  # (45 + 47 + 52) / 3
    assert float(gta["jaccard_merged_std"]) == pytest.approx(math.sqrt((9 + 1 + 16) / 2), abs=1e-4)
    assert gta["jaccard_merged_n"] == "3" and gta["seeds"] == "0;1;2"
    assert float(gta["jaccard_best_mean"]) == pytest.approx(61.0)
    assert float(gta["drift_mean"]) == pytest.approx(2.5) and float(gta["drift_std"]) == pytest.approx(1.0)
    base = att[("pet", "baseline")]
    assert base["n"] == "3" and base["jaccard_merged_n"] == "2"  # the null is left out, not counted as 0
    assert float(base["jaccard_merged_mean"]) == pytest.approx(42.0)
    cars = att[("cars", "gta")]
    assert cars["jaccard_merged_mean"] == "" and cars["jaccard_merged_n"] == "0" and cars["drift_mean"] == "2.0000"
    # Markdown: after Table 2, one table per metric; bold the best Jaccard, never a drift
    md = rep.markdown
    assert md.index("## Table 2") < md.index("## Attention (Table 2's runs)") < md.index("## Figure 4")
    section = md[md.index("## Attention"):md.index("## Figure 4")]
    assert "**48.00 ± 3.61**" in section and "42.00 ± 2.83 (n=2)" in section
    assert "| Stanford Cars | gta | – |" in section
    drift = section[section.index("### [cls] attention drift"):]
    assert "| 2.50 ± 1.00 |" in drift and "| 4.00 ± 0.00 |" in drift and "**" not in drift
    assert "71.00" not in section  # λ = 10's Jaccard is nowhere
    assert (masked_runs / "table2.csv").read_text().splitlines()[0] == ",".join(CSV_COLUMNS)


def test_no_attention_table_without_jaccard(runs, tmp_path):
    fake_run(runs, "pet/gta_lam1_r1_s0", data="pet", rate=1.0, jaccard_merged=None, jaccard_best=None, drift=1.0)
    rep = make_report(runs)
    assert "Attention" not in rep.markdown and "Jaccard" not in rep.markdown
    assert not (runs / "table2_attention.csv").exists()


def test_report_cli_and_out(runs, tmp_path):
    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["report", str(runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Table 2" in res.output and "72.00 ± 2.65" in res.output
    assert {p.name for p in out.iterdir()} == {"report.md", "table2.csv", "paired.csv", "figure4.png", "figure4.csv",
                                               "runs.csv"}
    assert len(read_csv(out / "runs.csv")) == 24


def test_no_runs(tmp_path):
    with pytest.raises(GtasegError, match="no finished runs"):
        make_report(tmp_path)
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "error: " in res.output


def test_collect_skips_lock_folder_and_unreadable(tmp_path):
    fake_run(tmp_path, "a/gta_lam1_r1_s0")
    bad = fake_run(tmp_path, "a/gta_lam1_r1_s1")
    (bad / "final.json").write_text("{broken")
    (tmp_path / ".locks").mkdir()
    got = collect(tmp_path)
    assert [r.name for r in got.runs] == ["a/gta_lam1_r1_s0"]
    assert got.unreadable == ["a/gta_lam1_r1_s1"]


def test_drift_during_training_for_table2_cells(runs):
    """Mean ± std over seeds per logged step, only at Table 2's chosen λ; a torn last line is skipped."""
    def log(name, drifts, torn=False):
        text = "".join(json.dumps({"step": 10 * (i + 1), "loss": 1.0, "drift": d}) + "\n" for i, d in enumerate(drifts))
        (runs / name / "metrics.jsonl").write_text(text + ('{"step": 30, "dri' if torn else ""))

    for s, (a, b) in enumerate([(100.0, 300.0), (200.0, 500.0), (300.0, 700.0)]):
        log(f"cub/baseline_r0.15_s{s}", [a, b], torn=s == 0)
        log(f"cub/gta_lam1_r0.15_s{s}", [1.0 + s, 2.0 + s])  # Table 2 takes λ = 1
        log(f"cub/gta_lam10_r0.15_s{s}", [0.0, 0.0])
    rep = make_report(runs)
    rows = {(r["method"], r["lam"], r["step"]): r for r in read_csv(runs / "drift.csv")}
    assert float(rows[("baseline", "0", "20")]["drift_mean"]) == pytest.approx(500.0)
    assert float(rows[("baseline", "0", "20")]["drift_std"]) == pytest.approx(200.0)
    assert rows[("gta", "1", "10")]["n"] == "3" and float(rows[("gta", "1", "10")]["drift_mean"]) == pytest.approx(2.0)
    assert not any(lam == "10" for _, lam, _ in rows) and ("baseline", "0", "30") not in rows
    assert not any(m == "l2sp" for m, _, _ in rows)  # no metrics.jsonl: no curve
    assert (runs / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Attention drift during training" in rep.markdown and runs / "drift.png" in rep.files


def test_no_drift_section_without_metrics(runs):
    rep = make_report(runs)
    assert "drift during training" not in rep.markdown and not (runs / "drift.png").exists()


def test_attention_transfer_rows_in_tables_2_and_3(tmp_path):
    """attn-distill (α = 3) and cls-distill (α = 3) are Table 2 methods and Table 3 guidance targets, each at its
    best λ of 0.3, 3, 30."""
    for m, lams in (("guide-block", [0.1, 1.0, 10.0]), ("gta", [0.1, 1.0, 10.0]), ("attn-distill", [0.3, 3.0, 30.0]),
                    ("cls-distill", [0.3, 3.0, 30.0, 300.0])):
        for i, lam in enumerate(lams):
            for s in range(2):
                fake_run(tmp_path, f"cub/{m}_lam{lam:g}_r1_s{s}", method=m, lam=lam, rate=1.0, seed=s, top1=60.0 + i + s)
    rep = make_report(tmp_path)
    t2 = {r["method"]: r for r in read_csv(tmp_path / "table2.csv")}
    assert set(t2) == {"gta", "attn-distill", "cls-distill"}
    assert float(t2["attn-distill"]["lam"]) == 30.0 and t2["attn-distill"]["alpha"] == "3"
    assert float(t2["cls-distill"]["lam"]) == 30.0  # 300 = 100α is not a candidate
    t3 = {r["method"] for r in read_csv(tmp_path / "table3.csv")}
    assert t3 == {"guide-block", "gta", "attn-distill", "cls-distill"}
    assert "| attention maps, all queries (CE) |" in rep.markdown
    assert "| [cls] attention probabilities (CE) |" in rep.markdown


def test_a_repeated_setting_and_seed_is_one_seed(tmp_path):
    """An interrupted and resumed copy beside an uninterrupted run of the same setting and seed: one seed."""
    root = tmp_path / "runs"
    fake_run(root, "cub/baseline_r0.15_s0", method="baseline", lam=0.0, top1=32.0)
    fake_run(root, "cub/baseline_r0.15_s0_again", method="baseline", lam=0.0, top1=32.0)
    fake_run(root, "cub/baseline_r0.15_s1", method="baseline", lam=0.0, seed=1, top1=30.0)
    rep = make_report(root)
    (row,) = read_csv(root / "table2.csv")
    assert row["n"] == "2" and row["seeds"] == "0;1"
    assert "31.00 ± 1.41" in rep.markdown
    assert ("cub/baseline_r0.15_s0_again repeats the setting and seed of cub/baseline_r0.15_s0: counted once"
            in rep.markdown)


def test_the_drift_figure_title_fits_one_panel():
    from gtaseg.report.drift import DriftCurve, drift_figure

    fig = drift_figure([DriftCurve("cub", "gta", 0.15, 1.0, [10, 20], [[1.0, 2.0], [3.0, 4.0]])])
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    title = fig._suptitle.get_window_extent(renderer)
    assert title.x0 >= 0 and title.x1 <= fig.bbox.width, (title, fig.bbox)


def test_the_baseline_from_a_probed_head_is_its_own_row_lp_ft():
    from gtaseg.report.runs import Run

    assert Run("a", {"method": "baseline", "head_init": "probe"}, {}).method == "lp-ft"
    assert Run("b", {"method": "baseline"}, {}).method == "baseline"  # older runs: timm's head
    assert Run("c", {"method": "gta", "head_init": "probe"}, {}).method == "gta"
