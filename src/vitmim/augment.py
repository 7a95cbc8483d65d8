"""Batched augmentation on the compute device, driven by an explicit generator.

All random draws come from the ``torch.Generator`` passed in (or from the global RNG, which the
engine reseeds every step), so a batch is a pure function of (seed, epoch, step): this is what
makes resumption after a kill bit-exact without saving any data-loader state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitmim.config import AugmentConfig

# ImageNet statistics (Tiny ImageNet is drawn from ImageNet); 0 after normalisation = mean colour
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 normalised."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Normalised (B, 3, H, W) -> float in [0, 1] for display."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Reflect-pad by ``pad`` px and cut a random H x W window per image. (B, C, H, W)."""
    b, _, h, w = x.shape
    xp = F.pad(x.float() if not x.is_floating_point() else x, (pad,) * 4, mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g, device=g.device).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=g, device=g.device).to(x.device)
    rows = oy + torch.arange(h, device=x.device)  # (B, H)
    cols = ox + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).to(x.dtype).contiguous()


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g, device=g.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Training augmentation of a uint8 batch. (B, 3, H, W) uint8 -> (B, 3, H, W) normalised."""
    from torchvision.transforms import v2  # imported on use: it pulls in torch._dynamo (~3 s)
    if cfg.trivial_augment:
        ta = v2.TrivialAugmentWide()
        x = torch.stack([ta(img) for img in x])  # per image: each draws its own op
    if cfg.crop_pad:
        x = random_crop(x, cfg.crop_pad, g)
    if cfg.flip:
        x = random_flip(x, g)
    x = normalize(x)
    if cfg.erasing > 0:
        erase = v2.RandomErasing(p=cfg.erasing, value=0)
        x = torch.stack([erase(img) for img in x])
    return x


def mix(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: AugmentConfig
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp / CutMix (torchvision's, one of them per batch) when enabled.

    Args:
        y: (B,) int64 labels.
    Returns:
        images and (B, classes) soft targets, so every batch has the same target type.
    """
    from torchvision.transforms import v2
    ops = []
    if cfg.mixup > 0:
        ops.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        ops.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    if not ops:
        return x, F.one_hot(y, num_classes).float()
    return v2.RandomChoice(ops)(x, y)
