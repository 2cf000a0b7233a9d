"""The attention-transfer baselines of Li et al., "On the surprising effectiveness of attention transfer for
vision transformers" (NeurIPS 2024), as loss terms on what :func:`gtaseg.attention.capture` records (the
methods themselves are in :mod:`gtaseg.methods.attention_transfer`).

* ``attn-distill``: the cross-entropy H(P̃, P) between the source's post-softmax attention map P̃ and the
  target's P, for every query of every head; mean over batch × heads × queries, summed over guided blocks.
* ``cls-distill``: the same on the [cls] query's row only: GTA's row, compared as probabilities (over all
  keys, prefix tokens included, as the softmax sees them) instead of as logits.

The [cls] row comes from the existing capture and costs O(T·C). The all-query maps are T×T per head and block:
:class:`AttentionMapCE` forms them a chunk of queries at a time, in the forward and again in the backward
(from the saved q and k, O(T·C)), so no more than one chunk of maps exists at any time. What it keeps per
guided block until the backward is the target's scaled q and the source's q and k: 3·B·T·C numbers.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Elements of one chunk of [B, H, queries, T] maps (about 4 of them live at once, fp32): 2^24 = 64 MB each,
# whole maps up to ViT-S at batch 64 and 224 px; at batch 256, 4 chunks per block instead of a 240 MB map.
CHUNK_ELEMENTS = 2**24


def query_chunk(batch: int, heads: int, tokens: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Queries per chunk so that a [batch, heads, chunk, tokens] map holds at most ``budget`` elements."""
    return max(1, min(tokens, budget // max(1, batch * heads * tokens)))


class AttentionMapCE(torch.autograd.Function):
    """Σ over queries of H(softmax(q̃k̃ᵀ), softmax(qkᵀ)), mean over batch × heads × queries; q already scaled.

    The gradient with respect to the target's logits is softmax(qkᵀ) − softmax(q̃k̃ᵀ) per row, so the backward
    recomputes both maps chunk by chunk instead of keeping them from the forward.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, q_src: Tensor, k_src: Tensor, chunk: int) -> Tensor:
        B, H, T, _ = q.shape
        total = torch.zeros((), dtype=torch.float32, device=q.device)
        for s in range(0, T, chunk):
            log_p, p_src = _chunk_maps(q, k, q_src, k_src, s, s + chunk)
            total -= (p_src * log_p).sum()
        ctx.save_for_backward(q, k)
        # The source's q and k may be inference tensors (the source runs under inference_mode), which
        # save_for_backward refuses; they need no gradient, so a plain reference does. k is a view into the
        # source's whole qkv output: a copy of it lets that (1.5× larger) buffer go.
        ctx.source, ctx.chunk = (q_src, k_src.contiguous()), chunk
        return total / (B * H * T)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k = ctx.saved_tensors
        q_src, k_src = ctx.source
        B, H, T, _ = q.shape
        scale = grad.float() / (B * H * T)
        dq = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        kf = k.float()
        for s in range(0, T, ctx.chunk):
            log_p, p_src = _chunk_maps(q, k, q_src, k_src, s, s + ctx.chunk)
            d_logits = (log_p.exp() - p_src) * scale  # d CE / d (q·kᵀ) of this chunk's rows
            dq[:, :, s:s + ctx.chunk] = d_logits @ kf
            dk += d_logits.transpose(-2, -1) @ q[:, :, s:s + ctx.chunk].float()
        return dq.to(q.dtype), dk.to(k.dtype), None, None, None


def _chunk_maps(q: Tensor, k: Tensor, q_src: Tensor, k_src: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """The target's log-attention and the source's attention for queries ``start:stop``: [B, H, chunk, T]."""
    log_p = (q[:, :, start:stop].float() @ k.float().transpose(-2, -1)).log_softmax(-1)
    p_src = (q_src[:, :, start:stop].float() @ k_src.float().transpose(-2, -1)).softmax(-1)
    return log_p, p_src


def attention_map_ce(target: Sequence[tuple[Tensor, Tensor]], source: Sequence[tuple[Tensor, Tensor]],
                     chunk: int | None = None) -> Tensor:
    """``attn-distill``: per block (q, k) pairs of target and source; Σ over blocks of the mean CE."""
    total = 0.0
    for (q, k), (q_src, k_src) in zip(target, source, strict=True):
        B, H, T, _ = q.shape
        total = total + AttentionMapCE.apply(q, k, q_src, k_src, chunk or query_chunk(B, H, T))
    return total


def cls_attention_ce(target: Sequence[Tensor], source: Sequence[Tensor]) -> Tensor:
    """``cls-distill``: per block [B, H, T] [cls]-row logits; Σ over blocks of the CE, mean over batch × heads."""
    total = 0.0
    for t, s in zip(target, source, strict=True):
        total = total - (s.float().softmax(-1) * t.float().log_softmax(-1)).sum(-1).mean()
    return total
