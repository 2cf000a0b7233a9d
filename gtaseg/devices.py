"""Turning a --device option into a torch device, with one-line errors."""
from __future__ import annotations

import os

import torch

from gtaseg.errors import GtasegError


def device_name(name: str) -> str:
    """What a --device name stands for: ``auto`` is ``cuda`` (the first GPU) when CUDA is available, else
    ``cpu``; any other name is kept."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def pick_device(name: str = "auto") -> torch.device:
    """The torch device of a --device name (see :func:`device_name`)."""
    name = device_name(name)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GtasegError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GtasegError(f"--device {name}: CUDA is not available here (use auto or cpu)")
    return device


def training_workers(requested: int, device: torch.device) -> int:
    """The training loader's worker processes: on the CPU at most the cores the step's threads leave free, and
    at least one. More only take time slices from the step (bench/RESULTS.md, "Does the training loader keep up
    with real JPEGs?": on 2 cores one worker is within 6 % of in-memory tensors, two fall behind); ``0`` (decode
    in the training process) stays as asked, and so does any count on a GPU. The workers change no result:
    every sample's augmentation is seeded by its position in the stream."""
    if device.type != "cpu" or requested <= 1:
        return requested
    free = len(os.sched_getaffinity(0)) - torch.get_num_threads()
    return min(requested, max(1, free))
