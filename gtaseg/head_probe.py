"""``--head-init probe``: the new classifier head fitted as a linear probe on the frozen starting backbone (the LP
of LP-FT, Kumar et al., ICLR 2022), before any method fine-tunes from it.

The probe is multinomial logistic regression on the head's own input (the pre-logits features), standardised for
the fit and folded back into one ``nn.Linear``, solved to convergence from zero by L-BFGS: no random draw, so the
same images give the same head.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# The L2 penalty on the standardised weights: small, so the probe fits the few images of a class, but non-zero, so
# that on separable features (a few images of each of many classes) the optimum is finite.
PROBE_WEIGHT_DECAY = 1e-3


def fit_probe(x: Tensor, y: Tensor, weight_decay: float, num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """Weights [D, K] and bias [K] of the softmax regression CE(x·w + b, y) + weight_decay·‖w‖², from zero."""
    w = torch.zeros(x.shape[1], num_classes or int(y.max()) + 1, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(w.shape[1], dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()  # not inference_mode: the probe's fit differentiates through what it returns
def head_features(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                  device: torch.device) -> tuple[Tensor, Tensor]:
    """The head's input [N, D] (fp32, on the CPU) and the labels [N] of every batch, the model in eval mode."""
    was_training = model.training
    model.eval()
    xs, ys = [], []
    for images, labels in batches:
        xs.append(model.forward_head(model.forward_features(images.to(device)), pre_logits=True).float().cpu())
        ys.append(labels)
    model.train(was_training)
    return torch.cat(xs), torch.cat(ys)


def probe_head(model: nn.Module, features: Tensor, labels: Tensor,
               weight_decay: float = PROBE_WEIGHT_DECAY) -> float:
    """Set ``model.head`` to the probe fitted on ``features``/``labels`` (from :func:`head_features`); returns the
    probe's top-1 (%) on those training images."""
    x, y = features.double(), labels.long()
    mean, std = x.mean(0), x.std(0) + 1e-6
    w, b = fit_probe((x - mean) / std, y, weight_decay, num_classes=model.head.out_features)
    weight, bias = (w / std[:, None]).T, b - (mean / std) @ w  # x·W' + b' == ((x − μ)/σ)·w + b
    with torch.no_grad():
        model.head.weight.copy_(weight.to(model.head.weight))
        model.head.bias.copy_(bias.to(model.head.bias))
    return 100.0 * float(((x @ weight.T + bias).argmax(1) == y).double().mean())
