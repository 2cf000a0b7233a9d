"""[cls]-query attention logits captured during a ViT's own forward pass.

timm's attention runs ``F.scaled_dot_product_attention``, which never materialises the T×T attention
matrix. GTA only needs the [cls] row of it, so a forward hook on each block's ``qkv`` projection takes the
[cls] query and all keys from the projection's output and computes that one row: O(T·C) extra work per
block instead of turning fused attention off and keeping T×T maps.

Shapes: B batch, L captured blocks, H heads, T tokens (prefix + patches), N patch tokens, D head dim.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
from timm.models.vision_transformer import Attention
from torch import Tensor, nn

from gtaseg.errors import ModelError

# Attention classes whose layout the hooks below rely on, checked against timm's own unfused forward
# (tests/test_attention.py): one fused qkv Linear stacking q, k, v of ``num_heads`` heads of ``head_dim``,
# q/k norms per head, and logits q·kᵀ·``scale``. Others can pass a duck-type check and still compute their
# logits differently (timm's DiffAttention: two softmaxes over half-heads), so only these are read.
# vision_transformer's name is the one every timm release since 1.0.9 has: there it defined the class,
# newer releases re-export timm.layers.Attention under it (the same class).
VERIFIED_ATTENTION: tuple[type[nn.Module], ...] = (Attention,)


@dataclass
class Captured:
    """What the hooks recorded in one forward pass, keyed by block index."""

    num_prefix_tokens: int
    row_logits: dict[int, Tensor] = field(default_factory=dict)  # [B, H, T]: [cls] query against every key
    block_out: dict[int, Tensor] = field(default_factory=dict)  # [B, T, C]: block output z'
    msa_out: dict[int, Tensor] = field(default_factory=dict)  # [B, T, C]: attention branch output
    # (scaled q, k), each [B, H, T, D], of every query and key: what the all-query attention-transfer loss
    # forms its T×T maps from, a chunk of queries at a time (gtaseg.distill)
    queries_keys: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget every record (the hooks stay), so that hooks kept across forwards record each one afresh."""
        for f in fields(self):
            records = getattr(self, f.name)
            if isinstance(records, dict):
                records.clear()

    def cls_logits(self, blocks: Sequence[int] | None = None) -> Tensor:
        """Pre-softmax [cls]→patch logits, [B, L, H, N]; the cls→cls and register entries are dropped."""
        blocks = sorted(self.row_logits) if blocks is None else blocks
        return torch.stack([self.row_logits[b][..., self.num_prefix_tokens:] for b in blocks], dim=1)

    def cls_attention(self, block: int) -> Tensor:
        """Post-softmax [cls] attention over patches, [B, H, N]: softmax over all keys, then patches kept."""
        return self.row_logits[block].float().softmax(dim=-1)[..., self.num_prefix_tokens:]


def resolve_blocks(model: nn.Module, blocks: Sequence[int] | None) -> list[int]:
    """Block indices as non-negative ints (``None`` = every block); negative indices count from the end."""
    depth = len(model.blocks)
    if blocks is None:
        return list(range(depth))
    out = []
    for b in blocks:
        if not -depth <= b < depth:
            raise ValueError(f"block {b} out of range for a model with {depth} blocks")
        out.append(b % depth)
    return sorted(set(out))


def check_layout(model: nn.Module, blocks: Sequence[int]) -> None:
    """Refuse, in one line, a model without a [cls] token (token 0 would be a register or a patch) and a block
    of ``blocks`` whose attention is not a :data:`VERIFIED_ATTENTION` class."""
    for i in blocks:
        # A block without ``attn`` (timm's ParallelScalingBlock fuses it with the MLP) is named itself.
        layer = getattr(model.blocks[i], "attn", model.blocks[i])
        if type(layer) not in VERIFIED_ATTENTION:  # exact type: a subclass may override the forward
            supported = ", ".join(c.__name__ for c in VERIFIED_ATTENTION)
            raise ModelError(f"block {i}: {type(layer).__name__} is not an attention layout gtaseg has verified "
                             f"(supported: {supported}); its [cls] logits cannot be read")
    if getattr(model, "cls_token", None) is None:
        raise ModelError(f"{type(model).__name__} has no [cls] token (its token 0 is a register or a patch); "
                         f"GTA reads the [cls] query's attention")


def _cls_row_logits(attn: nn.Module, qkv: Tensor) -> Tensor:
    """[B, H, T] fp32 logits of the [cls] query (token 0) against all keys, from the qkv projection output.

    Three kernels on views of ``qkv`` (scale the [cls] query, multiply it into the keys, sum over D): no
    batched matmul, O(T·C) work and memory. The product and the sum over D run in fp32 even under bf16
    autocast: GTA holds target ≈ source, and differences below bf16's resolution would otherwise become
    rounding noise summed over every block, head and patch of the term.
    """
    B, T, _ = qkv.shape
    H, D = attn.num_heads, attn.head_dim
    q = qkv[:, :1, : H * D].reshape(B, 1, H, D)
    k = qkv[:, :, H * D : 2 * H * D].reshape(B, T, H, D)
    # q/k norms (identity unless the model has qk_norm) act per head on D, exactly as in the forward.
    q, k = attn.q_norm(q).float() * attn.scale, attn.k_norm(k).float()
    return (k * q).sum(-1).transpose(1, 2)


def _queries_keys(attn: nn.Module, qkv: Tensor) -> tuple[Tensor, Tensor]:
    """(q·scale, k), each [B, H, T, D], from the qkv projection output: views, plus the q/k norms."""
    B, T, _ = qkv.shape
    q, k, _v = qkv.reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q) * attn.scale, attn.k_norm(k)


@contextmanager
def capture(model: nn.Module, logits: Sequence[int] | None = None, *, block_outputs: Sequence[int] = (),
            msa_outputs: Sequence[int] = (), queries_keys: Sequence[int] = ()) -> Iterator[Captured]:
    """Record, during forwards inside the ``with``, the [cls] logits of the ``logits`` blocks (``None`` =
    all blocks), the outputs of the ``block_outputs`` blocks and of the ``msa_outputs`` attention
    branches, and the queries and keys of the ``queries_keys`` blocks. The model's forward is unchanged;
    gradients flow through everything recorded."""
    logit_blocks = resolve_blocks(model, logits)
    qk_blocks = resolve_blocks(model, queries_keys)
    check_layout(model, sorted(set(logit_blocks) | set(qk_blocks)))
    out = Captured(num_prefix_tokens=model.num_prefix_tokens)
    handles = []
    for i in logit_blocks:
        attn = model.blocks[i].attn
        handles.append(attn.qkv.register_forward_hook(
            lambda m, inp, qkv, i=i, attn=attn: out.row_logits.__setitem__(i, _cls_row_logits(attn, qkv))))
    for i in qk_blocks:
        attn = model.blocks[i].attn
        handles.append(attn.qkv.register_forward_hook(
            lambda m, inp, qkv, i=i, attn=attn: out.queries_keys.__setitem__(i, _queries_keys(attn, qkv))))
    for i in resolve_blocks(model, block_outputs):
        handles.append(model.blocks[i].register_forward_hook(lambda m, inp, y, i=i: out.block_out.__setitem__(i, y)))
    for i in resolve_blocks(model, msa_outputs):
        handles.append(model.blocks[i].attn.register_forward_hook(lambda m, inp, y, i=i: out.msa_out.__setitem__(i, y)))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def cls_logits(model: nn.Module, images: Tensor, blocks: Sequence[int] | None = None) -> Tensor:
    """Pre-softmax [cls]-query logits over the N patch keys for every block (or ``blocks``): [B, L, H, N].

    Runs the model's own (fused-attention) forward once; differentiable.
    """
    with capture(model, blocks) as cap:
        model.forward_features(images)
    return cap.cls_logits(resolve_blocks(model, blocks))


def cls_attentions(model: nn.Module, images: Tensor, blocks: Sequence[int] | None = None) -> Tensor:
    """Post-softmax [cls] attention over the N patch tokens of every block asked for (``None``: all), per
    head, from one forward: [B, L, H, N] in the order of ``resolve_blocks``."""
    blocks = resolve_blocks(model, blocks)
    with capture(model, blocks) as cap:
        model.forward_features(images)
    return torch.stack([cap.cls_attention(b) for b in blocks], dim=1)


def cls_attention(model: nn.Module, images: Tensor, block: int = -1) -> Tensor:
    """Post-softmax [cls] attention of one block over the N patch tokens, per head: [B, H, N]."""
    return cls_attentions(model, images, [block])[:, 0]
