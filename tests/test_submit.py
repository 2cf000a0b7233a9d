"""gtaseg sweep --executor submitit: job arrays of the unfinished runs, resubmission of only the failed or
unfinished ones, SLURM options, torchrun for several GPUs. Tested with submitit's debug executor and a fake sbatch."""
import json
import os
import stat
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("submitit")

from gtaseg.cli import main  # noqa: E402
from gtaseg.errors import GtasegError  # noqa: E402
from gtaseg.submit import SUBMITIT_DIR, ClusterOptions, TrainJob, read_record, submit, torchrun_command, wait  # noqa: E402
from gtaseg.sweep import Job, expand, parse_config  # noqa: E402
from tests.conftest import TINY_TRAIN  # noqa: E402


def jobs_of(grid, base=None):
    return expand(parse_config({"base": base or {"data": "cub"}, "grid": grid}, name="t"))


@pytest.fixture
def fake_train(monkeypatch):
    """Replaces the in-process training of a task: records the call, fails for the seeds in ``fail``."""
    calls, fail = [], set()

    def train(config, out, resume=False):
        calls.append((out.name, resume, out.exists()))
        if config.get("seed") in fail:
            out.mkdir(parents=True)
            raise RuntimeError("boom")
        out.mkdir(parents=True, exist_ok=True)
        (out / "final.json").write_text(json.dumps({"top1": 50.0}))
        return {"top1": 50.0}
    monkeypatch.setattr("gtaseg.sweep._default_train", train)
    return calls, fail


def test_debug_executor_runs_the_unfinished_and_resubmits_only_the_failed(tmp_path, fake_train):
    calls, fail = fake_train
    jobs = jobs_of({"method": ["baseline", "gta"], "seed": [0, 1]})
    runs = tmp_path / "runs"
    jobs[0].dir(runs).mkdir(parents=True)
    (jobs[0].dir(runs) / "final.json").write_text("{}")  # finished
    jobs[1].dir(runs).mkdir(parents=True)
    (jobs[1].dir(runs) / "stale.txt").write_text("a killed run's")  # unfinished: cleared, then trained
    fail.add(1)
    options = ClusterOptions(cluster="debug", gpus_per_job=0)
    first = submit(jobs, runs, options)
    assert first.finished == [jobs[0].name] and [n for n, _ in first.submitted] == [j.name for j in jobs[1:]]
    failed = wait(first, echo=lambda s: None)
    assert sorted(n for n, _ in failed) == sorted(j.name for j in jobs if j.config["seed"] == 1 and j != jobs[0])
    assert not (jobs[1].dir(runs) / "stale.txt").exists()
    assert set(read_record(runs)) == {j.name for j in jobs[1:]}

    fail.clear()
    calls.clear()
    second = submit(jobs, runs, options)
    assert sorted(n for n, _ in second.submitted) == sorted(n for n, _ in failed)
    assert wait(second, echo=lambda s: None) == []
    assert all(not existed for _, _, existed in calls)  # the failed runs' folders were cleared first
    assert submit(jobs, runs, options).submitted == []


def test_queued_or_running_jobs_are_not_submitted_again(tmp_path, fake_train):
    jobs = jobs_of({"seed": [0, 1, 2]})
    runs = tmp_path / "runs"
    first = submit(jobs, runs, ClusterOptions(cluster="debug"))
    assert len(first.submitted) == 3  # recorded, not run yet: debug tasks run when waited for
    states = {jobs[0].name: "RUNNING", jobs[1].name: "PENDING", jobs[2].name: "FAILED"}
    asked = []

    def scheduler(entries, _):
        asked.append(sorted(entries))
        return {name: states[name] for name in entries}
    again = submit(jobs, runs, ClusterOptions(cluster="debug"), states_fn=scheduler)
    assert asked == [sorted(states)]  # one question for all recorded jobs
    assert sorted(again.active) == sorted([jobs[0].name, jobs[1].name])
    assert [n for n, _ in again.submitted] == [jobs[2].name]


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An ``sbatch`` on PATH that keeps the script it was given and answers like SLURM."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "sbatch_scripts"
    bin_dir.mkdir()
    kept.mkdir()
    script = bin_dir / "sbatch"
    # the job id it answers is in bin/next_id; sacct prints bin/sacct.txt
    (bin_dir / "next_id").write_text("4242")
    script.write_text(f"#!/bin/sh\ncp \"$1\" {kept}/$(date +%s%N).sh\necho \"Submitted batch job $(cat {bin_dir}/next_id)\"\n")
    sacct = bin_dir / "sacct"
    sacct.write_text(f"#!/bin/sh\ncat {bin_dir}/sacct.txt\n")
    sacct.chmod(sacct.stat().st_mode | stat.S_IEXEC)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    srun = bin_dir / "srun"  # submitit looks for it to tell that it is on a SLURM cluster
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept


def test_slurm_second_call_asks_sacct_and_resubmits_only_failed_or_unfinished(tmp_path, fake_sbatch):
    jobs = jobs_of({"seed": [0, 1, 2, 3]})
    runs = tmp_path / "runs"
    bin_dir = fake_sbatch.parent / "bin"
    (bin_dir / "next_id").write_text("5150")
    first = submit(jobs, runs, ClusterOptions(partition="gpu"))
    assert [jid for _, jid in first.submitted] == ["5150_0", "5150_1", "5150_2", "5150_3"]
    (bin_dir / "sacct.txt").write_text("JobID|State|NodeList\n5150_0|RUNNING|n1\n5150_1|PENDING|None assigned\n"
                                       "5150_2|FAILED|n2\n5150_3|COMPLETED|n3\n")
    jobs[3].dir(runs).mkdir(parents=True)
    (jobs[3].dir(runs) / "final.json").write_text("{}")  # 5150_3 finished its run
    (bin_dir / "next_id").write_text("5151")
    second = submit(jobs, runs, ClusterOptions(partition="gpu"))
    assert sorted(second.active) == [jobs[0].name, jobs[1].name] and second.finished == [jobs[3].name]
    assert second.submitted == [(jobs[2].name, "5151")]
    assert read_record(runs)[jobs[2].name]["job_id"] == "5151" and read_record(runs)[jobs[0].name]["job_id"] == "5150_0"


def test_slurm_job_array_with_the_options(tmp_path, fake_sbatch):
    jobs = jobs_of({"seed": [0, 1, 2]})
    runs = tmp_path / "runs"
    options = ClusterOptions(partition="gpu", gpus_per_job=4, cpus_per_gpu=8, mem_gb_per_gpu=32, time_min=240,
                             array_parallelism=2, extra={"account": "proj"})
    result = submit(jobs, runs, options, name="gtaseg-t")
    assert [jid for _, jid in result.submitted] == ["4242_0", "4242_1", "4242_2"]
    (text,) = [p.read_text() for p in fake_sbatch.iterdir()]  # one sbatch call: the array
    for line in ("--partition=gpu", "--gpus-per-node=4", "--cpus-per-task=32", "--mem=128GB", "--time=240",
                 "--array=0-2%2", "--account=proj", "--ntasks-per-node=1", "--job-name=gtaseg-t"):
        assert f"#SBATCH {line}\n" in text, line
    assert str(runs / SUBMITIT_DIR) in text
    assert read_record(runs)[jobs[1].name] == {**read_record(runs)[jobs[1].name], "job_id": "4242_1", "cluster": "slurm"}


def test_several_gpus_train_under_torchrun(tmp_path, monkeypatch):
    job = Job("cub/gta_lam1_r1_s0", {"data": "cub", "method": "gta", "lam": 1.0, "steps": 5}, {})
    runs = tmp_path / "runs"
    cmd = torchrun_command(job, runs, 4)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert cmd[6:8] == ["gtaseg.cli", "train"] and cmd[-2:] == ["--out", str(job.dir(runs))]
    assert ["--method", "gta"] == cmd[cmd.index("--method"):cmd.index("--method") + 2]
    assert torchrun_command(job, runs, 4, resume=True)[-3:] == ["train", "--resume", str(job.dir(runs))]

    ran = []

    def fake_run(command, check):
        ran.append(command)
        job.dir(runs).mkdir(parents=True)
        (job.dir(runs) / "final.json").write_text('{"top1": 1.0}')
    monkeypatch.setattr("gtaseg.submit.subprocess.run", fake_run)
    assert TrainJob(job.name, job.config, str(runs), gpus=4)() == {"top1": 1.0}
    assert ran == [cmd]


@pytest.mark.slow
def test_torchrun_task_trains_on_two_cpu_processes(tmp_path, tiny_folder):
    """The command a multi-GPU task runs, launched for real: 2 gloo processes on the CPU (a few seconds each)."""
    config = {"data": str(tiny_folder), "method": "gta", "lam": 1.0, "steps": 2, "init": "random:vit_tiny_patch16_224",
              "image_size": 32, "batch_size": 2, "workers": 0, "device": "cpu"}
    job = Job("tiny/gta", config, {})
    final = TrainJob(job.name, config, str(tmp_path), gpus=2)()
    assert final["world_size"] == 2 and final["steps"] == 2


def test_cli_submits_and_second_call_skips_finished(tmp_path, tiny_folder, one_thread):
    config = tmp_path / "s.json"
    config.write_text(json.dumps({"name": "s", "base": {"data": str(tiny_folder), "steps": 1, "init": TINY_TRAIN[1],
                                                        "image_size": 32, "batch_size": 4, "workers": 0},
                                  "grid": {"method": ["baseline"], "seed": [0]}}))
    runs = tmp_path / "runs"
    args = ["sweep", str(config), "--runs-dir", str(runs), "--executor", "submitit", "--cluster", "debug",
            "--gpus-per-job", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "1 submitted" in result.output and len(list(runs.rglob("final.json"))) == 1
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "1 finished, 0 queued or running, 0 submitted" in again.output


def test_no_slurm_here_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    with pytest.raises(GtasegError, match="no SLURM here") as e:
        submit(jobs_of({"seed": [0]}), tmp_path / "runs", ClusterOptions())
    assert "\n" not in str(e.value)


def test_missing_submitit_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if the extra were not installed
    with pytest.raises(GtasegError, match=r"needs submitit: pip install 'gtaseg\[cluster\]'"):
        submit(jobs_of({"seed": [0]}), tmp_path / "runs", ClusterOptions(cluster="debug"))


def test_cluster_options_need_the_submitit_executor(tmp_path):
    config = tmp_path / "s.json"
    config.write_text(json.dumps({"base": {"data": "cub"}, "grid": {"seed": [0]}}))
    result = CliRunner().invoke(main, ["sweep", str(config), "--partition", "gpu"])
    assert result.exit_code == 2 and "--partition" in result.output and "--executor submitit" in result.output


def test_sweep_help_documents_every_option():
    result = CliRunner().invoke(main, ["sweep", "--help"])
    assert result.exit_code == 0
    for opt in main.commands["sweep"].params:
        assert opt.help or opt.param_type_name == "argument", opt.name
        assert opt.opts[0] in result.output or opt.param_type_name == "argument"
