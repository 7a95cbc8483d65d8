"""Mask generation: square cells of ``mask_patch`` px, exactly ``round(mask_ratio * cells)`` masked.

Convention, the one of the whole objective (:mod:`vitmim.models.restorer`): ``1 = masked``.
"""

from __future__ import annotations

import torch

from vitmim.errors import ConfigError


def num_masked(cells: int, mask_ratio: float) -> int:
    """Masked cells per image: ``round(mask_ratio * cells)`` (Python's round, half to even)."""
    return int(round(mask_ratio * cells))


def random_cell_mask(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-image uniform choice of exactly ``round(mask_ratio * cells)`` cells.

    Returns:
        (B, gh, gw) bool, True = masked.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio: expected a number in (0, 1), got {mask_ratio}")
    gh, gw = grid
    cells = gh * gw
    k = num_masked(cells, mask_ratio)
    # argsort of uniform noise is a uniformly random permutation per row; its first k are masked
    noise = torch.rand(batch, cells, generator=generator, device=device)
    rank = noise.argsort(dim=1).argsort(dim=1)  # (B, cells) rank of each cell
    return (rank < k).view(batch, gh, gw)


def cells_to_pixels(cells: torch.Tensor, mask_patch: int) -> torch.Tensor:
    """(B, gh, gw) bool -> (B, 1, gh*s, gw*s) float, 1 = masked."""
    m = cells.float().repeat_interleave(mask_patch, 1).repeat_interleave(mask_patch, 2)
    return m.unsqueeze(1)


def random_mask(
    batch: int,
    img_size: int,
    mask_patch: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Pixel mask for square images.

    Args:
        img_size: image side in px; ``mask_patch`` must divide it.
        mask_patch: cell side in px.
        mask_ratio: share of cells masked, in (0, 1).

    Returns:
        (B, 1, H, W) float, 1 = masked.
    """
    if mask_patch <= 0 or img_size % mask_patch:
        raise ConfigError(f"mask_patch: {mask_patch} px cells must divide the {img_size} px image")
    g = img_size // mask_patch
    cells = random_cell_mask(batch, (g, g), mask_ratio, generator, device)
    return cells_to_pixels(cells, mask_patch)


def apply_fill(images: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Replace masked pixels by ``fill`` (0 = the data-set mean after normalisation).

    Args:
        images: (B, C, H, W) normalised.
        mask: (B, 1, H, W), 1 = masked.
    """
    return images * (1.0 - mask) + fill * mask


def pixel_to_token_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 1, H, W) pixel mask -> (B, N) bool token mask; a token is masked when all its pixels are.

    Exact when the mask cell is a multiple of the patch (every token is fully in or out).
    """
    pooled = torch.nn.functional.avg_pool2d(mask, patch_size)  # (B, 1, H/p, W/p)
    return (pooled > 0.999).flatten(1)
