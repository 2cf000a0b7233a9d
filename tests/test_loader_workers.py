"""The training loader's workers on the CPU: capped at the cores the step leaves free, with no change to a run."""
import json

import pytest
import torch

from gtaseg import devices
from gtaseg.config import TrainConfig
from gtaseg.devices import training_workers
from gtaseg.train import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("requested, cores, threads, want", [
    (8, 2, 2, 1),    # this machine with the model on both cores: one worker, not none
    (2, 2, 1, 1),    # OMP_NUM_THREADS=1: one core left for the loader
    (8, 16, 4, 8),   # room enough: as asked
    (8, 16, 12, 4),
    (1, 2, 2, 1),
    (0, 2, 2, 0),    # decoding in the training process stays as asked
])
def test_cpu_workers_are_capped_at_the_free_cores(monkeypatch, requested, cores, threads, want):
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(devices.torch, "get_num_threads", lambda: threads)
    assert training_workers(requested, CPU) == want


def test_gpu_workers_are_as_asked(monkeypatch):
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1})
    assert training_workers(8, CUDA) == 8


def test_a_capped_run_says_so_and_computes_what_the_asked_for_one_would(tmp_path, tiny_folder, monkeypatch, capsys):
    kw = dict(init="random:vit_tiny_patch16_224", data=str(tiny_folder), image_size=32, batch_size=4, steps=3,
              log_every=1, method="gta")
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(16)))
    train(TrainConfig(workers=2, **kw), tmp_path / "two")  # room for both workers: not capped
    assert "on the CPU" not in capsys.readouterr().err
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(devices.torch, "get_num_threads", lambda: 2)
    train(TrainConfig(workers=4, **kw), tmp_path / "four")
    assert "--workers 4: 1 on the CPU (2 cores, 2 threads for the step" in capsys.readouterr().err

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert rows("two") == rows("four")
