"""Turning a --device option into a torch device, with one-line errors."""
from __future__ import annotations

import torch

from gtaseg.errors import GtasegError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GtasegError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GtasegError(f"--device {name}: CUDA is not available here (use auto or cpu)")
    return device
