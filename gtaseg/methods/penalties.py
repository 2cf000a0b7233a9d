"""Methods whose term needs no source model: L2-SP on the weights, BSS on the features."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gtaseg.methods.base import Forwards, Method

if TYPE_CHECKING:
    from torch import Tensor, nn


class L2SP(Method):
    name = "l2sp"
    help = "L2-SP: ½‖w − w₀‖² towards the initial backbone weights"
    default_lam = 0.01

    def __init__(self, target: nn.Module, guided: Sequence[int]):
        from gtaseg.models import HEAD_PREFIX

        super().__init__(target, guided)
        self.target = target
        # The starting point: the backbone as it is when the run is set up (the new head has none).
        self.reference = {n: p.detach().clone() for n, p in target.named_parameters()
                          if p.requires_grad and not n.startswith(HEAD_PREFIX)}

    def term(self, forwards: Forwards) -> Tensor:
        from gtaseg.regularizers import l2_sp

        return l2_sp(self.target, self.reference)


class BSS(Method):
    name = "bss"
    help = "BSS: shrink the smallest singular value of the batch features before the head"
    default_lam = 0.001

    def term(self, forwards: Forwards) -> Tensor:
        from gtaseg.regularizers import batch_spectral_shrinkage

        return batch_spectral_shrinkage(forwards.features)
