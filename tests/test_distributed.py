"""Data-parallel training: 2 ranks under torchrun (gloo, CPU) reach the weights of one process with the
same global batch; the seeded stream shards every global batch across ranks."""
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from gtaseg import distributed
from gtaseg.checkpointing import load_state
from gtaseg.rundir import CHECKPOINT
from gtaseg.cli import main
from gtaseg.data.sampler import SeededStream
from gtaseg.train import SIGNAL_POLL_STEPS

# lr 2e-5: AdamW divides each update by √v + 1e-8, so an entry whose gradient is ~1e-8 turns float32 roundoff
# (sums over the batch in another order) into an update difference of up to ~lr. At 2e-5 that stays < 1e-5,
# while a rank that trained on its own half of the batch differs by far more (checked below).
TINY = ["--init", "random:vit_tiny_patch16_224", "--image-size", "32", "--workers", "0", "--steps", "3",
        "--log-every", "1", "--method", "gta", "--lr", "2e-5", "--ckpt-every", "0"]


def gtaseg_script() -> str:
    script = shutil.which("gtaseg") or str(Path(sys.executable).with_name("gtaseg"))
    if not Path(script).is_file():
        pytest.skip("the gtaseg console script is not installed")
    return script


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_every_global_batch(world):
    """Rank r takes positions r, r+W, ... of the one global stream: the ranks' micro-batches of b images
    together are exactly the single process's batch of W·b, epoch boundaries and augmentation seeds included."""
    size, b, steps, start = 7, 2, 5, 4
    single = list(itertools.islice(iter(SeededStream(size, 3, start=start)), b * world * steps))
    ranks = [list(itertools.islice(iter(SeededStream(size, 3, start=start, rank=r, world_size=world)), b * steps))
             for r in range(world)]
    for s in range(steps):
        together = [x for r in range(world) for x in ranks[r][s * b:(s + 1) * b]]
        assert sorted(together) == sorted(single[s * b * world:(s + 1) * b * world])


def test_single_process_context_is_inert(monkeypatch):
    ctx = distributed.current()
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1
    values = {"loss": torch.tensor(2.5), "ce": 1.0}
    out = distributed.all_reduce_mean(values)
    assert float(out["loss"]) == 2.5 and float(out["ce"]) == 1.0
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.device_for("cpu", ctx) == torch.device("cpu")
    # Rank 1 of 2 maps plain "cuda" to its local GPU (pretend there is CUDA: this is a CPU machine).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.device_for("cuda", distributed.Context(1, 2, 1)) == torch.device("cuda:1")


def torchrun_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
           "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_two_ranks_under_torchrun_match_one_process(tmp_path, tiny_folder):
    """torchrun --nproc_per_node 2 with 2 images × 2 accumulated micro-batches per rank against one process
    with batch 8: same global batch of 8, so the same weights after 3 steps (≤ 1e-5), the same logged
    loss terms (averaged over ranks), and only rank 0 wrote files."""
    multi, single = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", gtaseg_script(),
           "train", "--data", str(tiny_folder), *TINY, "--batch-size", "2", "--accum-steps", "2", "--out", str(multi)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=torchrun_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run written to") == 2  # both ranks finished; each prints rank 0's result

    result = CliRunner().invoke(main, ["train", "--data", str(tiny_folder), *TINY, "--batch-size", "8",
                                       "--accum-steps", "1", "--out", str(single)])
    assert result.exit_code == 0, result.output

    a, b = load_file(str(multi / "model.safetensors")), load_file(str(single / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
    # The comparison can fail: one process on half the global batch (what an unsynchronised rank would see)
    # ends far outside the tolerance.
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_folder), *TINY, "--batch-size", "4",
                                       "--out", str(tmp_path / "half")])
    assert result.exit_code == 0, result.output
    half = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert max((half[n] - b[n]).abs().max().item() for n in b) > 5e-5

    rows_a = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_a] == [1, 2, 3]  # one row per step: rank 0 alone wrote the file
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for k in ("loss", "ce", "reg"):
            assert ra[k] == pytest.approx(rb[k], abs=1e-5), k
    assert rows_b[-1]["reg"] > 0
    final = json.loads((multi / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 3
    assert json.loads((multi / "config.json").read_text())["batch_size"] == 2


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_one_polled_step(tmp_path, tiny_folder):
    """The stop signal is polled across ranks only every SIGNAL_POLL_STEPS steps; all ranks still stop together
    at such a step, with one checkpoint written, and exit with SIGTERM's code."""
    out, steps = tmp_path / "ddp", 400
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", gtaseg_script(),
           "train", "--data", str(tiny_folder), *TINY, "--steps", str(steps), "--batch-size", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=torchrun_env(),
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: to torchrun and both ranks
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert stderr.count("SIGTERM received: stopped after step") == 2, stderr[-3000:]  # both ranks stopped cleanly, not killed
    stopped = load_state(out / CHECKPOINT)["step"]
    assert stopped % SIGNAL_POLL_STEPS == 0 and 3 <= stopped < steps
    assert not (out / "final.json").exists()
