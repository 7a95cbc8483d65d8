"""Image data: Tiny ImageNet (zip or folder), class-per-folder sets and unlabelled folders.

``sources`` lists what a folder or zip holds and which files form each split, ``images`` turns
one file into img_size x img_size RGB (any mode, any size: ``data.resize``), ``cache`` decodes
every file once into a memory-mapped uint8 cache, ``archive`` downloads and packs archives.
This module is the public API: :func:`load_splits` ties them together.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitmim.config import DataConfig
from vitmim.data.archive import (
    OFFICIAL_URL,
    default_download_path,
    download,
    pack,
    resolve_data_path,
)
from vitmim.data.cache import ImageSet, cache_root, cached_splits
from vitmim.data.images import BACKGROUND, RESIZE_MODES, decode_image
from vitmim.data.sources import ARCHIVE_NAME, IMAGE_EXTS, one_line, open_tree, plan_source
from vitmim.errors import UserError

__all__ = ["ARCHIVE_NAME", "BACKGROUND", "IMAGE_EXTS", "OFFICIAL_URL", "RESIZE_MODES",
           "ImageSet", "cache_root", "decode_image", "default_download_path", "download",
           "label_subset", "load_images", "load_splits", "pack", "resolve_data_path"]

# data.resize = auto: Tiny ImageNet images are all 64x64, so another size there is a damaged
# copy or a wrong model.img_size and is refused; other sources come in any size.
AUTO_RESIZE = {"tin": "error", "folder": "fit", "unlabelled": "fit"}


def load_splits(cfg: DataConfig, img_size: int = 64,
                progress: bool = True) -> tuple[ImageSet, ImageSet | None]:
    """(train, val) for ``cfg``, decoded once into the cache and memory-mapped from it.

    Applies the class selection (labels 0..K-1 in the order of the selected classes), not
    ``label_fraction``. ``val`` is None for an unlabelled source or a folder set without val/.
    Images are (N, 3, img_size, img_size) uint8, brought to that size by ``cfg.resize``
    (see :mod:`vitmim.data.images`) when the cache is built.
    """
    if img_size <= 0:
        raise UserError(f"model.img_size: expected a positive size, got {img_size}")
    path = resolve_data_path(cfg.path, cfg.cache_dir)
    tree = open_tree(path)
    plan = plan_source(tree, cfg)
    resize = cfg.resize if cfg.resize != "auto" else AUTO_RESIZE[plan.kind]
    return cached_splits(tree, plan, (img_size, resize), cache_root(cfg.cache_dir), progress)


# ---------------------------------------------------------------------------------------------
# label fraction: which training labels the classifier sees


def label_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted (M,) int64 indices keeping round(fraction * n_c) (>= 1) images of each class c.

    ``labels``: (N,) int; entries < 0 (unlabelled) are never kept. The choice depends only
    on ``seed`` and the labels.
    """
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"config key data.label_fraction: expected a number in (0, 1], "
                        f"got {fraction}")
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


# ---------------------------------------------------------------------------------------------
# single image files (predict, reconstruct)


def load_images(paths: list[str | Path], img_size: int = 64,
                resize: str = "crop") -> torch.Tensor:
    """(N, 3, img_size, img_size) uint8 RGB from image files (for predict / reconstruct).

    Decoded like the cache (every mode to RGB, EXIF orientation); an image of another size is
    brought to img_size by ``resize`` (default: shorter side scaled, centre crop).
    """
    out = torch.empty((len(paths), 3, img_size, img_size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        p = Path(p).expanduser()
        if not p.is_file():
            raise UserError(f"{p}: image not found" + (" (a folder)" if p.is_dir() else ""))
        try:
            data = p.read_bytes()
        except OSError as e:
            raise UserError(f"{p}: cannot read ({one_line(e.strerror or e)})") from None
        out[i] = torch.from_numpy(decode_image(data, img_size, resize, str(p))[0].copy())
    return out
