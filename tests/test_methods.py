"""What each method trains, and the properties of the GTA term that the method rests on."""
import pytest
import torch

from gtaseg.config import resolve
from gtaseg.methods import METHODS
from gtaseg.train import Training, TrainConfig, build_training, optimizer_step


def step(t: Training, batches):
    return optimizer_step(t.objective, t.optimizer, t.scheduler, batches, t.cfg.accum_steps)


def make_trainer(tmp_path, folder, **kw) -> Training:
    cfg = TrainConfig(init="random:vit_tiny_patch16_224", data=str(folder), image_size=32, batch_size=4,
                      accum_steps=1, steps=4, workers=0, **kw)
    return build_training(resolve(cfg))


def batch(trainer, n=4):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32), torch.arange(n) % len(trainer.classes)


def grads(trainer, images, labels):
    trainer.model.zero_grad(set_to_none=True)
    loss, _ = trainer.objective.loss(images, labels)
    loss.backward()
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_gta_term_is_zero_at_start_and_grows_after_a_step(tmp_path, tiny_folder):
    t = make_trainer(tmp_path, tiny_folder, method="gta")
    images, labels = batch(t)
    _, terms = t.objective.loss(images, labels)
    assert terms["reg"].item() == 0.0  # the source is the target's own starting point
    step(t, iter([(images, labels)]))
    _, terms = t.objective.loss(images, labels)
    assert terms["reg"].item() > 0.0


@pytest.mark.parametrize("method", ["gta", "attn-distill", "cls-distill"])
def test_lambda_zero_gives_baseline_gradients(tmp_path, tiny_folder, method):
    gta = make_trainer(tmp_path / "a", tiny_folder, method=method, lam=0.0)
    base = make_trainer(tmp_path / "b", tiny_folder, method="baseline")
    base.model.load_state_dict(gta.model.state_dict())
    # Move the target away from the source so the GTA term has a non-zero gradient that λ = 0 must cancel.
    with torch.no_grad():
        for m in (gta.model, base.model):
            m.blocks[0].attn.qkv.weight.add_(0.05)
    images, labels = batch(gta)
    g_gta, g_base = grads(gta, images, labels), grads(base, images, labels)
    assert g_gta.keys() == g_base.keys()
    for name in g_base:
        torch.testing.assert_close(g_gta[name], g_base[name], atol=0, rtol=0)
    gta.objective.lam = METHODS[method].default_lam
    assert any(not torch.equal(grads(gta, images, labels)[n], g_base[n]) for n in g_base)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gta_gradient_matches_the_formula(tmp_path, tiny_folder, reduction):
    """d/dθ of λ·Σ‖A − Ã‖² (mean over the batch; --lam-reduction mean: over every entry too) computed by hand
    from an unfused reference."""
    t = make_trainer(tmp_path, tiny_folder, method="gta", lam=2.5, lam_reduction=reduction)
    with torch.no_grad():
        t.model.blocks[1].attn.qkv.weight.mul_(1.3)
    images, labels = batch(t)
    _, terms = t.objective.loss(images, labels)
    from tests.test_attention import reference_cls_logits

    squares = (reference_cls_logits(t.model, images) - reference_cls_logits(t.objective.source, images)) ** 2
    expected = squares.sum((1, 2, 3)).mean() if reduction == "sum" else squares.mean()
    torch.testing.assert_close(terms["reg"], expected.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["gta", "guide-block", "guide-msa", "attn-distill", "cls-distill"])
def test_source_gets_no_gradient_and_does_not_change(tmp_path, tiny_folder, method):
    t = make_trainer(tmp_path, tiny_folder, method=method)
    before = {k: v.clone() for k, v in t.objective.source.state_dict().items()}
    images, labels = batch(t)
    for _ in range(2):
        step(t, iter([(images, labels)]))
    assert all(p.grad is None and not p.requires_grad for p in t.objective.source.parameters())
    assert not t.objective.source.training
    for k, v in t.objective.source.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, t.model.state_dict()[k]) for k, v in before.items() if not k.startswith("head."))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_updates_exactly_its_parameters(tmp_path, tiny_folder, method):
    t = make_trainer(tmp_path, tiny_folder, method=method)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    images, labels = batch(t)
    step(t, iter([(images, labels)]))
    changed = {n for n, p in t.model.named_parameters() if not torch.equal(p, before[n])}
    if method == "attn-only":
        expected = {n for n in before if ".attn." in n or n.startswith("head.")}
    elif method == "ffn-only":
        expected = {n for n in before if ".mlp." in n or n.startswith("head.")}
    elif method == "linear":
        expected = {n for n in before if n.startswith("head.")}
    else:
        expected = set(before)
    # AdamW moves every parameter with a gradient; anything outside `expected` must stay bit-identical.
    assert changed <= expected
    assert changed >= {n for n in expected if n.startswith("head.") or ".attn.qkv" in n or ".mlp.fc1" in n}
    assert changed >= {n for n in before if n.startswith("head.")}

