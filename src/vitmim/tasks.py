"""What the engine trains in each stage: a task makes a batch, computes the loss and evaluates.

:class:`PretrainTask`: a restorer learns to fill masked cells of training images (no labels).
:class:`FinetuneTask`: a classifier learns the labels (of the share :func:`label_subset` keeps).
The engine (:mod:`vitmim.engine`) runs either with the same loop.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vitmim import checkpoint
from vitmim.augment import augment, denormalize, mix, normalize
from vitmim.config import Config
from vitmim.data import ImageSet
from vitmim.env import Env, derive_seed
from vitmim.errors import ConfigError
from vitmim.models.restorer import (
    forward_loss,
    random_masking,
    restoration_metrics,
    restored_image,
    shown_restoration,
)

EVAL_IMAGES = 512  # validation images used for restoration metrics
GRID_IMAGES = 8  # images shown in reconstruction grids


class PretrainTask:
    """Masked-pixel restoration on training images."""

    def __init__(
        self, train_set: ImageSet, val_set: ImageSet | None, cfg: Config, env: Env, run_dir: Path
    ):
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.images = train_set.images.to(env.device)  # uint8, resident on the device
        self.n_train = len(train_set)
        held_out = val_set if val_set is not None and len(val_set) else train_set
        self.val_x = normalize(held_out.images[:EVAL_IMAGES].to(env.device))
        g = torch.Generator(device=env.device).manual_seed(derive_seed(cfg.pretrain.seed, 4))
        self.val_mask = self.mask(len(self.val_x), g)  # the same masks every epoch

    def mask(self, n: int, g: torch.Generator) -> torch.Tensor:
        return random_masking(n, self.cfg.model.img_size, self.cfg.pretrain, g, self.env.device)

    def make_batch(self, idx: torch.Tensor, g: torch.Generator):
        x = augment(self.images[idx], self.cfg.pretrain.augment, g)
        return x, self.mask(len(idx), g)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, mask = batch
        return forward_loss(model(x, mask), x, mask, self.cfg.pretrain, self.cfg.model.patch_size)

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        metrics = restoration_metrics(model, self.val_x, self.val_mask, self.cfg)
        x, m = self.val_x[:GRID_IMAGES], self.val_mask[:GRID_IMAGES]
        save_reconstruction_grid(
            self.run_dir / "images" / f"recon_epoch{epoch:03d}.png",
            x,
            m,
            restored_image(model, x, m, self.cfg),
        )
        return metrics


RECON_TILE = 128  # px per shown image: 64 px tiles are too small to judge a restoration
RECON_COLUMNS = ("original", "masked", "restored")


def save_reconstruction_grid(
    path: Path, x: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, tile: int = RECON_TILE
) -> None:
    """PNG: a title row (original | masked | restored), then one row per image, each shown at
    ``tile`` px (nearest-neighbour: the pixels stay visible). Masked cells are drawn grey;
    restored ones are :func:`~vitmim.models.restorer.shown_restoration`, the image the
    restoration figures (``val_psnr``, ``val_pixel_l1``) score.
    ``x``, ``pred``: (B, 3, H, W) normalised; ``mask``: (B, 1, H, W), 1 = masked."""
    from PIL import Image, ImageDraw, ImageFont  # on use, like every image writer here

    x, mask, pred = x.float().cpu(), mask.float().cpu(), pred.float().cpu()
    orig = denormalize(x)
    cols = [orig, orig * (1 - mask) + 0.5 * mask, shown_restoration(x, mask, pred)]
    pad, title = 4, 24
    sheet = Image.new("RGB", (3 * tile + 4 * pad, title + len(x) * (tile + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for c, (name, images) in enumerate(zip(RECON_COLUMNS, cols)):
        left = pad + c * (tile + pad)
        draw.text((left + tile // 2, title // 2), name, fill="black", font=font, anchor="mm")
        for r, img in enumerate(images):
            arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            shown = Image.fromarray(arr).resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(shown, (left, title + r * (tile + pad)))
    checkpoint.atomic_write(path, lambda p: sheet.save(p, format="png"))


# ---------------------------------------------------------------------------------------------
# label fraction: which training labels the classifier sees (fine-tuning and its baselines)


def label_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted (M,) int64 indices keeping round(fraction * n_c) (>= 1) images of each class c.

    ``labels``: (N,) int; entries < 0 (unlabelled) are never kept. The choice depends only
    on ``seed`` and the labels.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(
            f"config key data.label_fraction: expected a number in (0, 1], got {fraction}"
        )
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in torch.unique(labels).tolist():
        if c < 0:
            continue
        idx = torch.nonzero(labels == c).flatten()
        k = max(1, round(fraction * len(idx)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    if not keep:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(keep)).values.to(torch.int64)


class FinetuneTask:
    """Supervised classification with label smoothing (and optional mixup/cutmix)."""

    def __init__(self, train_set: ImageSet, val_set: ImageSet | None, cfg: Config, env: Env):
        self.cfg, self.env = cfg, env
        images, labels = train_set.images, train_set.labels
        if cfg.data.label_fraction < 1.0:  # index only when needed: a copy of 100k images is 1 GB
            keep = label_subset(labels, cfg.data.label_fraction, cfg.finetune.seed)
            images, labels = images[keep], labels[keep]
        self.images = images.to(env.device)
        self.labels = labels.to(env.device)
        self.n_train = len(labels)
        self.num_classes = len(train_set.classes)
        self.val = val_set

    def make_batch(self, idx: torch.Tensor, g: torch.Generator):
        x = augment(self.images[idx], self.cfg.finetune.augment, g)
        return mix(x, self.labels[idx], self.num_classes, self.cfg.finetune.augment)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(
            model(x).float(), y, label_smoothing=self.cfg.finetune.label_smoothing
        )

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if self.val is None:
            return {}
        return classification_metrics(model, self.val, self.env.device)


def top5_informative(num_classes: int | None) -> bool:
    """Whether top-5 accuracy tells anything: with 5 classes or fewer it is 100 % by
    construction. An unknown count (None) is given the benefit of the doubt."""
    return num_classes is None or num_classes > 5


@torch.no_grad()
def classification_metrics(
    model: nn.Module, data: ImageSet, device: torch.device, batch: int = 500
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over a labelled set."""
    model.eval()
    top1 = top5 = loss = 0.0
    for i in range(0, len(data), batch):
        x = normalize(data.images[i : i + batch].to(device))
        y = data.labels[i : i + batch].to(device)
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(1).sum().item()
    n = max(len(data), 1)
    return {"val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n, "val_loss": loss / n}
