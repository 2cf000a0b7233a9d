"""Interrupted runs lose nothing: a real signal to a real ``gtaseg train`` process, then ``--resume``, ends
with the weights and metrics of a run that was never stopped; a non-finite loss stops the run and keeps the
last good checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from gtaseg.checkpointing import load_state
from gtaseg.rundir import CHECKPOINT, WALL_CLOCK
from gtaseg.cli import main
from gtaseg.objective import Objective
from tests.conftest import TINY_TRAIN

GTASEG = [sys.executable, "-c", "from gtaseg.cli import main; main(prog_name='gtaseg')"]
# One thread everywhere: the interrupted, resumed and reference processes do the same arithmetic.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = 24
# TransMix draws from its own numpy Generator, so its state has to survive the restart too; --log-every 3
# makes the stop fall inside a metrics interval most of the time (its partial sums are resumed as well).
RUN = [*TINY_TRAIN, "--accum-steps", "1", "--steps", str(STEPS), "--log-every", "3", "--transmix"]


pytestmark = pytest.mark.usefixtures("one_thread")


def start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    """In a session of its own, so that a signal can go to its whole process group, loader workers included."""
    return subprocess.Popen([*GTASEG, "train", "--data", str(data), *RUN, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def resume(out: Path, *extra: str) -> tuple[int, str, str]:
    proc = subprocess.run([*GTASEG, "train", "--resume", str(out), *extra], capture_output=True, text=True,
                          env=ENV, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("images_per_s", None)  # wall-clock (validation rows have none)
    return rows


def wait_for_rows(proc: subprocess.Popen, out: Path, n: int) -> None:
    """Until the run has logged ``n`` metrics rows (it is then part way through its steps)."""
    path, deadline = out / "metrics.jsonl", time.monotonic() + 240
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before it was signalled:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("run logged no metrics in time")


@pytest.fixture(scope="module")
def reference(tiny_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    code, _, stderr = finish(start(tiny_folder, out))
    assert code == 0, stderr[-3000:]
    return out


def assert_same_run(out: Path, reference: Path) -> None:
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-6, rtol=0, msg=k)
    assert metrics(out) == metrics(reference)
    final, expected = ({k: v for k, v in json.loads((d / "final.json").read_text()).items() if k not in WALL_CLOCK}
                       for d in (out, reference))
    assert final == expected


def test_sigterm_writes_a_checkpoint_and_resume_matches_an_uninterrupted_run(tiny_folder, tmp_path, reference):
    out = tmp_path / "run"
    # The only checkpoint comes from the signal. Two loader workers: SIGTERM goes to the whole process group,
    # as a scheduler sends it, and the workers must not take the run down before the checkpoint is written.
    proc = start(tiny_folder, out, "--ckpt-every", "1000", "--workers", "2")
    wait_for_rows(proc, out, 2)
    os.killpg(proc.pid, signal.SIGTERM)
    code, _, stderr = finish(proc)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert "SIGTERM" in message and f"--resume {out}" in message

    state = load_state(out / CHECKPOINT)
    stopped = state["step"]
    assert 6 <= stopped < STEPS  # part way through
    assert state["batches"]["drawn"] == [stopped]  # one micro-batch per step, none dropped
    assert {"model", "optimizer", "scheduler", "rng", "transmix", "log", "bad_images"} <= state.keys()
    assert not (out / "model.safetensors").exists() and not (out / "final.json").exists()
    assert max(r["step"] for r in metrics(out)) <= stopped

    code, stdout, stderr = resume(out)
    assert code == 0, stderr[-3000:]
    assert "top1" in stdout
    assert_same_run(out, reference)
    # The run directory is the reference's plus nothing half-written.
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_sigkill_loses_only_the_steps_since_the_last_periodic_checkpoint(tiny_folder, tmp_path, reference):
    out = tmp_path / "run"
    proc = start(tiny_folder, out, "--ckpt-every", "4")
    wait_for_rows(proc, out, 4)  # step 12 logged: the checkpoints of steps 4 and 8 are on disk
    proc.send_signal(signal.SIGKILL)  # no handler runs: only what is already on disk survives
    code, _, _ = finish(proc)
    assert code == -signal.SIGKILL
    stopped = load_state(out / CHECKPOINT)["step"]
    assert stopped % 4 == 0 and 8 <= stopped < STEPS  # the row of step 12 may be on disk before its checkpoint

    code, _, stderr = resume(out, "--workers", "1")  # the number of loader workers does not change results
    assert code == 0, stderr[-3000:]
    assert_same_run(out, reference)


def run_in_process(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sigint_exits_130_and_resume_refuses_other_options(tiny_folder, tmp_path, monkeypatch):
    """SIGINT to this very process, sent from inside the third step (as a Ctrl-C would arrive)."""
    loss, calls = Objective.loss, []

    def interrupted_loss(self, images, labels):  # one micro-batch per step: the third call is the third step
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, images, labels)

    monkeypatch.setattr(Objective, "loss", interrupted_loss)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    base = ["train", "--data", tiny_folder, *TINY_TRAIN, "--accum-steps", "1", "--steps", "6", "--log-every", "1"]
    result = run_in_process(*base, "--out", out)
    assert result.exit_code == 130, result.output
    assert "SIGINT" in result.output and "Traceback" not in result.output
    assert load_state(out / CHECKPOINT)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the loop's handler is gone with the loop

    refused = run_in_process("train", "--resume", out, "--lr", "0.1")
    assert refused.exit_code == 2 and "--lr" in refused.output and "config.json" in refused.output
    monkeypatch.setattr(Objective, "loss", loss)
    assert run_in_process("train", "--resume", out, "--workers", "0").exit_code == 0
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]
    finished = run_in_process("train", "--resume", out)
    assert finished.exit_code == 1 and "already finished" in finished.output


def test_resume_may_turn_on_skipping_unreadable_images(tmp_path, monkeypatch):
    """--on-bad-image changes no result of the images already seen (all were readable), so --resume takes it."""
    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=2, train=4, test=1, size=32)
    loss, calls = Objective.loss, []

    def interrupted_loss(self, images, labels):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, images, labels)

    monkeypatch.setattr(Objective, "loss", interrupted_loss)
    out = tmp_path / "run"
    stopped = run_in_process("train", "--data", data, *TINY_TRAIN, "--accum-steps", "1", "--steps", "4", "--out", out)
    assert stopped.exit_code == 130 and load_state(out / CHECKPOINT)["step"] == 1, stopped.output
    monkeypatch.setattr(Objective, "loss", loss)
    for image in (data / "train" / "class0").iterdir():  # the rest of the stream meets these
        image.write_bytes(image.read_bytes()[:50])
    refused = run_in_process("train", "--resume", out)
    assert refused.exit_code == 1 and "--on-bad-image skip" in refused.output
    assert (out / CHECKPOINT).exists()  # a run with a checkpoint keeps its folder when it stops
    result = run_in_process("train", "--resume", out, "--on-bad-image", "skip")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "final.json").read_text())["skipped_images"] == 4


def test_non_finite_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path, monkeypatch):
    loss, calls = Objective.loss, []

    def poisoned(self, images, labels):  # one micro-batch per step
        calls.append(1)
        value, terms = loss(self, images, labels)
        return (value * float("nan"), terms) if len(calls) == 5 else (value, terms)  # the 5th step

    monkeypatch.setattr(Objective, "loss", poisoned)
    out = tmp_path / "run"
    result = run_in_process("train", "--data", tiny_folder, *TINY_TRAIN, "--accum-steps", "1", "--steps", "8",
                            "--log-every", "3", "--ckpt-every", "2", "--out", out)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "non-finite loss at step 5" in errors[0] and "step 4" in errors[0] and CHECKPOINT in errors[0]
    state = load_state(out / CHECKPOINT)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [r["step"] for r in metrics(out)] == [3]  # the row of step 6 was never written
    assert not (out / "model.safetensors").exists() and not (out / "final.json").exists()


def test_a_learning_rate_that_blows_up_is_caught(tiny_folder, tmp_path):
    """No patching: AdamW at lr 1e30 moves the weights by ~1e30 and the next forward overflows."""
    out = tmp_path / "run"
    result = run_in_process("train", "--data", tiny_folder, *TINY_TRAIN, "--accum-steps", "1", "--steps", "6",
                            "--lr", "1e30", "--method", "baseline", "--no-randaugment", "--out", out)
    assert result.exit_code == 1, result.output
    assert "non-finite loss at step" in result.output and "no checkpoint was written" in result.output
    assert not (out / CHECKPOINT).exists() and not (out / "model.safetensors").exists()


def test_resume_after_dropped_batches_continues_the_stream_where_it_stood(tmp_path, monkeypatch):
    """--on-bad-image skip at batch 1: a micro-batch whose one image is unreadable is drawn and dropped, so the
    stream runs ahead of step × batch. Stopped after such drops and resumed, the run ends as one never stopped."""
    from tests.conftest import make_image_folder
    from tests.test_reliability_inputs import truncate

    data = make_image_folder(tmp_path / "data", classes=2, train=4, test=1, size=32)
    for name in ("0.png", "1.png"):
        truncate(data / "train" / "class0" / name)
    args = ["train", "--data", data, *TINY_TRAIN, "--batch-size", "1", "--accum-steps", "1", "--steps", "8",
            "--log-every", "2", "--on-bad-image", "skip"]
    reference = tmp_path / "reference"
    assert run_in_process(*args, "--out", reference).exit_code == 0

    loss, calls = Objective.loss, []

    def interrupted_loss(self, images, labels):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, images, labels)

    monkeypatch.setattr(Objective, "loss", interrupted_loss)
    out = tmp_path / "run"
    assert run_in_process(*args, "--out", out).exit_code == 130
    state = load_state(out / CHECKPOINT)
    # batches were dropped before the stop
    assert state["step"] == 5 and state["batches"]["drawn"][0] > 5 and state["bad_images"]["skipped"]
    monkeypatch.setattr(Objective, "loss", loss)
    assert run_in_process("train", "--resume", out).exit_code == 0
    assert_same_run(out, reference)


RECIPE = ["--val-fraction", "0.34", "--head-init", "probe", "--eval-every", "4", "--keep", "best", "--warmup-steps",
          "3", "--drop-path", "0.1", "--label-smoothing", "0.1", "--layer-decay", "0.8"]


def test_resume_with_the_recipe_options_matches_an_uninterrupted_run(tiny_folder, tmp_path):
    """Warmup, layer decay, drop path (torch's RNG), label smoothing, the held-out validation split, the probed head,
    validation rows and the best weights all come back after a SIGTERM exactly as in a run never stopped."""
    reference = tmp_path / "reference"
    code, _, stderr = finish(start(tiny_folder, reference, *RECIPE))
    assert code == 0, stderr[-3000:]
    out = tmp_path / "run"
    proc = start(tiny_folder, out, *RECIPE)
    wait_for_rows(proc, out, 4)
    os.killpg(proc.pid, signal.SIGTERM)
    code, _, stderr = finish(proc)
    assert code == 143, stderr[-3000:]
    code, _, stderr = resume(out)
    assert code == 0, stderr[-3000:]
    assert_same_run(out, reference)
    assert (out / "val_files.txt").read_text() == (reference / "val_files.txt").read_text()
    final = json.loads((out / "final.json").read_text())
    assert final["head_init"] == "probe" and final["val_origin"] == "held out" and final["best_step"] is not None
