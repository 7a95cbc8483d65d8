"""Masks: exact cell counts, cell-aligned positions, per-image randomness, fill, token masks."""

import pytest
import torch

from vitmim.errors import UserError
from vitmim.masking import (
    apply_fill,
    num_masked,
    pixel_to_token_mask,
    random_cell_mask,
    random_mask,
)


@pytest.mark.parametrize("cell", [2, 4, 8, 16])
@pytest.mark.parametrize("ratio", [0.2, 0.4, 0.6, 0.75])
def test_exact_masked_cell_count_per_image(cell, ratio):
    g = torch.Generator().manual_seed(0)
    mask = random_mask(16, 64, cell, ratio, g)
    assert mask.shape == (16, 1, 64, 64)
    cells = (64 // cell) ** 2
    per_image_pixels = mask.flatten(1).sum(1)
    assert torch.all(per_image_pixels == round(ratio * cells) * cell * cell)


@pytest.mark.parametrize("cell", [2, 4, 8])
def test_masked_regions_are_whole_aligned_cells(cell):
    mask = random_mask(4, 64, cell, 0.4, torch.Generator().manual_seed(1))
    # every cell is entirely masked or entirely visible
    pooled = torch.nn.functional.avg_pool2d(mask, cell)
    assert torch.all((pooled == 0) | (pooled == 1))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_masks_differ_between_images_and_follow_the_generator():
    a = random_mask(8, 64, 4, 0.6, torch.Generator().manual_seed(3))
    b = random_mask(8, 64, 4, 0.6, torch.Generator().manual_seed(3))
    c = random_mask(8, 64, 4, 0.6, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(m.flatten().tolist()) for m in a}) == 8


def test_every_cell_is_chosen_uniformly():
    cells = random_cell_mask(4000, (4, 4), 0.25, torch.Generator().manual_seed(0))
    freq = cells.float().mean(0)  # each of 16 cells masked with probability 4/16
    assert torch.allclose(freq, torch.full_like(freq, 0.25), atol=0.03)


def test_round_half_to_even_is_the_count_rule():
    assert num_masked(64, 0.6) == 38  # 38.4
    assert num_masked(1024, 0.2) == 205  # 204.8
    assert num_masked(10, 0.25) == 2  # 2.5 -> 2 (Python round)


@pytest.mark.parametrize("cell", [3, 5, 0, 128])
def test_cell_that_does_not_divide_is_refused(cell):
    with pytest.raises(UserError, match="mask_patch"):
        random_mask(1, 64, cell, 0.5)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval_is_refused(ratio):
    with pytest.raises(UserError, match="mask_ratio"):
        random_mask(1, 64, 8, ratio)


def test_fill_replaces_only_masked_pixels():
    x = torch.randn(2, 3, 64, 64)
    mask = random_mask(2, 64, 8, 0.5, torch.Generator().manual_seed(0))
    y = apply_fill(x, mask, fill=0.0)
    m = mask.expand_as(x).bool()
    assert torch.all(y[m] == 0)
    assert torch.equal(y[~m], x[~m])


def test_token_mask_matches_cells_when_cell_is_a_multiple_of_the_patch():
    mask = random_mask(3, 64, 16, 0.5, torch.Generator().manual_seed(0))
    tokens = pixel_to_token_mask(mask, 8)
    assert tokens.shape == (3, 64)
    assert torch.all(tokens.sum(1) == 8 * 4)  # 8 of 16 cells, each 2x2 tokens
