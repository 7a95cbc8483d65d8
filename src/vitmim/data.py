"""Image data: Tiny ImageNet (zip or folder), class-per-folder sets and unlabelled folders.

Every source is decoded once into a file-backed uint8 cache under ``cache_root()/<key>/``
(``train_images.npy`` (N, 3, H, W), ``train_labels.npy`` (N,), the same for ``val``, and
``meta.json``) and reopened with ``np.load(mmap_mode="c")``, so a second run starts in about a
second and the 1.3 GB of decoded Tiny ImageNet pixels are shared through the page cache.

Sources (``DataConfig.source``):

- ``tin``: the official Tiny ImageNet layout, as the zip or an extracted folder (``wnids.txt``,
  ``words.txt``, ``train/<wnid>/images/*.JPEG``, ``val/val_annotations.txt``,
  ``val/images/*.JPEG``); ``test/`` is ignored. What :func:`pack` writes is in this layout.
- ``folder``: ``train/<class>/**/*.jpg|png|...`` and optionally ``val/<class>/**/*``.
- ``unlabelled``: every image under the folder (recursively); labels are -1 and there is no val.
- ``auto``: ``wnids.txt`` -> tin, a ``train/`` folder -> folder, else unlabelled.

Zip archives are never extracted: members are read into memory one at a time, so a hostile
member name cannot write anywhere (zip-slip) and oversized members are refused (zip bombs).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import io
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from vitmim.config import DataConfig
from vitmim.errors import UserError

OFFICIAL_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE_NAME = "tiny-imagenet-200.zip"
CACHE_VERSION = 1  # bump when the cache layout or decoding changes
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                        ".ppm", ".pgm"})
MAX_MEMBER_BYTES = 64 << 20  # a larger zip member (image or text file) is refused: zip-bomb guard
MAX_ARCHIVE_BYTES = 64 << 30  # sum of uncompressed member sizes we accept in one archive
CHUNK = 500  # images per decode task: small enough for a smooth progress bar
MIN_PARALLEL = 2000  # below this many images, worker start-up costs more than it saves
MAX_WORKERS = 8
PACK_QUALITY = 95  # JPEG quality of packed images (4:4:4): a few grey levels off the source


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


def default_download_path(cache_dir: str | None = None) -> Path:
    """Where ``vitmim data download`` puts the official archive."""
    return cache_root(cache_dir) / ARCHIVE_NAME


def resolve_data_path(path: str | None, cache_dir: str | None = None) -> Path:
    """``path`` (--data), else ``$VITMIM_DATA``, else the default download location."""
    raw = path or os.environ.get("VITMIM_DATA")
    p = Path(raw).expanduser() if raw else default_download_path(cache_dir)
    if not p.exists():
        raise UserError(f"{p}: data not found; pass --data, set VITMIM_DATA, "
                        "or run `vitmim data download`")
    return p


# ---------------------------------------------------------------------------------------------
# a read-only file tree: a folder or a zip archive


def _visible(rel: str) -> bool:
    """False for hidden files/folders and macOS zip debris, which are never data."""
    return "/." not in "/" + rel and "__MACOSX" not in rel  # string ops: runs 100k times


def _is_image(rel: str) -> bool:
    ext = rel[rel.rfind("."):].lower()
    return ext in IMAGE_EXTS and "/" not in ext and _visible(rel)


class _Tree:
    """Files by relative POSIX path, read into memory; ``spec`` reopens it in a worker."""

    spec: tuple[str, str]

    @property
    def files(self) -> list[str]:
        raise NotImplementedError

    @property
    def dirs(self) -> set[str]:
        raise NotImplementedError

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def display(self, rel: str) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def has_file(self, rel: str) -> bool:
        return rel in self._file_set

    def listdir(self, prefix: str) -> tuple[set[str], set[str]]:
        """(child folder names, child file names) directly under ``prefix`` ("" or "a/b/")."""
        memo = self.__dict__.setdefault("_listdir_memo", {})
        if prefix not in memo:
            memo[prefix] = self._listdir(prefix)
        return memo[prefix]

    def _listdir(self, prefix: str) -> tuple[set[str], set[str]]:
        dirs: set[str] = set()
        files: set[str] = set()
        for rel in self.files:
            if rel.startswith(prefix):
                head, sep, _ = rel[len(prefix):].partition("/")
                (dirs if sep else files).add(head)
        for d in self.dirs:
            if d.startswith(prefix) and len(d) > len(prefix):
                dirs.add(d[len(prefix):].partition("/")[0])
        return dirs, files

    @property
    def _file_set(self) -> set[str]:
        if getattr(self, "_fs", None) is None:
            self._fs = set(self.files)
        return self._fs


class _DirTree(_Tree):
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.spec = ("dir", str(self.root))
        self._files: list[str] | None = None  # listed lazily: workers only read
        self._stats: dict[str, tuple[int, int]] = {}
        self._dirs: set[str] = set()

    def _walk(self) -> None:
        files = []
        for d, dnames, fnames in os.walk(self.root, followlinks=True):
            rel_d = os.path.relpath(d, self.root).replace(os.sep, "/")
            rel_d = "" if rel_d == "." else rel_d + "/"
            self._dirs.update(rel_d + n for n in dnames)
            for n in fnames:
                rel = rel_d + n
                with contextlib.suppress(OSError):  # a dangling link is not data
                    st = os.stat(os.path.join(d, n))
                    self._stats[rel] = (st.st_size, st.st_mtime_ns)
                    files.append(rel)
        self._files = sorted(files)

    @property
    def files(self) -> list[str]:
        if self._files is None:
            self._walk()
        return self._files

    @property
    def dirs(self) -> set[str]:
        if self._files is None:
            self._walk()
        return self._dirs

    def read(self, rel: str) -> bytes:
        try:
            return (self.root / rel).read_bytes()
        except OSError as e:
            raise UserError(f"{self.display(rel)}: cannot read ({e.strerror or e})") from None

    def display(self, rel: str) -> str:
        return str(self.root / rel) if rel else str(self.root)

    def fingerprint(self) -> str:
        # Paths, sizes and mtimes: an edited or replaced file gives a new cache.
        h = hashlib.sha256(b"dir\n")
        for rel in self.files:
            size, mtime = self._stats[rel]
            h.update(f"{rel}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()


class _ZipTree(_Tree):
    def __init__(self, path: Path):
        self.path = path.resolve()
        self.spec = ("zip", str(self.path))
        try:
            self.zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise UserError(f"{path}: not a readable zip archive ({_one_line(e)})") from None
        self._infos = {}
        self._dirs = set()
        total = 0
        for info in self.zf.infolist():
            name = info.filename
            # Names that could escape a target folder are never data; skip rather than trust.
            if name.startswith("/") or "\\" in name or ".." in name.split("/"):
                continue
            if info.is_dir():
                self._dirs.add(name.rstrip("/"))
                continue
            total += info.file_size
            self._infos[name] = info
        if total > MAX_ARCHIVE_BYTES:
            raise UserError(f"{path}: archive expands to {total / 2**30:.1f} GiB, more than the "
                            f"{MAX_ARCHIVE_BYTES >> 30} GiB accepted (zip bomb?)")
        self._files = sorted(self._infos)

    @property
    def files(self) -> list[str]:
        return self._files

    @property
    def dirs(self) -> set[str]:
        return self._dirs

    def read(self, rel: str) -> bytes:
        info = self._infos.get(rel) or self.zf.getinfo(rel)
        if info.file_size > MAX_MEMBER_BYTES:
            raise UserError(f"{self.display(rel)}: member expands to {info.file_size} bytes, "
                            f"more than the {MAX_MEMBER_BYTES} accepted (zip bomb?)")
        try:
            return self.zf.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                NotImplementedError) as e:
            raise UserError(f"{self.display(rel)}: unreadable zip member ({_one_line(e)}); "
                            "the archive may be truncated or corrupt") from None

    def display(self, rel: str) -> str:
        return f"{self.path}:{rel}" if rel else str(self.path)

    def fingerprint(self) -> str:
        # Names + CRCs + sizes, not the archive bytes: path-independent, cheap (no data read),
        # and the stored and the deflated archive of the same images share one cache.
        h = hashlib.sha256(b"zip\n")
        body = "\n".join(f"{n}\0{i.CRC}\0{i.file_size}" for n, i in self._infos.items())
        h.update(body.encode())
        return h.hexdigest()


def _open_tree(path: Path) -> _Tree:
    if path.is_dir():
        return _DirTree(path)
    if not path.is_file():
        raise UserError(f"{path}: data not found; pass --data, set VITMIM_DATA, "
                        "or run `vitmim data download`")
    if not zipfile.is_zipfile(path):  # also what a truncated download looks like
        raise UserError(f"{path}: not a zip archive (or a truncated one); expected "
                        f"{ARCHIVE_NAME}, a packed subset, or a folder")
    return _ZipTree(path)


_WORKER_TREE: tuple[tuple[str, str], int, _Tree] | None = None


def _tree_for(spec: tuple[str, str]) -> _Tree:
    """The tree for ``spec`` opened by this process (a forked zip handle shares its offset)."""
    global _WORKER_TREE
    if _WORKER_TREE is None or _WORKER_TREE[:2] != (spec, os.getpid()):
        kind, path = spec
        tree = _DirTree(Path(path)) if kind == "dir" else _ZipTree(Path(path))
        _WORKER_TREE = (spec, os.getpid(), tree)
    return _WORKER_TREE[2]


# ---------------------------------------------------------------------------------------------
# listing a source: which files, which labels


@dataclass
class _Split:
    files: list[str]  # tree-relative paths
    labels: np.ndarray  # (N,) int64


@dataclass
class _Plan:
    kind: str
    root: str  # tree prefix of the data set ("" or "top/")
    classes: list[str]
    class_names: list[str]
    train: _Split
    val: _Split | None


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_text(tree: _Tree, rel: str) -> str:
    try:
        return tree.read(rel).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{tree.display(rel)}: not UTF-8 text") from None


def _find_root(tree: _Tree, markers: tuple[str, ...]) -> str:
    """Prefix of the data set: descend single wrapping folders (``tiny-imagenet-200/``)."""
    prefix = ""
    for _ in range(4):
        dirs, files = tree.listdir(prefix)
        if any(m in dirs or m in files for m in markers):
            return prefix
        dirs = {d for d in dirs if _visible(d)}
        if len(dirs) != 1 or any(_visible(f) for f in files):
            break
        prefix += dirs.pop() + "/"
    return ""


def _select_classes(ids: list[str], cfg: DataConfig, where: str) -> list[str]:
    """Apply ``cfg.classes`` / ``cfg.class_seed`` to the ordered class ids of the source."""
    sel = cfg.classes
    if sel is None:
        return list(ids)
    if isinstance(sel, int):
        if sel <= 0 or sel > len(ids):
            raise UserError(f"config key data.classes: asked for {sel} classes, but {where} "
                            f"has {len(ids)}")
        if cfg.class_seed is None:
            return ids[:sel]
        # Keep the drawn classes in source order, so the set (not the draw order) is what counts.
        picked = sorted(random.Random(cfg.class_seed).sample(range(len(ids)), sel))
        return [ids[i] for i in picked]
    known = set(ids)
    for c in sel:
        if c not in known:
            raise UserError(f"config key data.classes: unknown class id {c!r} (not in {where})")
    if len(set(sel)) != len(sel):
        raise UserError(f"config key data.classes: class ids repeat in {sel}")
    if not sel:
        raise UserError("config key data.classes: empty list; give ids, a count, or null")
    return list(sel)


def _words(tree: _Tree, rel: str, wanted: set[str]) -> dict[str, str]:
    """wnid -> first synonym from words.txt (optional file)."""
    if not tree.has_file(rel):
        return {}
    names = {}
    for line in _read_text(tree, rel).splitlines():
        wnid, _, words = line.partition("\t")
        if wnid in wanted:
            names[wnid] = words.split(",")[0].strip() or wnid
    return names


def _plan_tin(tree: _Tree, root: str, cfg: DataConfig) -> _Plan:
    wn = root + "wnids.txt"
    if not tree.has_file(wn):
        raise UserError(f"{tree.display(wn)}: not found; expected the Tiny ImageNet layout "
                        "(wnids.txt, words.txt, train/, val/)")
    wnids = [w.strip() for w in _read_text(tree, wn).splitlines() if w.strip()]
    if not wnids:
        raise UserError(f"{tree.display(wn)}: no class ids (expected one wnid a line)")
    if len(set(wnids)) != len(wnids):
        raise UserError(f"{tree.display(wn)}: a class id appears twice")
    classes = _select_classes(wnids, cfg, tree.display(wn))
    names = _words(tree, root + "words.txt", set(classes))
    index = {c: i for i, c in enumerate(classes)}
    per_class: dict[str, list[str]] = {c: [] for c in classes}
    tp = root + "train/"
    for rel in tree.files:
        if rel.startswith(tp):
            parts = rel[len(tp):].split("/")
            if len(parts) == 3 and parts[1] == "images" and parts[0] in index \
                    and _is_image(parts[2]):
                per_class[parts[0]].append(rel)
    for c, fs in per_class.items():
        if not fs:
            raise UserError(f"{tree.display(tp + c + '/images')}: no images "
                            "(missing or empty class folder)")
    train = _Split([f for c in classes for f in per_class[c]],
                   np.concatenate([np.full(len(per_class[c]), index[c], np.int64)
                                   for c in classes]))
    # No val/ at all (e.g. a pack of train only) -> no val split; val/ without its
    # annotations is a broken copy and an error.
    has_val = "val" in tree.listdir(root)[0]
    val = _plan_tin_val(tree, root, set(wnids), index) if has_val else None
    return _Plan("tin", root, classes, [names.get(c, c) for c in classes], train, val)


def _plan_tin_val(tree: _Tree, root: str, wnids: set[str], index: dict[str, int]) -> _Split:
    ann = root + "val/val_annotations.txt"
    if not tree.has_file(ann):
        raise UserError(f"{tree.display(ann)}: not found; expected lines "
                        "'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1'")
    files, labels = [], []
    for no, line in enumerate(_read_text(tree, ann).splitlines(), 1):
        if not line.strip():
            continue
        # Tab-separated as in the official file; any whitespace when there is no tab.
        fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise UserError(f"{tree.display(ann)}:{no}: expected 'file<TAB>wnid<TAB>box...', "
                            f"got {line.strip()[:80]!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in wnids:
            raise UserError(f"{tree.display(ann)}:{no}: class {wnid!r} is not in wnids.txt")
        if wnid not in index:
            continue
        rel = root + "val/images/" + name
        if not tree.has_file(rel):
            raise UserError(f"{tree.display(ann)}:{no}: image {name} not found in val/images")
        files.append(rel)
        labels.append(index[wnid])
    return _Split(files, np.asarray(labels, np.int64))


def _class_files(tree: _Tree, prefix: str, classes: list[str]) -> dict[str, list[str]]:
    """Images anywhere under ``prefix + class + "/"`` for each class."""
    out: dict[str, list[str]] = {c: [] for c in classes}
    for rel in tree.files:
        if rel.startswith(prefix) and _is_image(rel):
            head, sep, _ = rel[len(prefix):].partition("/")
            if sep and head in out:
                out[head].append(rel)
    return out


def _plan_folder(tree: _Tree, root: str, cfg: DataConfig) -> _Plan:
    tp = root + "train/"
    found = sorted(d for d in tree.listdir(tp)[0] if _visible(d))
    if not found:
        raise UserError(f"{tree.display(tp)}: no class folders (expected train/<class>/<image>)")
    classes = _select_classes(found, cfg, tree.display(tp))
    index = {c: i for i, c in enumerate(classes)}
    per_class = _class_files(tree, tp, classes)
    for c, fs in per_class.items():
        if not fs:
            raise UserError(f"{tree.display(tp + c)}: no images (empty class folder)")
    train = _Split([f for c in classes for f in per_class[c]],
                   np.asarray([index[c] for c in classes for _ in per_class[c]], np.int64))
    val = None
    vp = root + "val/"
    if "val" in tree.listdir(root)[0]:
        for d in sorted(x for x in tree.listdir(vp)[0] if _visible(x)):
            if d not in found:
                raise UserError(f"{tree.display(vp + d)}: class folder {d!r} is not in train/")
        vfiles = _class_files(tree, vp, classes)
        val = _Split([f for c in classes for f in vfiles[c]],
                     np.asarray([index[c] for c in classes for _ in vfiles[c]], np.int64))
    return _Plan("folder", root, classes, list(classes), train, val)


def _plan_unlabelled(tree: _Tree) -> _Plan:
    files = [f for f in tree.files if _is_image(f)]
    if not files:
        raise UserError(f"{tree.display('')}: no images found (looked for "
                        f"{', '.join(sorted(IMAGE_EXTS))})")
    return _Plan("unlabelled", "", [], [], _Split(files, np.full(len(files), -1, np.int64)),
                 None)


def _plan(tree: _Tree, cfg: DataConfig) -> _Plan:
    source = cfg.source
    if source == "unlabelled":
        return _plan_unlabelled(tree)
    root = _find_root(tree, ("wnids.txt", "train"))
    if source == "auto":
        dirs, files = tree.listdir(root)
        source = "tin" if "wnids.txt" in files else "folder" if "train" in dirs else "unlabelled"
    if source == "tin":
        return _plan_tin(tree, root, cfg)
    if source == "folder":
        if "train" not in tree.listdir(root)[0]:
            raise UserError(f"{tree.display(root + 'train')}: not found; expected "
                            "train/<class>/<image> (and optionally val/<class>/<image>)")
        return _plan_folder(tree, root, cfg)
    return _plan_unlabelled(tree)


# ---------------------------------------------------------------------------------------------
# decoding


def _decode(data: bytes, img_size: int, name: str) -> np.ndarray:
    """Encoded image bytes -> (3, img_size, img_size) uint8 RGB; UserError naming ``name``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (img_size, img_size):  # header only: checked before decoding
                w, h = im.size
                raise UserError(f"{name}: image is {w}x{h} px, expected {img_size}x{img_size} "
                                "(set model.img_size, or resize the data set)")
            rgb = im.convert("RGB")  # L, P, CMYK, RGBA ... -> RGB
    except UserError:
        raise
    except Exception as e:  # PIL raises many types for bad data; all mean "not an image"
        raise UserError(f"{name}: not a readable image ({_one_line(e)})") from None
    return np.asarray(rgb).transpose(2, 0, 1)


def _decode_into(tree: _Tree, out_path: str, start: int, rels: list[str],
                 img_size: int) -> str | None:
    """Decode ``rels`` into rows ``start...`` of the .npy at ``out_path``; an error message."""
    out = np.load(out_path, mmap_mode="r+")
    try:
        for i, rel in enumerate(rels):
            out[start + i] = _decode(tree.read(rel), img_size, tree.display(rel))
    except UserError as e:
        return str(e)
    finally:
        out.flush()
        del out
    return None


def _worker(task: tuple) -> tuple[int, str | None]:
    spec, out_path, start, rels, img_size = task
    try:
        return len(rels), _decode_into(_tree_for(spec), out_path, start, rels, img_size)
    except UserError as e:
        return len(rels), str(e)


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


def _decode_all(tree: _Tree, jobs: list[tuple[str, list[str]]], img_size: int,
                progress: bool) -> None:
    """Decode each (out .npy path, files) job; raise UserError on the first bad image."""
    tasks = [(tree.spec, out, s, files[s:s + CHUNK], img_size)
             for out, files in jobs for s in range(0, len(files), CHUNK)]
    total = sum(len(f) for _, f in jobs)
    workers = _n_workers(total)
    if workers == 1:
        with _bar(total, progress) as bar:
            for _, out, s, rels, size in tasks:
                err = _decode_into(tree, out, s, rels, size)
                if err:
                    raise UserError(err)
                bar.update(len(rels))
        return
    # Workers start before the progress bar's monitor thread exists; a dead worker (OOM kill)
    # surfaces as BrokenProcessPool instead of a hang.
    ex = ProcessPoolExecutor(workers, mp_context=_mp_context())
    ok = False
    try:
        futures = [ex.submit(_worker, t) for t in tasks]
        with _bar(total, progress) as bar:
            for fut in as_completed(futures):
                n, err = fut.result()
                if err:
                    raise UserError(err)
                bar.update(n)
        ok = True
    finally:
        ex.shutdown(wait=ok, cancel_futures=not ok)


def _bar(total: int, progress: bool) -> tqdm:
    return tqdm(total=total, desc="decoding images", unit="img", disable=not progress,
                file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# the cache


def _cache_key(tree: _Tree, plan: _Plan, img_size: int) -> str:
    desc = {"version": CACHE_VERSION, "tree": tree.fingerprint(), "kind": plan.kind,
            "root": plan.root, "classes": plan.classes, "img_size": img_size}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24]


def _split_fingerprint(key: str, split: str) -> str:
    return hashlib.sha256(f"{key}:{split}".encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` while building, so concurrent ranks do not decode twice.

    The OS drops the lock when its holder dies, so a killed build never blocks the next one.
    """
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
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
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)),
                    list(meta["classes"]), list(meta["class_names"]),
                    meta["fingerprints"][split])


def _open_cache(d: Path) -> tuple[ImageSet, ImageSet | None] | None:
    """The cached splits, or None when ``d`` is absent or not a complete cache of this version."""
    try:
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION:
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


def _write_cache(tree: _Tree, plan: _Plan, key: str, tmp: Path, img_size: int,
                 progress: bool) -> None:
    """Decode every image of ``plan`` into the empty folder ``tmp``."""
    splits = {"train": plan.train, "val": plan.val}
    jobs = []
    for name, sp in splits.items():
        if sp is None:
            continue
        out = tmp / f"{name}_images.npy"
        _alloc_npy(out, (len(sp.files), 3, img_size, img_size))
        np.save(tmp / f"{name}_labels.npy", sp.labels)
        jobs.append((str(out), sp.files))
    _decode_all(tree, jobs, img_size, progress)
    meta = {
        "version": CACHE_VERSION, "key": key, "source": tree.display(plan.root),
        "kind": plan.kind, "img_size": img_size, "classes": plan.classes,
        "class_names": plan.class_names,
        "counts": {k: (None if v is None else len(v.files)) for k, v in splits.items()},
        "fingerprints": {k: _split_fingerprint(key, k) for k in splits},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # meta.json last: a folder without it is never taken for a cache.
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def _build_cache(tree: _Tree, plan: _Plan, key: str, final: Path, img_size: int,
                 progress: bool) -> None:
    """Build in a temp folder beside ``final`` and rename it into place (atomic)."""
    root = final.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{key}.lock"):
            _build_locked(tree, plan, key, final, img_size, progress)
    except OSError as e:  # read-only or full disk: the user's to fix
        raise UserError(f"{root}: cannot write the data cache ({_one_line(e.strerror or e)}); "
                        "free space or set data.cache_dir / VITMIM_CACHE") from None


def _build_locked(tree: _Tree, plan: _Plan, key: str, final: Path, img_size: int,
                  progress: bool) -> None:
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
        _write_cache(tree, plan, key, tmp, img_size, progress)
        try:
            os.rename(tmp, final)
        except OSError:  # without a lock (no fcntl) another process may have won
            if _open_cache(final) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_splits(cfg: DataConfig, img_size: int = 64,
                progress: bool = True) -> tuple[ImageSet, ImageSet | None]:
    """(train, val) for ``cfg``, decoded once into the cache and memory-mapped from it.

    Applies the class selection (labels 0..K-1 in the order of the selected classes), not
    ``label_fraction``. ``val`` is None for an unlabelled source or a folder set without val/.
    Images are (N, 3, img_size, img_size) uint8; another image size is a UserError.
    """
    if img_size <= 0:
        raise UserError(f"model.img_size: expected a positive size, got {img_size}")
    path = resolve_data_path(cfg.path, cfg.cache_dir)
    tree = _open_tree(path)
    plan = _plan(tree, cfg)
    key = _cache_key(tree, plan, img_size)
    final = cache_root(cfg.cache_dir) / key
    opened = _open_cache(final)
    if opened is None:
        _build_cache(tree, plan, key, final, img_size, progress)
        opened = _open_cache(final)
        if opened is None:
            raise UserError(f"{final}: cache could not be read back after building; "
                            "delete the folder and retry")
    return opened


# ---------------------------------------------------------------------------------------------
# label fraction, free images


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


def load_images(paths: list[str | Path], img_size: int = 64) -> torch.Tensor:
    """(N, 3, img_size, img_size) uint8 RGB from image files (for predict / reconstruct).

    An image of another size is scaled (shorter side) and centre-cropped; a square one is
    just resized.
    """
    out = torch.empty((len(paths), 3, img_size, img_size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        p = Path(p).expanduser()
        if not p.is_file():
            raise UserError(f"{p}: image not found" + (" (a folder)" if p.is_dir() else ""))
        try:
            with Image.open(p) as im:
                rgb = im.convert("RGB")
        except Exception as e:  # PIL raises many types for bad data
            raise UserError(f"{p}: not a readable image ({_one_line(e)})") from None
        if rgb.size != (img_size, img_size):
            rgb = ImageOps.fit(rgb, (img_size, img_size), Image.Resampling.BICUBIC)
        out[i] = torch.from_numpy(np.asarray(rgb).transpose(2, 0, 1).copy())
    return out


# ---------------------------------------------------------------------------------------------
# download, pack


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Stream ``url`` to ``dest`` (temp file + rename); check ``sha256`` when given.

    On any failure nothing is left at ``dest`` (an existing file there is not touched).
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = _stream(url, fd, progress)
        if sha256 and digest != sha256.strip().lower():
            raise UserError(f"{url}: sha256 mismatch (got {digest}, expected "
                            f"{sha256.strip().lower()}); nothing saved to {dest}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _stream(url: str, fd: int, progress: bool) -> str:
    """Copy ``url`` into the open file ``fd``; return the sha256 hex digest."""
    h = hashlib.sha256()
    got = 0
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, desc=f"downloading {url.rsplit('/', 1)[-1]}", unit="B",
                      unit_scale=True, disable=not progress, file=sys.stderr) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
        reason = getattr(e, "reason", None) or e
        raise UserError(f"{url}: download failed ({_one_line(reason)})") from None
    if total is not None and got != total:
        raise UserError(f"{url}: download incomplete ({got} of {total} bytes)")
    return h.hexdigest()


def _jpeg(img: torch.Tensor) -> bytes:
    """(3, H, W) uint8 -> JPEG bytes at PACK_QUALITY, no chroma subsampling."""
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(
        buf, format="JPEG", quality=PACK_QUALITY, subsampling=0)
    return buf.getvalue()


def pack(train: ImageSet, val: ImageSet | None, dest: Path) -> Path:
    """Write the splits as a small zip in the official Tiny ImageNet layout.

    Images are re-encoded as JPEG (quality 95, 4:4:4; a few grey levels off the source), so
    ten classes (5,500 images) take about 25 MB. ``load_splits`` (source auto or tin) reads the
    result; an unlabelled ``train`` (no classes) is written as a plain folder of images.
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    top = (dest.stem or "data") + "/"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # JPEGs do not deflate: store them, which also keeps reading the pack cheap.
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            if train.classes:
                _pack_tin(zf, top, train, val)
            else:
                for i, img in enumerate(train.images):
                    zf.writestr(f"{top}images/{i:06d}.JPEG", _jpeg(img))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _pack_tin(zf: zipfile.ZipFile, top: str, train: ImageSet, val: ImageSet | None) -> None:
    classes = train.classes
    for c in classes:
        if not c or c != c.strip() or any(ch in c for ch in "\t\n\r/"):
            raise UserError(f"cannot pack class id {c!r}: ids must be non-empty, without "
                            "tabs, line breaks, '/' or surrounding spaces")
    if val is not None and val.classes != classes:
        raise ValueError("pack: train and val have different class lists")
    counts = torch.bincount(train.labels.clamp(min=0), minlength=len(classes))
    if (train.labels < 0).any() or (train.labels >= len(classes)).any():
        raise ValueError("pack: train labels must be in 0..len(classes)-1")
    for c, n in zip(classes, counts.tolist()):
        if n == 0:
            raise UserError(f"cannot pack class {c}: it has no training images")
    zf.writestr(top + "wnids.txt", "".join(f"{c}\n" for c in classes))
    zf.writestr(top + "words.txt",
                "".join(f"{c}\t{n}\n" for c, n in zip(classes, train.class_names)))
    seen = [0] * len(classes)
    for img, y in zip(train.images, train.labels.tolist()):
        c = classes[y]
        # Zero-padded so the loader's sorted listing gives back the packed order.
        zf.writestr(f"{top}train/{c}/images/{c}_{seen[y]:06d}.JPEG", _jpeg(img))
        seen[y] += 1
    if val is None:
        return
    lines = []
    for i, (img, y) in enumerate(zip(val.images, val.labels.tolist())):
        if not 0 <= y < len(classes):
            raise ValueError("pack: val labels must be in 0..len(classes)-1")
        h, w = img.shape[1:]
        lines.append(f"val_{i:06d}.JPEG\t{classes[y]}\t0\t0\t{w - 1}\t{h - 1}\n")
        zf.writestr(f"{top}val/images/val_{i:06d}.JPEG", _jpeg(img))
    zf.writestr(top + "val/val_annotations.txt", "".join(lines))
