"""Data-parallel training across processes: ``torchrun`` + ``DistributedDataParallel``.

Launch ``gtaseg train`` under ``torchrun --nproc_per_node N`` and every process becomes one rank: it reads
its own shard of each global batch (:class:`gtaseg.data.sampler.SeededStream` with its rank), trains a DDP
copy of the target, runs its own replica of the frozen source, and only rank 0 writes files. Without
torchrun (``WORLD_SIZE`` unset or 1) nothing here does anything and training is single-process.

The process group is NCCL when the ranks train on CUDA devices and gloo on the CPU.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from gtaseg.devices import device_name, pick_device


@dataclass(frozen=True)
class Context:
    """Where this process stands among the ranks of a job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True when this process was started by torchrun (or the same environment) as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Context:
    """The context of the initialised process group, or the single-process context when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def device_for(name: str, ctx: Context) -> torch.device:
    """The device of this rank: ``auto`` as :func:`device_name` reads it; ``cuda`` under several ranks is the
    rank's local GPU (``cuda:LOCAL_RANK``); an explicit ``cuda:i`` or ``cpu`` is kept."""
    name = device_name(name)
    if name == "cuda" and ctx.enabled:
        name = f"cuda:{ctx.local_rank}"
    return pick_device(name)


def setup(device: str = "auto") -> bool:
    """Join the process group torchrun describes in the environment; returns whether this call created it
    (so that only its creator tears it down). A no-op outside torchrun or when a group already exists."""
    if not launched() or not dist.is_available() or dist.is_initialized():
        return False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = device_name(device)
    use_cuda = device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank if device == "cuda" else torch.device(device))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def cleanup(created: bool) -> None:
    if created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_mean(values: Mapping[str, Tensor | float]) -> dict[str, Tensor]:
    """The mean over ranks of each value (one collective for all of them); unchanged when not distributed."""
    ctx = current()
    if not ctx.enabled or not values:
        return {k: v if isinstance(v, Tensor) else torch.tensor(float(v)) for k, v in values.items()}
    keys = list(values)
    first = next((v for v in values.values() if isinstance(v, Tensor)), None)
    device = first.device if first is not None else torch.device("cpu")
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    packed = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=device).reshape(()) for k in keys])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed /= ctx.world_size
    return dict(zip(keys, packed.unbind()))


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_ints(value: int) -> list[int]:
    """Every rank's ``value`` in rank order, on every rank (one collective); ``[value]`` in a single process."""
    ctx = current()
    if not ctx.enabled:
        return [value]
    means = all_reduce_mean({str(r): float(value if r == ctx.rank else 0) for r in range(ctx.world_size)})
    return [round(float(means[str(r)]) * ctx.world_size) for r in range(ctx.world_size)]
