"""gtaseg sweep: grid expansion and run names, skip-finished / redo-unfinished, --print lines, kill and restart."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gtaseg.cli import main
from gtaseg.errors import GtasegError
from gtaseg.sweep import (command_line, effective, expand, job_lock, load_config, parse_config, pending_lines, run_name,
                          run_sweep, train_argv)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def cfg(grid, base=None, **extra):
    return parse_config({"base": base or {}, "grid": grid, **extra}, name="t")


# ------------------------------------------------------------------------------------------- expansion


def test_grid_expansion_and_names():
    jobs = expand(cfg({"method": ["baseline", "gta", "l2sp"], "lam_factor": [0.1, 1, 10],
                       "sampling_rate": [0.15, 1.0], "seed": [0, 1]}, base={"data": "cub", "steps": 5}))
    names = [j.name for j in jobs]
    assert len(jobs) == len(set(names)) == (1 + 3 + 3) * 2 * 2  # baseline ignores λ: one run per point
    assert "cub/baseline_r0.15_s0" in names
    assert "cub/gta_lam0.1_r0.15_s0" in names and "cub/gta_lam10_r1_s1" in names
    assert "cub/l2sp_lam0.001_r0.15_s0" in names  # 0.1 × 0.01, rounded; not 0.0010000000000000002
    job = next(j for j in jobs if j.name == "cub/l2sp_lam0.001_r0.15_s0")
    assert job.config == {"data": "cub", "steps": 5, "method": "l2sp", "sampling_rate": 0.15, "seed": 0, "lam": 0.001}
    base = next(j for j in jobs if j.name == "cub/baseline_r1_s1")
    assert "lam" not in base.config and "lam_factor" not in base.config
    # the name does not depend on whether λ is explicit or the method's default
    assert run_name({"method": "gta", "data": "cub"}) == run_name({"method": "gta", "lam": 1.0, "data": "cub"})


def test_names_of_other_keys_transmix_and_folders(tmp_path):
    jobs = expand(cfg({"transmix": [False, True], "init": ["ckpt/dino_vits16.pth", "random:vit_tiny_patch16_224"]},
                      base={"method": "gta", "data": str(tmp_path / "my data")}))
    assert [j.name for j in jobs] == [
        "my-data/gta_lam1_r1_s0_init-dino-vits16", "my-data/gta_lam1_r1_s0_init-random-vit-tiny-patch16-224",
        "my-data/gta_tm_lam1_r1_s0_init-dino-vits16", "my-data/gta_tm_lam1_r1_s0_init-random-vit-tiny-patch16-224"]


def test_grid_list_union_overrides_base_and_dedupes():
    jobs = expand(cfg([{"method": ["gta"], "lam": [1.0, 100.0]}, {"method": ["gta", "baseline"]}],
                      base={"data": "pet", "init": "a.pth"}))
    assert [j.name for j in jobs] == ["pet/gta_lam1_r1_s0", "pet/gta_lam100_r1_s0", "pet/baseline_r1_s0"]
    over = expand(cfg([{"init": ["b.pth"]}], base={"data": "pet", "init": "a.pth"}))
    assert over[0].config["init"] == "b.pth" and over[0].name == "pet/gta_lam1_r1_s0_init-b"


@pytest.mark.parametrize("raw, message", [
    ({"grid": {"methd": ["gta"]}}, "not a training option"),
    ({"base": {"stepz": 3}}, "not a training option"),
    ({"grid": {"seed": 3}}, "non-empty list"),
    ({"grid": {"lam": [1], "lam_factor": [1]}}, "not both"),
    ({"grid": {"method": ["nope"]}}, "unknown method"),
    ({"grid": {"seed": [0]}, "extra": 1}, "unknown top-level"),
    ({"grid": {"init": ["a/x.pth", "b/x.pth"]}}, "share the run name"),
    ({"grid": {"lr": ["fast"]}}, "not a number"),
])
def test_config_errors(raw, message):
    with pytest.raises(GtasegError, match=message):
        expand(parse_config(raw))


def test_yaml_numbers_and_file_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("base: {lr: 1e-4, data: cub}\ngrid: {lam_factor: [1e-1]}\n")  # YAML 1.1 reads 1e-4 as text
    c = load_config(p)
    assert c.name == "s" and c.base["lr"] == 1e-4 and c.grids[0]["lam_factor"] == [0.1]
    p.write_text("base: [oops")
    with pytest.raises(GtasegError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(GtasegError, match="no such sweep config"):
        load_config(tmp_path / "missing.json")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_expands_to_train_commands(path):
    jobs = expand(load_config(path))
    assert jobs
    for job in jobs:
        train_argv(job.config)  # an unknown or misspelt field has no gtaseg train option and fails here


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_has_a_row_with_its_job_count(path):
    """configs/README.md's table is where a user looks for what a config runs and how many runs it costs."""
    rows = [line for line in (CONFIGS / "README.md").read_text().splitlines() if line.startswith(f"| `{path.name}`")]
    assert len(rows) == 1, f"configs/README.md has {len(rows)} rows for {path.name}"
    count = rows[0].rstrip(" |").rsplit("|", 1)[1].strip()
    if count.isdigit():  # a few rows give a formula (a sweep whose later seeds depend on its report)
        assert int(count) == len(expand(load_config(path)))


def test_corloc_rerun_config_is_the_comparison_s_jobs():
    """cars50_corloc15.yaml reruns cars50.yaml's jobs for their weights; a base that drifted would rerun other jobs."""
    reruns, comparison = (load_config(CONFIGS / f"{n}.yaml") for n in ("cars50_corloc15", "cars50"))
    assert reruns.base == comparison.base
    assert {j.name for j in expand(reruns)} <= {j.name for j in expand(comparison)}


def test_paper_configs_expand_and_share_runs():
    counts = {"table2": 960, "table3": 900, "table5": 480, "table6": 480, "figure4": 300, "smoke": 8}
    jobs = {}
    for name, n in counts.items():
        c = load_config(CONFIGS / f"{name}.yaml")
        jobs[name] = {j.name: j for j in expand(c)}
        assert len(jobs[name]) == n, name
        for job in jobs[name].values():
            train_argv(job.config)  # every field has a gtaseg train option, so --print works
    t2 = jobs["table2"]
    for name, shared in {"table3": 540, "table5": 240, "table6": 240, "figure4": 240}.items():
        common = set(jobs[name]) & set(t2)
        assert len(common) == shared, name
        assert all(effective(jobs[name][k].config) == effective(t2[k].config) for k in common), name  # same run
    smoke = load_config(CONFIGS / "smoke.yaml")
    assert smoke.base["data"] == "synthetic"
    assert load_config(CONFIGS / "table6.yaml").labels["init"]


# ----------------------------------------------------------------------------------- skip and redo


def fake_train(calls):
    def train(config, out):
        calls.append(out)
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps(config))
        (out / "final.json").write_text(json.dumps({"top1": 50.0}))
        return {"top1": 50.0}
    return train


def test_skip_finished_and_redo_unfinished(tmp_path):
    jobs = expand(cfg({"method": ["baseline", "gta"], "seed": [0, 1]}, base={"data": "cub"}))
    runs = tmp_path / "runs"
    done = jobs[0].dir(runs)
    done.mkdir(parents=True)
    (done / "config.json").write_text(json.dumps(jobs[0].config))
    (done / "final.json").write_text('{"top1": 1.0}')
    half = jobs[1].dir(runs)
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    (half / "stale.txt").write_text("from a killed run")
    calls = []
    res = run_sweep(jobs, runs, train_fn=fake_train(calls), echo=lambda s: None)
    assert res.skipped == [jobs[0].name] and res.ran == [j.name for j in jobs[1:]]
    assert calls == [j.dir(runs) for j in jobs[1:]]
    assert not (half / "stale.txt").exists() and (half / "final.json").is_file()
    assert json.loads((done / "final.json").read_text())["top1"] == 1.0  # untouched
    calls.clear()
    res = run_sweep(jobs, runs, train_fn=fake_train(calls), echo=lambda s: None)
    assert calls == [] and len(res.skipped) == 4


def test_failure_stops_or_keeps_going(tmp_path):
    jobs = expand(cfg({"seed": [0, 1, 2]}, base={"data": "cub"}))

    def flaky(config, out):
        if config["seed"] == 1:
            out.mkdir(parents=True)
            raise RuntimeError("boom")
        return fake_train([])(config, out)

    with pytest.raises(GtasegError, match="seed|boom"):
        run_sweep(jobs, tmp_path, train_fn=flaky, echo=lambda s: None)
    assert not (tmp_path / jobs[2].name).exists()
    res = run_sweep(jobs, tmp_path, train_fn=flaky, keep_going=True, echo=lambda s: None)
    assert [n for n, _ in res.failed] == [jobs[1].name] and res.ran == [jobs[2].name]


def test_resume_continues_only_the_same_job(tmp_path):
    jobs = expand(cfg({"seed": [0, 1]}, base={"data": "cub", "steps": 10}))
    for job, steps in zip(jobs, (10, 7)):  # the second was started with other settings
        d = job.dir(tmp_path)
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({**job.config, "steps": steps, "workers": 3}))
        (d / "checkpoint.pt").write_text("state")
    calls = []

    def train(config, out, resume=False):
        calls.append((out.name, resume, (out / "checkpoint.pt").exists()))
        out.mkdir(parents=True, exist_ok=True)
        (out / "final.json").write_text("{}")
        return {"top1": 1.0}

    said = []
    run_sweep(jobs, tmp_path, resume=True, train_fn=train, echo=said.append)
    assert calls == [(jobs[0].dir(tmp_path).name, True, True), (jobs[1].dir(tmp_path).name, False, False)]
    assert any("resuming" in s for s in said) and any("clearing" in s for s in said)


def test_stop_signal_ends_the_sweep(tmp_path):
    from gtaseg.stopping import Interrupted

    jobs = expand(cfg({"seed": [0, 1]}, base={"data": "cub"}))

    def stopped(config, out):
        raise Interrupted(15, 3, out)

    with pytest.raises(Interrupted):
        run_sweep(jobs, tmp_path, keep_going=True, train_fn=stopped, echo=lambda s: None)


def test_locked_job_is_left_to_its_owner(tmp_path):
    jobs = expand(cfg({"seed": [0, 1]}, base={"data": "cub"}))
    calls = []
    with job_lock(tmp_path, jobs[0]) as mine:
        assert mine
        res = run_sweep(jobs, tmp_path, train_fn=fake_train(calls), echo=lambda s: None)
    assert res.busy == [jobs[0].name] and calls == [jobs[1].dir(tmp_path)]


def test_finished_run_with_other_settings_warns(tmp_path):
    jobs = expand(cfg({"seed": [0]}, base={"data": "cub", "steps": 10}))
    d = jobs[0].dir(tmp_path)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({**jobs[0].config, "steps": 5}))
    (d / "final.json").write_text('{"top1": 1}')
    said = []
    run_sweep(jobs, tmp_path, train_fn=fake_train([]), echo=said.append)
    assert any("steps: run has 5, config says 10" in s for s in said)


# ---------------------------------------------------------------------------------------- --print


def test_print_lines(tmp_path):
    from gtaseg.cli.train import train as train_command

    config = tmp_path / "s.json"
    config.write_text(json.dumps({
        "name": "p", "base": {"data": "synthetic", "init": "random:vit_tiny_patch16_224", "steps": 3,
                              "randaugment": False, "blocks": [9, 10, 11], "synthetic": {"shortcut": 0.5}},
        "grid": {"method": ["baseline", "gta"], "sampling_rate": [0.15, 1.0], "lam_factor": [0.1, 1]}}))
    runs = tmp_path / "runs"
    jobs = expand(load_config(config))
    assert len(jobs) == 2 + 4
    finished = jobs[0].dir(runs)
    finished.mkdir(parents=True)
    (finished / "final.json").write_text("{}")
    leftover = jobs[1].dir(runs)
    leftover.mkdir(parents=True)
    res = CliRunner().invoke(main, ["sweep", str(config), "--runs-dir", str(runs), "--print"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln]
    assert len(lines) == 5 and "6 jobs: 1 finished, 5 to run" in res.stderr
    assert lines[0].startswith(f"rm -rf {leftover} && gtaseg train ")
    for line, job in zip(lines, jobs[1:]):
        argv = shlex.split(line.split(" && ")[-1])
        assert argv[:2] == ["gtaseg", "train"] and argv[-2:] == ["--out", str(job.dir(runs))]
        # the line parses back to the job's settings with gtaseg train's own option parser
        ctx = train_command.make_context("train", argv[2:])
        p = ctx.params
        assert p["method"] == job.config["method"] and p["sampling_rate"] == job.config["sampling_rate"]
        assert p["lam"] == job.config.get("lam") and p["steps"] == 3 and p["no_randaugment"]
        assert p["blocks"] == "9,10,11" and p["synthetic_opts"] == ("shortcut=0.5",)
    assert any("--lam 0.1" in ln for ln in lines)
    assert not list(runs.glob("*/*/config.json"))  # printing ran nothing
    assert (runs / "sweep.p.json").is_file()
    # --dry-run is the same thing
    again = CliRunner().invoke(main, ["sweep", str(config), "--runs-dir", str(runs), "--dry-run"])
    assert again.stdout == res.stdout
    # --resume: an interrupted run of the same job continues instead
    (leftover / "config.json").write_text(json.dumps(jobs[1].config))
    res = CliRunner().invoke(main, ["sweep", str(config), "--runs-dir", str(runs), "--print", "--resume"])
    assert res.stdout.splitlines()[0] == f"gtaseg train --resume {leftover}"


def test_print_refuses_fields_without_a_train_option():
    job = expand(cfg({"seed": [0]}, base={"crop_scale": [0.5, 1.0]}))[0]
    with pytest.raises(GtasegError, match="crop_scale"):
        command_line(job, "runs")


def test_pending_lines_skip_locked_leftover(tmp_path):
    jobs = expand(cfg({"seed": [0, 1]}, base={"data": "cub"}))
    jobs[0].dir(tmp_path).mkdir(parents=True)
    with job_lock(tmp_path, jobs[0]):
        lines, counts = pending_lines(jobs, tmp_path)
    assert counts["running"] == 1 and len(lines) == 1 and lines[0].endswith(str(jobs[1].dir(tmp_path)))


# ------------------------------------------------------------------------------------ kill, restart


def make_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((32, 32, 3)) * 90 + c * 120).astype(np.uint8)).save(d / f"{i}.png")
    return root


def sweep_process(config: Path, runs: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from gtaseg.cli import main; main(prog_name='gtaseg')",
                             "sweep", str(config), "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_kill_and_restart(tmp_path):
    data = make_folder(tmp_path / "tiny")
    config = tmp_path / "kill.json"
    config.write_text(json.dumps({
        "base": {"data": str(data), "init": "random:vit_tiny_patch16_224", "image_size": 32, "batch_size": 4,
                 "steps": 2, "workers": 0, "randaugment": False},
        "grid": {"method": ["baseline", "gta"], "seed": [0, 1]}}))
    runs = tmp_path / "runs"
    jobs = expand(load_config(config))
    proc = sweep_process(config, runs)
    try:
        # Kill once a run has finished, preferably while the next one is under way (config.json, no final.json).
        deadline, first = time.monotonic() + 120, None
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no run finished in time"
            done = [j for j in jobs if (j.dir(runs) / "final.json").exists()]
            partial = [j for j in jobs if (j.dir(runs) / "config.json").exists() and j not in done]
            first = first or (time.monotonic() if done else None)
            if done and (partial or time.monotonic() - first > 10):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    finished = {j.name: (j.dir(runs) / "final.json").stat().st_mtime_ns
                for j in jobs if (j.dir(runs) / "final.json").exists()}
    assert 1 <= len(finished) < len(jobs), "the kill came too late to leave work undone"
    partial = [j.name for j in jobs if j.dir(runs).exists() and j.name not in finished]

    proc = sweep_process(config, runs)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert f"{len(finished)} already finished" in out
    for name in partial:  # the run the kill interrupted was cleared and done again
        assert f"{name}: clearing an unfinished run" in out
    for j in jobs:
        assert (j.dir(runs) / "final.json").is_file(), j.name
    for name, mtime in finished.items():  # the finished runs were not redone
        assert (runs / name / "final.json").stat().st_mtime_ns == mtime
    assert out.count("top1") == len(jobs) - len(finished)
