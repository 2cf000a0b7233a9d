"""AdamW over timm's weight-decay groups, the new head at its own lr, and a cosine schedule to 0."""
from __future__ import annotations

import math

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_scale: float) -> list[dict]:
    """timm's weight-decay groups (none on biases, norms and tokens), each split so that the new classifier
    head learns at ``head_lr_scale`` × ``lr`` (transfer-learning practice, as in the L2-SP and BSS papers)."""
    head_ids = {id(p) for n, p in model.named_parameters() if n.startswith("head.")}
    groups = []
    for group in param_groups_weight_decay(model, weight_decay):
        head = [p for p in group["params"] if id(p) in head_ids]
        body = [p for p in group["params"] if id(p) not in head_ids]
        groups += [{**group, "params": ps, "lr": lr * scale} for ps, scale in ((body, 1.0), (head, head_lr_scale)) if ps]
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, head_lr_scale: float) -> torch.optim.Optimizer:
    return create_optimizer_v2(param_groups(model, lr, weight_decay, head_lr_scale), "adamw", lr=lr,
                               weight_decay=weight_decay, betas=(0.9, 0.999))


def build_scheduler(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine from each group's lr to 0 over ``steps`` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
