"""Per-image scoring: void pixels, best-head choice, the merged variant, images without objects."""
import pytest
import torch

from gtaseg.evaluation.jaccard import VOID, best_head_scores, iou, jaccard, merged_score, object_classes, score_image


def grid(rows):
    return torch.tensor(rows, dtype=torch.uint8)


def masks(*rows):
    return torch.tensor(rows, dtype=torch.bool)


# A 3×4 image: class 13 on the left, void on part of its border, background on the right.
LABELS = grid([[13, 13, VOID, 0],
               [13, 13, VOID, 0],
               [0, 0, 0, 0]])


def test_void_pixels_are_out_of_intersection_and_union():
    # Predicts the object, the void column and one background pixel: the void pixels must not count.
    pred = masks([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]])
    (value,) = iou(pred.unsqueeze(0), LABELS == 13, LABELS != VOID).tolist()
    assert value == pytest.approx(4 / 5)  # 4 object pixels over (4 object + 1 background)


def test_best_head_is_chosen_per_class():
    labels = grid([[13, 13, 0, 7],
                   [13, 13, 0, 7],
                   [0, 0, 0, VOID]])
    heads = torch.stack([
        masks([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),  # 1/4 of class 13
        masks([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]]),  # 4/5 of class 13
        masks([[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]]),  # class 7 exactly (its third pixel is void)
    ])
    scores = best_head_scores(heads, labels)
    assert sorted(scores) == [7, 13]
    assert (scores[13].head, scores[13].iou) == (1, pytest.approx(4 / 5))
    assert (scores[7].head, scores[7].iou) == (2, pytest.approx(1.0))
    image = score_image("a", labels, heads)
    assert image.best == pytest.approx((4 / 5 + 1.0) / 2)  # mean over the image's classes
    assert image.merged is None


def test_merged_scores_one_mask_against_all_objects():
    labels = grid([[13, 13, 0, 7],
                   [0, 0, 0, 7]])
    mask = masks([[1, 1, 1, 1], [0, 0, 0, 0]])
    # Foreground = 13 ∪ 7 = 4 pixels; the mask covers 3 of them plus 1 background pixel.
    assert merged_score(mask, labels) == pytest.approx(3 / 5)
    assert score_image("b", labels, merged=mask).merged == pytest.approx(3 / 5)


def test_image_without_objects_is_left_out_of_the_mean():
    empty = grid([[0, 0, VOID], [0, 0, 0]])
    assert object_classes(empty) == []
    image = score_image("empty", empty, torch.ones(2, 2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool))
    assert (image.best, image.merged, image.classes, image.has_objects) == (None, None, {}, False)
    assert jaccard([0.5, None, 1.0]) == pytest.approx(75.0)
    assert jaccard([None, None]) is None


def test_to_json_keeps_the_head_of_every_class():
    heads = torch.stack([LABELS == 13, LABELS == 0])
    out = score_image("x", LABELS, heads).to_json()
    assert out == {"id": "x", "best": 1.0, "merged": None, "classes": {"13": {"iou": 1.0, "head": 0}}}
