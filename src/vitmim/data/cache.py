"""Decoding and the uint8 cache: every source is decoded once, then memory-mapped.

The cache lives under ``cache_root()/<key>/`` (``train_images.npy`` (N, 3, H, W),
``train_labels.npy`` (N,), the same for ``val``, and ``meta.json``) and is reopened with
``np.load(mmap_mode="c")``, so a second run starts in about a second and the 1.3 GB of decoded
Tiny ImageNet pixels are shared through the page cache. The key hashes the source's
fingerprint, the class selection, the image size and the resize mode; a build runs under a
file lock in a temp folder that is renamed into place, so concurrent ranks decode once and a
killed build leaves nothing that looks like a cache.

Checksums: meta.json records each .npy's size and a sha256 of a strided sample of it
(SAMPLE_BLOCKS blocks of SAMPLE_BYTES, evenly spaced from the first byte to the last; the whole
file when it is smaller than that), checked on every open; a mismatch rebuilds the cache with
one line saying so. Why a sample: a full sha256 of the 1.2 GB Tiny ImageNet train array took
3.3 s on the busy 2-core development machine, longer than the whole reopen without any check
(2.6-3.0 s there), while the sampled check of all four arrays took 70 ms. So a size change, a
damaged header or tail, and damage in any sampled block are caught; a flip between sampled
blocks of a large array is not. Arrays up to 16 MiB (every labels file, a cache of up to about
1,300 images at 64x64) are hashed whole.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vitmim.data.images import decode_image
from vitmim.data.sources import Plan, Tree, tree_for
from vitmim.errors import DataError, UserError, fold_lines
from vitmim.lifetime import die_with_parent

CACHE_VERSION = 2  # bump when the cache layout or decoding changes
CHUNK = 500  # images per decode task: small enough for a smooth progress bar
MIN_PARALLEL = 2000  # below this many images, worker start-up costs more than it saves
MAX_WORKERS = 8
SAMPLE_BLOCKS = 256  # blocks hashed per .npy on each open (see the module docstring)
SAMPLE_BYTES = 64 << 10


@dataclass
class ImageSet:
    """Decoded images of one split.

    ``images``: (N, 3, H, W) uint8 on the CPU, usually a copy-on-write memory map of the cache
    file (writes stay private to the process). ``labels``: (N,) int64, -1 when unlabelled.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]  # class ids in label order (wnids for TIN, folder names otherwise)
    class_names: list[str]  # human-readable names (first synonym in words.txt, else the ids)
    fingerprint: str  # hex digest of source + class selection + image size + split

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ---------------------------------------------------------------------------------------------
# paths


def cache_root(cache_dir: str | None = None) -> Path:
    """``cache_dir``, else ``$VITMIM_CACHE``, else ``~/.cache/vitmim``."""
    raw = cache_dir or os.environ.get("VITMIM_CACHE") or "~/.cache/vitmim"
    return Path(raw).expanduser()


# ---------------------------------------------------------------------------------------------
# decoding


def _decode(data: bytes, target: tuple[int, str], name: str) -> tuple[np.ndarray, bool]:
    """Encoded bytes -> ((3, S, S) uint8 RGB, resized?) for ``target`` = (S, resize mode)."""
    size, resize = target
    return decode_image(data, size, resize, name)


def _decode_into(
    tree: Tree, out_path: str, start: int, rels: list[str], target: tuple[int, str]
) -> tuple[int, str | None]:
    """Decode ``rels`` into rows ``start...`` of the .npy at ``out_path``.

    Returns (how many were resized, the error message or None).
    """
    out = np.load(out_path, mmap_mode="r+")
    resized = 0
    try:
        for i, rel in enumerate(rels):
            out[start + i], changed = _decode(tree.read(rel), target, tree.display(rel))
            resized += changed
    except UserError as e:
        return resized, str(e)
    finally:
        out.flush()
        del out
    return resized, None


def _worker(task: tuple) -> tuple[int, int, str | None]:
    spec, out_path, start, rels, target = task
    try:
        return len(rels), *_decode_into(tree_for(spec), out_path, start, rels, target)
    except UserError as e:
        return len(rels), 0, str(e)


def _n_workers(n_images: int) -> int:
    if n_images < MIN_PARALLEL:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def _mp_context() -> mp.context.BaseContext:
    # fork starts in milliseconds and the workers only use PIL and numpy (no torch threads);
    # elsewhere the platform default (spawn) re-imports this module, which also works.
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context()


def _decode_all(
    tree: Tree, jobs: list[tuple[str, list[str]]], target: tuple[int, str], progress: bool
) -> int:
    """Decode each (out .npy path, files) job; return how many images were resized.

    Raises UserError on the first bad image.
    """
    tasks = [
        (tree.spec, out, s, files[s : s + CHUNK], target)
        for out, files in jobs
        for s in range(0, len(files), CHUNK)
    ]
    total = sum(len(f) for _, f in jobs)
    workers = _n_workers(total)
    resized = 0
    if workers == 1:
        with _bar(total, progress) as bar:
            for _, out, s, rels, _ in tasks:
                changed, err = _decode_into(tree, out, s, rels, target)
                if err:
                    raise DataError(err)
                resized += changed
                bar.update(len(rels))
        return resized
    # Workers start before the progress bar's monitor thread exists; a dead worker (OOM kill)
    # surfaces as BrokenProcessPool instead of a hang.
    ex = ProcessPoolExecutor(
        workers, mp_context=_mp_context(), initializer=die_with_parent, initargs=(os.getpid(),)
    )
    ok = False
    try:
        futures = [ex.submit(_worker, t) for t in tasks]
        with _bar(total, progress) as bar:
            for fut in as_completed(futures):
                n, changed, err = fut.result()
                if err:
                    raise DataError(err)
                resized += changed
                bar.update(n)
        ok = True
    finally:
        ex.shutdown(wait=ok, cancel_futures=not ok)
    return resized


def _bar(total: int, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        desc="decoding images",
        unit="img",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )


# ---------------------------------------------------------------------------------------------
# the cache


def _cache_key(tree: Tree, plan: Plan, target: tuple[int, str]) -> str:
    size, resize = target
    desc = {
        "version": CACHE_VERSION,
        "tree": tree.fingerprint(),
        "kind": plan.kind,
        "root": plan.root,
        "classes": plan.classes,
        "img_size": size,
        "resize": resize,
    }
    if plan.held_out is not None:  # only then: the keys of existing caches stay as they were
        desc["held_out"] = list(plan.held_out)
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24]


def _split_fingerprint(key: str, split: str) -> str:
    return hashlib.sha256(f"{key}:{split}".encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` while building, so concurrent ranks do not decode twice.

    The OS drops the lock when its holder dies (its decoder workers die with it), so a killed
    build never blocks the next one; a wait says whom it waits for.
    """
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            print(
                f"{path.parent}: waiting for process {holder}, which is building this data "
                f"cache (lock {path.name})",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(f, fcntl.LOCK_EX)
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open_split(d: Path, split: str, meta: dict) -> ImageSet:
    n = meta["counts"][split]
    # "c" = copy-on-write: writeable (no torch warning), shared pages, the file is never changed.
    images = np.load(d / f"{split}_images.npy", mmap_mode="c")
    labels = np.load(d / f"{split}_labels.npy")
    s = meta["img_size"]
    if images.shape != (n, 3, s, s) or images.dtype != np.uint8 or labels.shape != (n,):
        raise ValueError(f"{d}: {split} arrays do not match meta.json")
    return ImageSet(
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64)),
        list(meta["classes"]),
        list(meta["class_names"]),
        meta["fingerprints"][split],
    )


def _sample_digest(path: Path) -> str:
    """sha256 of SAMPLE_BLOCKS evenly spaced blocks of ``path`` (all of it when small)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
            h.update(f.read())
        else:
            for i in range(SAMPLE_BLOCKS):
                f.seek(i * (size - SAMPLE_BYTES) // (SAMPLE_BLOCKS - 1))
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _checksums(d: Path) -> dict[str, list]:
    """{file name: [size in bytes, sampled sha256]} for every .npy in ``d``."""
    return {p.name: [p.stat().st_size, _sample_digest(p)] for p in sorted(d.glob("*.npy"))}


def _damaged(d: Path, meta: dict) -> str | None:
    """The first .npy whose size or sampled sha256 differs from meta.json, else None."""
    for name, (size, digest) in meta["checksums"].items():
        p = d / name
        if p.stat().st_size != size or _sample_digest(p) != digest:
            return name
    return None


def _open_cache(d: Path, say: bool = False) -> tuple[ImageSet, ImageSet | None] | None:
    """The cached splits, or None when ``d`` is absent, damaged or not a complete cache of this
    version; ``say``: print one line when it is damaged (the caller rebuilds it)."""
    try:
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        bad = _damaged(d, meta)
        if bad:
            if say:
                print(
                    f"{d}: {bad} does not match its checksum; rebuilding the cache", file=sys.stderr
                )
            return None
        train = _open_split(d, "train", meta)
        val = _open_split(d, "val", meta) if meta["counts"].get("val") is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return train, val


def _alloc_npy(path: Path, shape: tuple[int, ...]) -> None:
    """Create a uint8 .npy of ``shape`` with its disk blocks reserved.

    Reserving up front turns a full disk into an OSError here instead of a SIGBUS when a
    worker later writes into the memory map.
    """
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    del arr  # workers reopen it by path
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # e.g. tmpfs: no reservation
                raise
        finally:
            os.close(fd)


def _write_cache(
    tree: Tree, plan: Plan, key: str, tmp: Path, target: tuple[int, str], progress: bool
) -> int:
    """Decode every image of ``plan`` into the empty folder ``tmp``; return how many resized."""
    img_size, resize = target
    splits = {"train": plan.train, "val": plan.val}
    jobs = []
    for name, sp in splits.items():
        if sp is None:
            continue
        out = tmp / f"{name}_images.npy"
        _alloc_npy(out, (len(sp.files), 3, img_size, img_size))
        np.save(tmp / f"{name}_labels.npy", sp.labels)
        jobs.append((str(out), sp.files))
    resized = _decode_all(tree, jobs, target, progress)
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "source": tree.display(plan.root),
        "kind": plan.kind,
        "img_size": img_size,
        "resize": resize,
        "resized": resized,
        "held_out": plan.held_out,
        "classes": plan.classes,
        "class_names": plan.class_names,
        "counts": {k: (None if v is None else len(v.files)) for k, v in splits.items()},
        "fingerprints": {k: _split_fingerprint(key, k) for k in splits},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checksums": _checksums(tmp),
    }
    # meta.json last: a folder without it is never taken for a cache.
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return resized


def _build_cache(
    tree: Tree, plan: Plan, key: str, final: Path, target: tuple[int, str], progress: bool
) -> None:
    """Build in a temp folder beside ``final`` and rename it into place (atomic)."""
    root = final.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{key}.lock"):
            _build_locked(tree, plan, key, final, target, progress)
    except OSError as e:  # read-only or full disk: the user's to fix
        raise DataError(
            f"{root}: cannot write the data cache ({fold_lines(e.strerror or e)}); "
            "free space or set data.cache_dir / VITMIM_CACHE"
        ) from None


def _build_locked(
    tree: Tree, plan: Plan, key: str, final: Path, target: tuple[int, str], progress: bool
) -> None:
    """Build under the lock: reuse a finished cache, clear debris, decode, rename."""
    root = final.parent
    if _open_cache(final) is not None:  # another process finished it while we waited
        return
    # We hold the lock, so any temp folder of this key is left over from a killed build.
    for stale in root.glob(f".tmp-{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():  # incomplete or of another version: replace
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        resized = _write_cache(tree, plan, key, tmp, target, progress)
        try:
            os.rename(tmp, final)
        except OSError:  # without a lock (no fcntl) another process may have won
            if _open_cache(final) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = len(plan.train.files) + (len(plan.val.files) if plan.val else 0)
    if plan.held_out is not None and plan.val is not None:
        fraction, seed = plan.held_out
        print(
            f"validation: {len(plan.val.files):,} of {total:,} images held out "
            f"(data.val_fraction={fraction:g}, data.split_seed={seed}; no val/ folder)",
            file=sys.stderr,
        )
    if resized:
        size, resize = target
        print(
            f"resized {resized:,} of {total:,} images to {size}x{size} ({resize})", file=sys.stderr
        )


def split_fingerprint(tree: Tree, plan: Plan, target: tuple[int, str], split: str = "train") -> str:
    """The fingerprint ``split`` of ``plan`` will have (:attr:`ImageSet.fingerprint`), known
    without decoding an image: what a record of a finished run is compared with."""
    return _split_fingerprint(_cache_key(tree, plan, target), split)


def cached_splits(
    tree: Tree, plan: Plan, target: tuple[int, str], root: Path, progress: bool
) -> tuple[ImageSet, ImageSet | None]:
    """(train, val) of ``plan`` from its cache under ``root``, building it first if needed.

    ``target``: (image side in px, resize mode of :mod:`vitmim.data.images`).
    """
    key = _cache_key(tree, plan, target)
    final = root / key
    opened = _open_cache(final, say=True)
    if opened is None:
        _build_cache(tree, plan, key, final, target, progress)
        opened = _open_cache(final)
        if opened is None:
            raise DataError(
                f"{final}: cache could not be read back after building; delete the folder and retry"
            )
    return opened
