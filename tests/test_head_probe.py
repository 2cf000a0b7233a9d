"""--head-init probe: the head fitted as a linear probe on the frozen starting backbone (LP-FT's LP), checked
against a plain optimum condition and against --method linear."""
import pytest
import torch
import torch.nn.functional as F

from gtaseg.config import TrainConfig, resolve
from gtaseg.head_probe import fit_probe, probe_head
from gtaseg.train import build_training, train
from tests.conftest import make_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(init="random:vit_tiny_patch16_224", image_size=32, batch_size=4, workers=0)


def test_the_fit_is_the_penalised_optimum():
    """At the optimum of CE(xw + b, y) + λ‖w‖² the gradient vanishes: checked with autograd, independently."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (60,), generator=g)
    w, b = fit_probe(x, y, 1e-2)
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    loss = F.cross_entropy(x @ w + b, y) + 1e-2 * w.square().sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert gw.abs().max() < 1e-5 and gb.abs().max() < 1e-5


def test_the_folded_head_equals_the_standardised_probe():
    head = torch.nn.Linear(4, 3)
    model = torch.nn.Module()
    model.head = head
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 4, generator=g) * 5 + 2, torch.randint(0, 3, (30,), generator=g)
    probe_head(model, x, y, weight_decay=1e-3)
    xd = x.double()
    mean, std = xd.mean(0), xd.std(0) + 1e-6
    w, b = fit_probe((xd - mean) / std, y, 1e-3, num_classes=3)
    torch.testing.assert_close(head(x).double(), ((xd - mean) / std) @ w + b, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("probe"), classes=3, train=8, test=4, size=32)


def test_probe_heads_are_deterministic_and_differ_from_timm_s(folder):
    a, b = (build_training(resolve(TrainConfig(data=str(folder), head_init="probe", **TINY, steps=1))) for _ in range(2))
    assert torch.equal(a.model.head.weight, b.model.head.weight) and a.probe_top1 == b.probe_top1
    timm_head = build_training(resolve(TrainConfig(data=str(folder), **TINY, steps=1)))
    assert not torch.equal(a.model.head.weight, timm_head.model.head.weight)
    # The rest of the model, and what the run draws after, are those of a run without the probe.
    for (n, p), (_, q) in zip(a.model.named_parameters(), timm_head.model.named_parameters()):
        if not n.startswith("head."):
            assert torch.equal(p, q), n


def test_the_probe_head_alone_scores_what_linear_probing_reaches_in_far_more_steps(folder, tmp_path):
    probe = train(TrainConfig(data=str(folder), method="linear", head_init="probe", steps=1, lr=1e-12,
                              randaugment=False, **TINY), tmp_path / "probe")
    linear = train(TrainConfig(data=str(folder), method="linear", steps=150, lr=1e-3, head_lr_scale=10.0,
                               randaugment=False, **TINY), tmp_path / "linear")
    assert probe["head_init"] == "probe" and probe["probe_train_top1"] is not None
    assert probe["top1"] >= linear["top1"] - 100 / 12 - 1e-6  # within one of the 12 test images
