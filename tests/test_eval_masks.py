"""DINO's mass threshold and the patch → pixel upsampling, on hand-computed numbers."""
import pytest
import torch

from gtaseg.evaluation.masks import attention_map, mass_mask, merged_mask, to_pixels


def test_mass_keeps_the_boundary_patch_like_dino():
    # Ascending: 0.1, 0.2, 0.3, 0.4 → cumulative 0.1, 0.3, 0.6, 1.0. DINO keeps cum > 1 - 0.6 = 0.4:
    # 0.3 (cum crosses 0.4 there) and 0.4, i.e. 70 % of the mass; dropping 0.3 would keep only 40 %.
    weights = torch.tensor([0.4, 0.1, 0.3, 0.2])
    assert mass_mask(weights, 0.6).tolist() == [True, False, True, False]


def test_mass_exactly_on_the_boundary_drops_that_patch():
    # Dyadic weights, so the sums are exact: 1/8, 1/8, 2/8, 4/8 → cumulative 0.125, 0.25, 0.5, 1.0.
    # With mass 0.75 the third-largest patch ends exactly at 1 - 0.75 = 0.25: not > 0.25, so it is dropped
    # and the kept mass is exactly 0.75.
    weights = torch.tensor([2.0, 1.0, 4.0, 1.0])
    assert mass_mask(weights, 0.75).tolist() == [True, False, True, False]
    assert mass_mask(weights, 0.5).tolist() == [False, False, True, False]
    # Just above 0.75 the next patch is needed.
    assert mass_mask(weights, 0.76).sum() == 3


def test_mass_ignores_scale_and_works_per_head():
    # [cls] attention over patches sums to less than 1 (the [cls] and register keys take the rest).
    heads = torch.tensor([[0.4, 0.1, 0.3, 0.2], [0.05, 0.05, 0.1, 0.8]]) * 0.5
    assert mass_mask(heads, 0.6).tolist() == [[True, False, True, False], [False, False, False, True]]
    assert mass_mask(heads, 1.0).all()


def test_mass_ties_are_broken_by_patch_order():
    # Uniform attention: cumulative 0.25, 0.5, 0.75, 1.0 > 0.5 keeps two patches, the later ones of the
    # stable ascending sort; the same on every run.
    assert mass_mask(torch.full((4,), 0.25), 0.5).tolist() == [False, False, True, True]


@pytest.mark.parametrize("mass", [0.0, -0.1, 1.5])
def test_mass_out_of_range(mass):
    with pytest.raises(ValueError):
        mass_mask(torch.ones(4), mass)


def test_merged_mask_averages_heads_before_thresholding():
    # Head means: 0.25, 0.25, 0.375, 0.125 → ascending 0.125, 0.25 (patch 0), 0.25 (patch 1), 0.375;
    # cumulative 0.125, 0.375, 0.625, 1.0; > 0.4 keeps patch 1 (the later tie) and patch 2.
    heads = torch.tensor([[0.5, 0.0, 0.25, 0.25], [0.0, 0.5, 0.5, 0.0]])
    assert merged_mask(heads, 0.6).tolist() == [False, True, True, False]
    # A union of the per-head masks would differ: head 0 alone keeps patches 0 and 3.
    assert mass_mask(heads, 0.6).any(dim=0).tolist() == [True, True, True, True]


def test_to_pixels_blocks_are_row_major():
    values = torch.arange(6).float()  # grid 2 rows × 3 columns
    px = to_pixels(values, (2, 3), 2)
    assert px.shape == (4, 6)
    assert px[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert px[3].tolist() == [3, 3, 4, 4, 5, 5]
    assert to_pixels(torch.ones(5, 6), (2, 3), 3).shape == (5, 6, 9)
    with pytest.raises(ValueError):
        to_pixels(values, (2, 2), 2)


def test_attention_map_is_max_over_heads_scaled():
    heads = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    assert torch.allclose(attention_map(heads), torch.tensor([1.0, 0.0, 0.5]))  # max 4, 2, 3 → min-max
