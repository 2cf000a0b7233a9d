"""The attention-transfer baselines against a slow, obvious reference: softmax(q·kᵀ·scale) maps recorded from an
unfused forward, and plain autograd through them."""
import pytest
import torch
import torch.nn.functional as F

from gtaseg.distill import attention_map_ce, query_chunk
from tests.test_methods import batch, grads, make_trainer


def unfused_maps(model, images):
    """Post-softmax attention [B, H, T, T] of every block, recorded from the unfused path (fused SDPA off)."""
    maps, fused = [], [b.attn.fused_attn for b in model.blocks]
    hooks = [b.attn.attn_drop.register_forward_hook(lambda m, a, y: maps.append(y)) for b in model.blocks]
    for b in model.blocks:
        b.attn.fused_attn = False
    try:
        features = model.forward_head(model.forward_features(images), pre_logits=True)
    finally:
        for b, f in zip(model.blocks, fused):
            b.attn.fused_attn = f
        for h in hooks:
            h.remove()
    return maps, model.head(features)


def reference_term(method, target_maps, source_maps):
    """Σ over blocks of the mean over batch × heads × queries of −Σ_keys P̃ log P ([cls] query only for cls-distill)."""
    total = 0.0
    for p, p_src in zip(target_maps, source_maps):
        if method == "cls-distill":
            p, p_src = p[:, :, :1], p_src[:, :, :1]
        total = total - (p_src * p.log()).sum(-1).mean()
    return total


def moved_trainer(tmp_path, tiny_folder, method, **kw):
    t = make_trainer(tmp_path, tiny_folder, method=method, **kw)
    with torch.no_grad():  # so that target and source differ and the term has a gradient
        t.model.blocks[0].attn.qkv.weight.mul_(1.4)
        t.model.blocks[1].attn.qkv.weight.add_(0.03)
    return t


@pytest.mark.parametrize("method", ["attn-distill", "cls-distill"])
def test_term_and_gradients_match_the_unfused_reference(tmp_path, tiny_folder, method, one_thread):
    t = moved_trainer(tmp_path, tiny_folder, method, lam=2.0)
    images, labels = batch(t)
    got = grads(t, images, labels)
    _, terms = t.objective.loss(images, labels)

    with torch.no_grad():
        source_maps, _ = unfused_maps(t.objective.source, images)
    t.model.zero_grad(set_to_none=True)
    maps, logits = unfused_maps(t.model, images)
    reg = reference_term(method, maps, source_maps)
    (F.cross_entropy(logits, labels) + 2.0 * reg).backward()
    ref = {n: p.grad for n, p in t.model.named_parameters() if p.grad is not None}

    torch.testing.assert_close(terms["reg"], reg.detach(), rtol=1e-5, atol=1e-6)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
def test_chunked_maps_equal_whole_maps(chunk):
    """Chunking over queries (forward and the recomputing backward) changes nothing but the memory."""
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 7, 4
    q, k = torch.randn(B, H, T, D, requires_grad=True), torch.randn(B, H, T, D, requires_grad=True)
    q_src, k_src = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    loss = attention_map_ce([(q, k)], [(q_src, k_src)], chunk=chunk)
    dq, dk = torch.autograd.grad(loss, (q, k))
    whole = -((q_src @ k_src.transpose(-2, -1)).softmax(-1) * (q @ k.transpose(-2, -1)).log_softmax(-1)).sum(-1).mean()
    ref_dq, ref_dk = torch.autograd.grad(whole, (q, k))
    torch.testing.assert_close(loss, whole)
    torch.testing.assert_close(dq, ref_dq)
    torch.testing.assert_close(dk, ref_dk)


def test_query_chunks_bound_the_map_size():
    assert query_chunk(2, 3, 7, budget=10**6) == 7  # small maps: one chunk
    c = query_chunk(256, 6, 197, budget=2**22)
    assert 1 <= c < 197 and 256 * 6 * c * 197 <= 2**22
    assert query_chunk(10**6, 16, 1025, budget=2**22) == 1
