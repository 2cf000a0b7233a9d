"""The objective built from modules alone, its numerics under bf16 autocast, and the source it is given."""
import copy
from dataclasses import replace

import pytest
import timm
import torch

from gtaseg.attention import capture, cls_logits
from gtaseg.config import TrainConfig, resolve
from gtaseg.errors import GtasegError
from gtaseg.methods import METHODS
from gtaseg.models import create_vit, model_info, save_model
from gtaseg.objective import Objective, check_source, renormalizer
from gtaseg.regularizers import guidance_l2
from gtaseg.train import build_training

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, **kw)


def batch(n=4, size=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 3


def test_an_objective_needs_no_files():
    """CE + λ·GTA from a model and a copy of it: the term is 0 at the start and the loss is the cross-entropy."""
    model = create_vit("vit_tiny_patch16_224", 3)
    objective = Objective(model, METHODS["gta"], source=copy.deepcopy(model).eval(), lam=10.0)
    images, labels = batch()
    loss, terms = objective.loss(images, labels)
    assert terms["reg"].item() == 0.0 and loss.item() == pytest.approx(terms["ce"].item())
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_cls_row_is_computed_in_fp32_under_bf16_autocast():
    """The [cls] row is fp32 and equals the fp32 product of the (bf16) q and k that the forward made: the
    rounding of a bf16 product and sum over D is gone."""
    model = tiny().eval()
    images, _ = batch()
    kept = {}
    hook = model.blocks[2].attn.qkv.register_forward_hook(lambda m, i, out: kept.setdefault("qkv", out))
    with torch.autocast("cpu", torch.bfloat16), capture(model, [2]) as cap:
        model.forward_features(images)
    hook.remove()
    row = cap.row_logits[2]
    assert kept["qkv"].dtype == torch.bfloat16  # autocast was on: the projection ran in bf16
    assert row.dtype == torch.float32
    H, D = model.blocks[2].attn.num_heads, model.blocks[2].attn.head_dim
    q = kept["qkv"][:, 0, : H * D].float().view(-1, H, 1, D) * model.blocks[2].attn.scale
    k = kept["qkv"][:, :, H * D : 2 * H * D].float().unflatten(-1, (H, D)).transpose(1, 2)
    reference = (q @ k.transpose(-2, -1))[:, :, 0]  # [B, H, T]
    torch.testing.assert_close(row, reference, rtol=1e-5, atol=1e-5)


def test_gta_term_is_exactly_zero_at_step_0_under_bf16_autocast():
    model = tiny().train()
    objective = Objective(model, METHODS["gta"], source=copy.deepcopy(model).eval().requires_grad_(False), lam=1.0,
                          autocast=torch.bfloat16)
    images, labels = batch()
    loss, terms = objective.loss(images, labels)
    assert terms["reg"].item() == 0.0
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("change, what", [(dict(patch_size=8), "patch size"), (dict(depth=6), "depth"),
                                          (dict(embed_dim=96, num_heads=3), "width"), (dict(num_heads=6), "heads"),
                                          (dict(reg_tokens=4), "prefix tokens")])
def test_a_source_of_another_layout_is_refused_in_one_line(change, what):
    target = tiny()
    source = tiny(**change)
    with pytest.raises(GtasegError, match=what) as e:
        check_source(target, model_info(target, "vit_tiny_patch16_224"), source, model_info(source, "other"))
    assert "\n" not in str(e.value)


def test_a_source_of_the_same_layout_passes():
    target, source = tiny(), tiny()
    check_source(target, model_info(target, "a"), source, model_info(source, "b"))


def test_a_source_with_its_own_normalisation_sees_its_own_pixels(tmp_path, tiny_folder):
    """--source trained with other mean/std: it gets the pixels normalised its way, before the first step."""
    source = create_vit("vit_tiny_patch16_224", 3)
    info = replace(model_info(source, "vit_tiny_patch16_224"), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    save_model(tmp_path / "source.safetensors", source, info)
    t = build_training(resolve(TrainConfig(init="random:vit_tiny_patch16_224", source=str(tmp_path / "source.safetensors"),
                                           data=str(tiny_folder), image_size=32, batch_size=4, workers=0, method="gta")))
    pixels = torch.rand(4, 3, 32, 32)
    target_mean, target_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (t.info.mean, t.info.std))
    images = (pixels - target_mean) / target_std
    labels = torch.arange(4) % 3
    _, terms = t.objective.loss(images, labels)
    t.model.eval()
    expected = guidance_l2(cls_logits(t.model, images), cls_logits(t.objective.source, (pixels - 0.5) / 0.25))
    expected = expected / t.objective.term_entries(32)  # --lam-reduction mean
    assert terms["reg"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_renormalizer_is_none_when_both_agree():
    model = tiny()
    info = model_info(model, "a")
    assert renormalizer(info, info) is None
