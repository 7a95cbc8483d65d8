"""Image data: Tiny ImageNet (zip or folder), class-per-folder sets and unlabelled folders.

``sources`` lists what a folder or zip holds and which files form each split, ``images`` turns
one file into img_size x img_size RGB (any mode, any size: ``data.resize``), ``cache`` decodes
every file once into a memory-mapped uint8 cache, ``archive`` downloads and packs archives.
This module is the public API: :func:`load_splits` ties them together.
"""

from __future__ import annotations

import functools
from pathlib import Path

from vitmim.config import DataConfig
from vitmim.data.archive import (
    OFFICIAL_URL,
    default_download_path,
    download,
    pack,
    resolve_data_path,
)
from vitmim.data.cache import ImageSet, cache_root, cached_splits, split_fingerprint
from vitmim.data.images import BACKGROUND, RESIZE_MODES, decode_image
from vitmim.data.sources import (
    ARCHIVE_NAME,
    IMAGE_EXTS,
    default_classes,
    detect,
    open_tree,
    plan_source,
)
from vitmim.errors import DataError

__all__ = [
    "ARCHIVE_NAME",
    "AUTO_RESIZE",
    "BACKGROUND",
    "IMAGE_EXTS",
    "OFFICIAL_URL",
    "RESIZE_MODES",
    "ImageSet",
    "cache_root",
    "decode_image",
    "default_classes",
    "default_download_path",
    "download",
    "load_splits",
    "pack",
    "resolve_data_path",
    "source_kind",
    "train_count",
    "train_fingerprint",
]

# data.resize = auto: Tiny ImageNet images are all 64x64, so another size there is a damaged
# copy or a wrong model.img_size and is refused; other sources come in any size.
AUTO_RESIZE = {"tin": "error", "folder": "fit", "unlabelled": "fit"}


def source_kind(cfg: DataConfig) -> str:
    """``tin``, ``folder`` or ``unlabelled``: what ``cfg`` reads (files listed, none decoded)."""
    return detect(open_tree(resolve_data_path(cfg.path, cfg.cache_dir)), cfg)[0]


NEEDS_LABELS = (
    "holds images but no class folders; {what} needs labels: arrange them as "
    "<class>/<image> (or train/<class>/ and val/<class>/) and pass that folder"
)


def load_splits(
    cfg: DataConfig, img_size: int = 64, progress: bool = True, labelled: str | None = None
) -> tuple[ImageSet, ImageSet | None]:
    """(train, val) for ``cfg``, decoded once into the cache and memory-mapped from it.

    Applies the class selection (labels 0..K-1 in the order of the selected classes), not
    ``label_fraction``. A source without a val split holds out ``cfg.val_fraction`` of its
    images; ``val`` is None only when that is 0. Images are (N, 3, img_size, img_size) uint8,
    brought to that size by ``cfg.resize`` (see :mod:`vitmim.data.images`) when the cache is
    built. ``labelled``: the command that needs labels (``"fine-tuning"``); an unlabelled
    source is then refused before any image is decoded.
    """
    tree, plan, target = _source(cfg, img_size)
    if labelled and plan.kind == "unlabelled":
        raise DataError(f"{tree.display('')}: {NEEDS_LABELS.format(what=labelled)}")
    return cached_splits(tree, plan, target, cache_root(cfg.cache_dir), progress)


def train_fingerprint(cfg: DataConfig, img_size: int = 64) -> str:
    """The fingerprint :func:`load_splits` gives the train split, from the file listing alone
    (no image is decoded): cheap enough to check every finished run a grid reuses."""
    return split_fingerprint(*_source(cfg, img_size, _opened))


def train_count(cfg: DataConfig, img_size: int = 64) -> int:
    """How many images the train split of ``cfg`` holds, from the file listing alone."""
    return len(_source(cfg, img_size, _opened)[1].train.files)


def _opened(path: Path):
    """:func:`open_tree`, an archive once per file state: listing a 120,000-image zip takes
    seconds, and a grid asks for the same source once per cell. (A folder is listed each time:
    its own mtime does not change when a file deeper down does.)"""
    if not path.is_file():
        return open_tree(path)
    st = path.stat()
    return _open_memo(path, (st.st_mtime_ns, st.st_size, st.st_ino))


@functools.lru_cache(maxsize=4)
def _open_memo(path: Path, state) -> object:
    return open_tree(path)


def _source(cfg: DataConfig, img_size: int, opener=open_tree) -> tuple:
    """(tree, plan, (img_size, resize mode)) of ``cfg``: what the cache is keyed by."""
    if img_size <= 0:
        raise DataError(f"model.img_size: expected a positive size, got {img_size}")
    tree = opener(resolve_data_path(cfg.path, cfg.cache_dir))
    plan = plan_source(tree, cfg)
    resize = cfg.resize if cfg.resize != "auto" else AUTO_RESIZE[plan.kind]
    return tree, plan, (img_size, resize)
