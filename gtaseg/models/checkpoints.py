"""Reading foreign checkpoints (timm, DINO, iBOT, DINOv2) as timm ViT state dicts.

A checkpoint is untrusted input: it is read with safetensors or ``torch.load(weights_only=True)``, which
refuses pickles that would build arbitrary objects.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from gtaseg.errors import CheckpointError

# timm's ViT keeps its classifier under this prefix: the new head of a fine-tuning run, the weights that a
# checkpoint for another task does not carry over, and those that learn at their own lr.
HEAD_PREFIX = "head."
# Keys that belong to a self-supervised training setup, not to the backbone.
_SSL_ONLY_KEYS = ("masked_embed", "mask_token")
# Wrappers that DINO/iBOT/DeiT/MAE put around the state dict, in the order they are looked for.
_WRAPPERS = ("teacher", "state_dict", "model", "student")
_PREFIXES = ("module.", "backbone.", "encoder.")


def torch_load(path: Path, unreadable: str) -> Any:
    """``torch.load(weights_only=True)`` onto the CPU, every failure a one-line :class:`CheckpointError`: a missing
    file, a pickle that would build other objects (refused), or bytes the unpickler cannot read (``unreadable``
    says what the file is not)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load, not a plain tensor checkpoint ({first})") from None
    except Exception as e:  # other bytes make the unpickler fail in many ways (IndexError, KeyError, ...)
        raise CheckpointError(f"{path}: {unreadable} ({type(e).__name__})") from None


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read ``path`` as a flat tensor dict plus its safetensors metadata (empty for torch files)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    obj = torch_load(path, "not a PyTorch checkpoint")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return unwrap(obj, path), {}


def unwrap(obj: dict, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """Descend into the wrapper dicts of DINO/iBOT full checkpoints and strip DDP/backbone prefixes.

    DINO's teacher is the model its authors evaluate, so it wins over the student.
    """
    while not any(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(obj)[:8]})")
        obj = obj[key]
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            # A 'backbone.' prefix means everything else (e.g. DINO's projection head) is not the ViT.
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def to_timm(sd: dict[str, torch.Tensor], model: VisionTransformer, keep_head: bool) -> dict[str, torch.Tensor]:
    """Convert a ViT state dict to ``model``'s timm layout: DINOv2 names, registers, position grid."""
    # timm recognises the DINOv2 layout (registers, pos embed without the cls entry) by its mask_token,
    # so that key must survive until after the conversion.
    sd = checkpoint_filter_fn({k: v for k, v in sd.items() if k != "masked_embed"}, model)
    sd = {k: v for k, v in sd.items() if k not in _SSL_ONLY_KEYS}
    if not keep_head:
        # DINO checkpoints carry a projection head under timm's head prefix; a new task gets a fresh classifier.
        sd = {k: v for k, v in sd.items() if not k.startswith((HEAD_PREFIX, "fc_norm.", "head_drop."))}
    return sd


def load_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: str | os.PathLike,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``sd`` strictly (except ``ignore_prefixes``) with a one-line error naming what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(ignore_prefixes)]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
                parts.append(f"{name} keys: {shown}")
        raise CheckpointError(f"{path}: does not fit {type(model).__name__} ({'; '.join(parts)})")
    model.load_state_dict(sd, strict=False)


def guess_arch(sd: dict[str, torch.Tensor]) -> str | None:
    """Name the timm architecture of a ViT state dict from its shapes, or None when unsure."""
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return None
    dim, patch = w.shape[0], w.shape[-1]
    size = {192: "tiny", 384: "small", 768: "base", 1024: "large"}.get(dim)
    if size is None:
        return None
    dinov2 = any(k.endswith("ls1.gamma") for k in sd) or "mask_token" in sd
    regs = sd.get("register_tokens", sd.get("reg_token"))
    if dinov2 and patch == 14:
        return f"vit_{size}_patch14_reg{regs.shape[1]}_dinov2" if regs is not None else f"vit_{size}_patch14_dinov2"
    if patch in (8, 16) and not dinov2:
        return f"vit_{size}_patch{patch}_224"
    return None
