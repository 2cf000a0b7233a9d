"""AdamW over timm's weight-decay groups (optionally timm's layer-wise lr decay), the new head at its own lr, and
a cosine schedule to 0 after an optional linear warmup."""
from __future__ import annotations

import math

import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from gtaseg.models import HEAD_PREFIX


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_scale: float,
                 layer_decay: float = 1.0) -> list[dict]:
    """timm's weight-decay groups (none on biases and norms), each split so that the new classifier head learns
    at ``head_lr_scale`` × ``lr`` (transfer-learning practice, as in the L2-SP and BSS papers). ``layer_decay`` < 1
    uses timm's layer-decay groups instead, each group at ``lr`` × its ``lr_scale``: the lr is set here because
    torch's schedulers, unlike timm's, do not read ``lr_scale``."""
    head_ids = {id(p) for n, p in model.named_parameters() if n.startswith(HEAD_PREFIX)}
    if layer_decay == 1.0:  # the groups of every run before --layer-decay, in their order
        base = [{**g, "lr_scale": 1.0} for g in param_groups_weight_decay(model, weight_decay)]
    else:
        base = param_groups_layer_decay(model, weight_decay, layer_decay=layer_decay)
    groups = []
    for group in base:
        scale = group.pop("lr_scale")
        head = [p for p in group["params"] if id(p) in head_ids]
        body = [p for p in group["params"] if id(p) not in head_ids]
        groups += [{**group, "params": ps, "lr": lr * s} for ps, s in ((body, scale), (head, head_lr_scale)) if ps]
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, head_lr_scale: float,
                    layer_decay: float = 1.0) -> torch.optim.Optimizer:
    return create_optimizer_v2(param_groups(model, lr, weight_decay, head_lr_scale, layer_decay), "adamw", lr=lr,
                               weight_decay=weight_decay, betas=(0.9, 0.999))


def lr_factor(step: int, steps: int, warmup_steps: int = 0) -> float:
    """The multiple of each group's peak lr at ``step``: (step + 1)/warmup over the warmup (never 0, so the first
    step learns), then a cosine from 1 to 0 over the remaining steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    s, n = min(step, steps) - warmup_steps, steps - warmup_steps
    return 0.5 * (1 + math.cos(math.pi * s / n))


def build_scheduler(optimizer: torch.optim.Optimizer, steps: int,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps``, then cosine from each group's lr to 0 at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup_steps))
