"""TransMix: the soft targets by hand, and the CutMix label weight read from the last block's [cls] attention."""
import copy

import pytest
import torch
import torch.nn.functional as F

from gtaseg.attention import cls_attention
from gtaseg.transmix import MixedBatch, TransMix
from tests.test_methods import batch, make_trainer


def test_soft_targets_by_hand():
    """Two images on a 2×2 patch grid, the box over the top-left patch (area 1/4, so CutMix's λ = 0.75). The
    attention is per head, and its patches need not sum to 1 (the [cls] and register keys take the rest)."""
    tm = TransMix(num_classes=3)
    labels = torch.tensor([0, 2])
    attention = torch.tensor([[[0.48, 0.08, 0.08, 0.16], [0.16, 0.24, 0.24, 0.16]],   # mean 0.32 .16 .16 .16
                              [[0.05, 0.35, 0.25, 0.35], [0.15, 0.25, 0.35, 0.25]]])  # mean 0.10 .30 .30 .30
    cut = MixedBatch(torch.zeros(2, 3, 4, 4), labels, 0.75, (0, 2, 0, 2))
    # Mass in the box: 0.32 / 0.8 = 0.4 and 0.1 / 1.0 = 0.1; λ = 1 − ½((1 − 0.75) + mass).
    expected = torch.tensor([[0.675, 0.0, 0.325],
                             [0.175, 0.0, 0.825]])
    torch.testing.assert_close(tm.soft_targets(cut, attention, (2, 2)), expected)
    mixup = MixedBatch(torch.zeros(2, 3, 4, 4), labels, 0.7, None)  # Mixup: the attention does not count
    torch.testing.assert_close(tm.soft_targets(mixup, attention, (2, 2)), torch.tensor([[0.7, 0.0, 0.3],
                                                                                      [0.3, 0.0, 0.7]]))


def test_cutmix_label_weight_comes_from_the_last_blocks_attention(tmp_path, tiny_folder):
    """The cross-entropy the objective computes is the one against targets weighted by the last block's [cls]
    attention on the mixed images, and not by another block's."""
    t = make_trainer(tmp_path, tiny_folder, method="baseline", transmix=True)
    t.model.eval()  # one forward here and one in the loss: the same function of the weights
    tm = t.objective.transmix
    tm.switch_prob = 1.0  # CutMix every time: the box is where the attention counts
    images, labels = batch(t)
    replay = copy.deepcopy(tm)  # draws the same box as the loss will
    loss, terms = t.objective.loss(images, labels)
    mixed = replay.mix(images, labels)
    assert mixed.box is not None
    with torch.no_grad():
        log_p = F.log_softmax(t.model(mixed.images), dim=-1)

    def ce(block):
        targets = replay.soft_targets(mixed, cls_attention(t.model, mixed.images, block), (2, 2))
        return torch.sum(-targets * log_p, dim=-1).mean().item()

    assert terms["ce"].item() == pytest.approx(ce(-1), rel=1e-5)
    assert terms["ce"].item() != pytest.approx(ce(0), rel=1e-5)
    assert torch.isfinite(loss) and terms["reg"].item() == 0.0
    loss.backward()
    assert t.model.head.weight.grad is not None
