"""Loss terms added to cross-entropy by the fine-tuning methods (all return a scalar tensor)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def guidance_l2(target: Sequence[Tensor] | Tensor, source: Sequence[Tensor] | Tensor) -> Tensor:
    """‖target − source‖² summed over every non-batch entry of every tensor, averaged over the batch.

    With [B, L, H, N] [cls] logits this is GTA's Σ_{blocks,heads}‖A_cls\\1 − Ã_cls\\1‖² (Eq. 5 as written); with
    lists of [B, T, C] block or MSA outputs it is the L2 guidance of features. The mean over the entries (``--lam-
    reduction mean``) divides this by the method's entry count (:meth:`gtaseg.methods.Method.entries`).
    """
    if isinstance(target, Tensor):
        target, source = [target], [source]
    total = 0.0
    for t, s in zip(target, source, strict=True):
        total = total + (t.float() - s.float()).pow(2).flatten(1).sum(1).mean()
    return total


def l2_sp(model: nn.Module, reference: dict[str, Tensor]) -> Tensor:
    """L2-SP: ½ Σ‖w − w₀‖² over the parameters that have a starting point (the backbone, not the new head)."""
    params = dict(model.named_parameters())
    return 0.5 * sum((params[name] - w0).pow(2).sum() for name, w0 in reference.items())


def batch_spectral_shrinkage(features: Tensor, k: int = 1) -> Tensor:
    """BSS: the sum of the k smallest squared singular values of the [B, C] feature matrix."""
    sigma = torch.linalg.svdvals(features.float())  # descending
    return sigma[-k:].pow(2).sum()
