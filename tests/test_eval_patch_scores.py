"""The runner's fast path (IoU from per-patch pixel counts, on the device) against the pixel-level reference
of gtaseg.evaluation.jaccard, under every void rule; and the per-block functions against plain loops."""
import pytest
import torch

from gtaseg.evaluation.jaccard import VOID, merged_score, score_image
from gtaseg.evaluation.masks import to_pixels
from gtaseg.evaluation.patch_scores import best_of_heads, every_mask_iou, merged_ious, patch_targets, score_patches
from gtaseg.evaluation.protocols import VOID_RULES

P, G = 4, (5, 6)


def random_case(seed: int, classes=(3, 13), empty: bool = False):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(G[0] * P, G[1] * P, dtype=torch.uint8)
    if not empty:
        for c in classes:  # blobs that do not align with the patches
            r, col = torch.randint(0, G[0] * P - 7, (1,), generator=g).item(), torch.randint(0, G[1] * P - 9, (1,), generator=g).item()
            labels[r:r + 7, col:col + 9] = c
        void = torch.rand(labels.shape, generator=g) < 0.1
        labels[void] = VOID
    masks = torch.rand(3, 4, G[0] * G[1], generator=g) > 0.6  # [L, H, N]
    return labels, masks


@pytest.mark.parametrize("void", VOID_RULES)
@pytest.mark.parametrize("seed", range(6))
def test_patch_counts_equal_pixel_scores(seed, void):
    labels, masks = random_case(seed)
    heads, merged = masks[0], masks[1, 0]
    fast = score_patches("x", patch_targets(labels, P, void), heads, merged)
    slow = score_image("x", labels, to_pixels(heads, G, P), to_pixels(merged, G, P), void=void)
    assert fast.classes.keys() == slow.classes.keys()
    for c in fast.classes:
        assert fast.classes[c] == slow.classes[c]  # same IoU, head, intersection and union
    assert fast.best == pytest.approx(slow.best)
    assert fast.merged == pytest.approx(slow.merged)


def test_void_rules_change_the_numbers_as_documented():
    labels = torch.zeros(4, 4, dtype=torch.uint8)
    labels[:2, :2] = 13
    labels[:2, 2:] = VOID
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :] = True  # the object and the void next to it
    assert merged_score(mask, labels, "ignore") == 1.0  # void counts nowhere
    assert merged_score(mask, labels, "background") == 0.5  # void in the mask is a false positive
    assert merged_score(mask, labels, "foreground") == 1.0  # void is object
    assert merged_score(~mask, labels, "foreground") == 0.0


def test_image_without_objects():
    labels, masks = random_case(0, empty=True)
    score = score_patches("e", patch_targets(labels, P), masks[0], masks[1, 0])
    assert (score.best, score.merged, score.classes, score.has_objects) == (None, None, {}, False)
    assert torch.isnan(every_mask_iou(masks, patch_targets(labels, P))).all()


@pytest.mark.parametrize("seed", range(4))
def test_per_block_functions_equal_loops_over_the_reference(seed):
    labels, masks = random_case(seed)
    targets = patch_targets(labels, P)
    per_head = every_mask_iou(masks, targets)  # [L, H]
    best = best_of_heads(masks, targets)  # [L]
    merged = merged_ious(masks[:, 0], targets)  # [L]: any [L, N] masks will do
    for b in range(masks.shape[0]):
        pixels = to_pixels(masks[b], G, P)
        ref = score_image("x", labels, pixels, pixels[0])
        assert best[b].item() == pytest.approx(ref.best)
        assert merged[b].item() == pytest.approx(ref.merged)
        for h in range(masks.shape[1]):
            one = [score_image("x", labels, pixels[h:h + 1]).classes[c].iou for c in ref.classes]
            assert per_head[b, h].item() == pytest.approx(sum(one) / len(one))
