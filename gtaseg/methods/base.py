"""What a fine-tuning method is: one class that declares what trains, what its forwards record, its extra term
and that term's entry count. The class attributes are read without torch (``gtaseg train --help`` lists the
methods); an instance is the method set up for one run's target and guided blocks, holding any state it keeps.

Shapes: B batch, L guided blocks, H heads, N patch tokens, T tokens (prefix + patches), C width.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from torch import Tensor, nn

    from gtaseg.attention import Captured


@dataclass(frozen=True)
class Records:
    """A capture request: the blocks whose [cls] logits, outputs, MSA outputs and queries and keys a forward
    records (the keywords of :func:`gtaseg.attention.capture`)."""

    logits: tuple[int, ...] = ()
    block_outputs: tuple[int, ...] = ()
    msa_outputs: tuple[int, ...] = ()
    queries_keys: tuple[int, ...] = ()


@dataclass(frozen=True)
class Forwards:
    """What one micro-batch's forwards left for the term: the target's and the source's captures (``source`` is
    None without a source model) and the target's pre-logits features, [B, C]."""

    target: Captured
    source: Captured | None
    features: Tensor


@dataclass(frozen=True)
class Layout:
    """The sizes a guidance term's entry count depends on: guided blocks, heads, patches per image, prefix
    tokens ([cls] + registers) and width."""

    blocks: int
    heads: int
    patches: int
    prefix_tokens: int
    width: int

    @classmethod
    def of(cls, model: nn.Module, blocks: int, patches: int) -> Layout:
        return cls(blocks, model.blocks[0].attn.num_heads, patches, model.num_prefix_tokens, model.embed_dim)


class Method:
    """Cross-entropy only, every parameter trains: the base every method refines.

    Subclasses set ``name``, ``help``, ``default_lam`` (the λ of ``--lam``'s default), ``needs_source`` (a
    frozen source model runs on every batch) and ``trains`` (parameter-name fragments that train besides the
    head; None: all), and override :meth:`records`, :meth:`term` and :meth:`entries` where they add a term.
    """

    name: ClassVar[str]
    help: ClassVar[str]
    default_lam: ClassVar[float] = 0.0
    needs_source: ClassVar[bool] = False
    trains: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, target: nn.Module, guided: Sequence[int]):
        """Set up for ``target`` (after :meth:`freeze`) with the ``guided`` block indices."""
        self.guided = tuple(guided)

    @classmethod
    def trainable(cls, name: str) -> bool:
        from gtaseg.models import HEAD_PREFIX  # here: the registry is read without torch

        return cls.trains is None or name.startswith(HEAD_PREFIX) or any(f in name for f in cls.trains)

    @classmethod
    def freeze(cls, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(cls.trainable(name))

    def records(self) -> Records:
        """What each forward (the target's and the source's) records for :meth:`term`."""
        return Records()

    def term(self, forwards: Forwards) -> Tensor:
        """The extra term that λ weighs, summed over its entries where it has an entry count."""
        import torch  # here, not at the top: the registry is read without torch

        return torch.zeros((), device=forwards.features.device)

    @classmethod
    def entries(cls, layout: Layout) -> int | None:
        """How many entries :meth:`term` sums per image (None: it has no entry count, and ``--lam-reduction``
        leaves it as it is); the mean reduction divides the term by this."""
        return None
