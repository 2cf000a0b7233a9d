"""L2 guidance of the target towards the frozen source, summed over entries that :meth:`entries` counts:
GTA on the pre-softmax [cls]→patch logits, and the feature-guidance targets (block or MSA outputs)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from gtaseg.methods.base import Forwards, Layout, Method, Records

if TYPE_CHECKING:
    from torch import Tensor

    from gtaseg.attention import Captured


class GTA(Method):
    """Σ_{blocks,heads}‖A_cls\\1 − Ã_cls\\1‖², mean over the batch (Eq. 5)."""

    name = "gta"
    help = "GTA: L2 between target and source pre-softmax [cls]-query attention logits"
    default_lam = 1.0
    needs_source = True

    def records(self) -> Records:
        return Records(logits=self.guided)

    def term(self, forwards: Forwards) -> Tensor:
        from gtaseg.regularizers import guidance_l2

        return guidance_l2(forwards.target.cls_logits(self.guided), forwards.source.cls_logits(self.guided))

    @classmethod
    def entries(cls, layout: Layout) -> int:
        """L·H·N."""
        return layout.blocks * layout.heads * layout.patches


class GuideBlock(Method):
    """Σ_blocks ‖z′ − z̃′‖² over every token and channel of each guided block's output."""

    name = "guide-block"
    help = "L2 guidance of every guided block's output z′ towards the source"
    default_lam = 1.0
    needs_source = True

    def records(self) -> Records:
        return Records(block_outputs=self.guided)

    def outputs(self, captured: Captured) -> list[Tensor]:
        return [captured.block_out[b] for b in self.guided]

    def term(self, forwards: Forwards) -> Tensor:
        from gtaseg.regularizers import guidance_l2

        return guidance_l2(self.outputs(forwards.target), self.outputs(forwards.source))

    @classmethod
    def entries(cls, layout: Layout) -> int:
        """Σ_blocks T·C."""
        return layout.blocks * (layout.patches + layout.prefix_tokens) * layout.width


class GuideMSA(GuideBlock):
    """:class:`GuideBlock` on the attention branch's output instead of the block's."""

    name = "guide-msa"
    help = "L2 guidance of every guided block's MSA output towards the source"

    def records(self) -> Records:
        return Records(msa_outputs=self.guided)

    def outputs(self, captured: Captured) -> list[Tensor]:
        return [captured.msa_out[b] for b in self.guided]
