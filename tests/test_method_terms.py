"""Each method object's term against a slow, obvious reference computed by explicit loops, and its entry count
against what the term actually sums; Objective.loss only calls the method."""
import copy

import pytest
import torch

from gtaseg.attention import capture
from gtaseg.config import REDUCTION_HELP
from gtaseg.methods import METHODS, Layout
from gtaseg.models import create_vit
from gtaseg.objective import Objective

GUIDED = [0, 2]
B, IMAGE = 2, 32  # vit_tiny at 32 px: 2×2 patches, 1 prefix token, 3 heads, width 192


def models():
    """A target moved away from its frozen source, so that every term is non-zero."""
    torch.manual_seed(0)
    target = create_vit("vit_tiny_patch16_224", 3).eval()
    source = copy.deepcopy(target).requires_grad_(False)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.02 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
    return target, source


def images():
    torch.manual_seed(1)
    return torch.randn(B, 3, IMAGE, IMAGE), torch.arange(B) % 3


def term(method, target, source, reduction="sum", blocks=GUIDED):
    x, y = images()
    m = METHODS[method]
    objective = Objective(target, m, source=source if m.needs_source else None, lam=1.0, reduction=reduction,
                          blocks=blocks)
    return objective.loss(x, y)[1]["reg"], objective


def recorded(model, x):
    """Slow and obvious: every block's attention input, MSA output and output, by hooks of the test's own."""
    inputs, msa, out = [], [], []
    hooks = [h for blk in model.blocks for h in (
        blk.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0])),
        blk.attn.register_forward_hook(lambda m, a, o: msa.append(o)),
        blk.register_forward_hook(lambda m, a, o: out.append(o)))]
    with torch.no_grad():
        model.forward_features(x)
    for h in hooks:
        h.remove()
    return inputs, msa, out


def full_logits(model, x):
    """Per block, the pre-softmax T×T attention logits [B, H, T, T], formed from q and k by hand."""
    inputs, _, _ = recorded(model, x)
    logits = []
    for blk, z in zip(model.blocks, inputs):
        a = blk.attn
        qkv = (z @ a.qkv.weight.T + a.qkv.bias).reshape(z.shape[0], z.shape[1], 3, a.num_heads, a.head_dim)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        logits.append((q @ k.transpose(-2, -1)) / a.head_dim ** 0.5)
    return logits


def test_gta_term_is_the_sum_over_blocks_heads_and_patches_of_squared_logit_differences():
    target, source = models()
    x, _ = images()
    lt, ls = full_logits(target, x), full_logits(source, x)
    p = target.num_prefix_tokens
    total = 0.0
    for b in range(B):
        for block in GUIDED:
            for h in range(target.blocks[0].attn.num_heads):
                total += ((lt[block][b, h, 0, p:] - ls[block][b, h, 0, p:]) ** 2).sum().item()
    got, objective = term("gta", target, source)
    assert got.item() == pytest.approx(total / B, rel=1e-4)
    entries = len(GUIDED) * 3 * 4
    assert objective.term_entries(IMAGE) == entries
    assert term("gta", *models(), reduction="mean")[0].item() == pytest.approx(total / B / entries, rel=1e-4)


@pytest.mark.parametrize("method, which", [("guide-block", 2), ("guide-msa", 1)])
def test_feature_guidance_term_is_the_sum_of_squared_output_differences(method, which):
    target, source = models()
    x, _ = images()
    ot, os_ = recorded(target, x)[which], recorded(source, x)[which]
    total = sum(((ot[block][b] - os_[block][b]) ** 2).sum().item() for b in range(B) for block in GUIDED)
    got, objective = term(method, target, source)
    assert got.item() == pytest.approx(total / B, rel=1e-4)
    assert objective.term_entries(IMAGE) == len(GUIDED) * (4 + 1) * 192


def test_attn_distill_term_is_the_cross_entropy_of_every_querys_attention_map():
    target, source = models()
    x, _ = images()
    lt, ls = full_logits(target, x), full_logits(source, x)
    total = 0.0
    for block in GUIDED:
        H, T = lt[block].shape[1], lt[block].shape[2]
        ce = sum(-(ls[block][b, h, q].softmax(-1) * lt[block][b, h, q].log_softmax(-1)).sum().item()
                 for b in range(B) for h in range(H) for q in range(T))
        total += ce / (B * H * T)
    got, objective = term("attn-distill", target, source)
    assert got.item() == pytest.approx(total, rel=1e-4)
    assert objective.term_entries(IMAGE) is None


def test_cls_distill_term_is_the_cross_entropy_of_the_cls_row_over_all_keys():
    target, source = models()
    x, _ = images()
    lt, ls = full_logits(target, x), full_logits(source, x)
    total = 0.0
    for block in GUIDED:
        H = lt[block].shape[1]
        ce = sum(-(ls[block][b, h, 0].softmax(-1) * lt[block][b, h, 0].log_softmax(-1)).sum().item()
                 for b in range(B) for h in range(H))
        total += ce / (B * H)
    got, objective = term("cls-distill", target, source)
    assert got.item() == pytest.approx(total, rel=1e-4)
    assert objective.term_entries(IMAGE) is None


def test_l2sp_term_is_half_the_squared_distance_of_the_backbone_from_where_the_run_set_it_up():
    target, _ = models()
    start = {n: p.detach().clone() for n, p in target.named_parameters()}
    METHODS["l2sp"].freeze(target)
    x, y = images()
    objective = Objective(target, METHODS["l2sp"], lam=1.0)
    with torch.no_grad():  # moved after set-up: the starting point is the weights at set-up, not these
        for p in target.parameters():
            p.mul_(1.01)
    got = objective.loss(x, y)[1]["reg"].item()
    slow = 0.5 * sum(((p - start[n]) ** 2).sum().item() for n, p in target.named_parameters()
                     if not n.startswith("head."))
    assert got == pytest.approx(slow, rel=1e-4)
    assert objective.term_entries(IMAGE) is None


def test_bss_term_is_the_smallest_squared_singular_value_of_the_batch_features():
    target, _ = models()
    x, _ = images()
    with torch.no_grad():
        features = target.forward_head(target.forward_features(x), pre_logits=True)
    got, objective = term("bss", target, None)
    smallest = torch.linalg.svd(features.double()).S.min().item()
    assert got.item() == pytest.approx(smallest ** 2, rel=1e-3)
    assert objective.term_entries(IMAGE) is None


@pytest.mark.parametrize("method", ["baseline", "attn-only", "ffn-only", "linear"])
def test_methods_that_only_choose_what_trains_record_nothing_and_add_nothing(method):
    target, source = models()
    got, objective = term(method, target, source)
    assert got.item() == 0.0 and objective.term_entries(IMAGE) is None
    assert objective.method.records() == type(objective.method.records())()


@pytest.mark.parametrize("method", list(METHODS))
def test_entry_count_is_what_the_term_sums_and_the_capture_holds_only_what_the_method_asked_for(method):
    """The mean reduction divides by Method.entries: it must be the per-image size of what is summed."""
    target, source = models()
    objective = Objective(target, METHODS[method], source=source, blocks=GUIDED)
    wanted = objective.method.records()
    x, _ = images()
    with capture(target, list(wanted.logits), block_outputs=wanted.block_outputs, msa_outputs=wanted.msa_outputs,
                 queries_keys=wanted.queries_keys) as cap:
        target.forward_features(x)
    summed = {"gta": cap.cls_logits(GUIDED)[0].numel() if cap.row_logits else None,
              "guide-block": sum(cap.block_out[b][0].numel() for b in GUIDED) if cap.block_out else None,
              "guide-msa": sum(cap.msa_out[b][0].numel() for b in GUIDED) if cap.msa_out else None}
    assert objective.term_entries(IMAGE) == summed.get(method)
    recorded_blocks = set(cap.row_logits) | set(cap.block_out) | set(cap.msa_out) | set(cap.queries_keys)
    assert recorded_blocks <= set(GUIDED) and (recorded_blocks == set(GUIDED)) == METHODS[method].needs_source


def test_the_registry_and_the_help_come_from_the_method_objects():
    assert all(name == m.name for name, m in METHODS.items())
    example = Layout(blocks=12, heads=6, patches=64, prefix_tokens=1, width=384)
    reduced = [name for name, m in METHODS.items() if m.entries(example) is not None]
    assert reduced == ["gta", "guide-block", "guide-msa"]
    assert REDUCTION_HELP.startswith("How gta, guide-block and guide-msa reduce")
    assert "L·H·N = 12·6·64 = 4608 for ViT-S/14" in REDUCTION_HELP
