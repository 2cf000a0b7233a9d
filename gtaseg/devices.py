"""Turning a --device option into a torch device, with one-line errors."""
from __future__ import annotations

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
