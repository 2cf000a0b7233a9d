"""The attention-transfer baselines of Li et al. (NeurIPS 2024) as methods; the cross-entropies themselves are
in :mod:`gtaseg.distill`. Both terms are means already, so they have no entry count."""
from __future__ import annotations

from typing import TYPE_CHECKING

from gtaseg.methods.base import Forwards, Method, Records

if TYPE_CHECKING:
    from torch import Tensor


class AttnDistill(Method):
    name = "attn-distill"
    help = ("attention transfer: cross-entropy between source and target post-softmax attention maps, all queries "
            "(mean over batch, heads, queries; summed over blocks)")
    # 3 is Li et al.'s weight for attn-distill.
    default_lam = 3.0
    needs_source = True

    def records(self) -> Records:
        return Records(queries_keys=self.guided)

    def term(self, forwards: Forwards) -> Tensor:
        from gtaseg.distill import attention_map_ce

        target, source = forwards.target.queries_keys, forwards.source.queries_keys
        return attention_map_ce([target[b] for b in self.guided], [source[b] for b in self.guided])


class ClsDistill(Method):
    name = "cls-distill"
    help = ("attention transfer on the [cls] query's row only: GTA's row as probabilities, cross-entropy instead "
            "of L2 on logits")
    # The same per-query loss as attn-distill on one query: the same weight puts it on the same scale.
    default_lam = 3.0
    needs_source = True

    def records(self) -> Records:
        return Records(logits=self.guided)

    def term(self, forwards: Forwards) -> Tensor:
        from gtaseg.distill import cls_attention_ce

        target, source = forwards.target.row_logits, forwards.source.row_logits
        return cls_attention_ce([target[b] for b in self.guided], [source[b] for b in self.guided])
