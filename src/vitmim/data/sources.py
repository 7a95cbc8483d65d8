"""Where images come from: folders and zip archives, and which files of them form each split.

Sources (``DataConfig.source``):

- ``tin``: the official Tiny ImageNet layout, as the zip or an extracted folder (``wnids.txt``,
  ``words.txt``, ``train/<wnid>/images/*.JPEG``, ``val/val_annotations.txt``,
  ``val/images/*.JPEG``); ``test/`` is ignored. What :func:`vitmim.data.pack` writes is in this
  layout.
- ``folder``: ``train/<class>/**/*.jpg|png|...`` and optionally ``val/<class>/**/*``, or
  torchvision's ImageFolder layout ``<class>/**/*`` (no ``train/``).
- ``unlabelled``: every image under the folder (recursively); labels are -1.
- ``auto``: ``wnids.txt`` -> tin, a ``train/`` folder -> folder, two or more subfolders and no
  image beside them -> folder (ImageFolder), else unlabelled.

A folder or unlabelled source without a validation split holds out ``data.val_fraction`` of its
images (per class), drawn with ``data.split_seed``: validation metrics are never training images.

Zip archives are never extracted: members are read into memory one at a time, so a hostile
member name cannot write anywhere (zip-slip) and oversized members are refused (zip bombs).
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import sys
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitmim.config import DataConfig
from vitmim.errors import DataError, fold_lines

ARCHIVE_NAME = "tiny-imagenet-200.zip"
IMAGE_EXTS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
MAX_MEMBER_BYTES = 64 << 20  # a larger zip member (image or text file) is refused: zip-bomb guard
MAX_ARCHIVE_BYTES = 64 << 30  # sum of uncompressed member sizes we accept in one archive


# ---------------------------------------------------------------------------------------------
# a read-only file tree: a folder or a zip archive


def _visible(rel: str) -> bool:
    """False for hidden files/folders and macOS zip debris, which are never data."""
    return "/." not in "/" + rel and "__MACOSX" not in rel  # string ops: runs 100k times


def _is_image(rel: str) -> bool:
    ext = rel[rel.rfind(".") :].lower()
    return ext in IMAGE_EXTS and "/" not in ext and _visible(rel)


class Tree:
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
                head, sep, _ = rel[len(prefix) :].partition("/")
                (dirs if sep else files).add(head)
        for d in self.dirs:
            if d.startswith(prefix) and len(d) > len(prefix):
                dirs.add(d[len(prefix) :].partition("/")[0])
        return dirs, files

    @property
    def _file_set(self) -> set[str]:
        if getattr(self, "_fs", None) is None:
            self._fs = set(self.files)
        return self._fs


class DirTree(Tree):
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.spec = ("dir", str(self.root))
        self._files: list[str] | None = None  # listed lazily: workers only read
        self._stats: dict[str, tuple[int, int, int, int]] = {}
        self._dirs: set[str] = set()

    def _walk(self) -> None:
        """List regular files (links followed); skip everything else with one line."""
        files: list[str] = []
        skipped: Counter[str] = Counter()
        seen = {_dir_id(self.root)}
        for d, dnames, fnames in os.walk(self.root, followlinks=True):
            rel_d = os.path.relpath(d, self.root).replace(os.sep, "/")
            rel_d = "" if rel_d == "." else rel_d + "/"
            dnames[:] = [
                n
                for n in dnames
                if _first_visit(os.path.join(d, n), seen) and self._text_name(d, n, _visible(n))
            ]
            self._dirs.update(rel_d + n for n in dnames)
            for n in fnames:
                if not self._text_name(d, n, _is_image(n)):
                    continue
                try:
                    st = os.stat(os.path.join(d, n))
                except OSError:
                    skipped["broken link"] += 1
                    continue
                if not stat.S_ISREG(st.st_mode):
                    # A FIFO would block its reader forever; sockets and devices are no data.
                    skipped[_kind(st.st_mode)] += 1
                    continue
                self._stats[rel_d + n] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                files.append(rel_d + n)
        self._files = sorted(files)
        _say_skipped(self.display(""), skipped)

    @staticmethod
    def _text_name(folder: str, name: str, data: bool) -> bool:
        """True for a name that is UTF-8 text; a name that is not (its bytes arrive as
        surrogates) is refused where it would be data (an image, a class folder) and skipped
        elsewhere: run folders, manifests and messages record names as text."""
        try:
            name.encode()
            return True
        except UnicodeEncodeError:
            if not data:
                return False
        shown = os.fsencode(os.path.join(folder, name)).decode("utf-8", "backslashreplace")
        raise DataError(f"{shown}: name is not valid UTF-8; rename it")

    @property
    def files(self) -> list[str]:
        if self._files is None:
            self._walk()
        assert self._files is not None  # set by _walk
        return self._files

    @property
    def dirs(self) -> set[str]:
        if self._files is None:
            self._walk()
        return self._dirs

    def read(self, rel: str) -> bytes:
        # Non-blocking open and a type check: a file swapped for a FIFO cannot hang a worker.
        try:
            fd = os.open(self.root / rel, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise DataError(f"{self.display(rel)}: not a regular file")
                return f.read()
        except OSError as e:
            raise DataError(f"{self.display(rel)}: cannot read ({e.strerror or e})") from None

    def display(self, rel: str) -> str:
        return str(self.root / rel) if rel else str(self.root)

    def fingerprint(self) -> str:
        # Paths, sizes, mtimes, inodes and ctimes: an edited or replaced file gives a new cache,
        # also one copied over the old with its size and mtime kept (cp -p, rsync -t), since
        # neither can set the ctime and rsync makes a new inode. Hidden files are never data:
        # a .DS_Store appearing does not make the same images other data.
        h = hashlib.sha256(b"dir\n")
        for rel in filter(_visible, self.files):
            size, mtime, inode, ctime = self._stats[rel]
            h.update(f"{rel}\0{size}\0{mtime}\0{inode}\0{ctime}\n".encode())
        return h.hexdigest()


class ZipTree(Tree):
    def __init__(self, path: Path):
        self.path = path.resolve()
        self.spec = ("zip", str(self.path))
        try:
            self.zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise DataError(f"{path}: not a readable zip archive ({fold_lines(e)})") from None
        self._infos = {}
        self._dirs = set()
        total = 0
        skipped: Counter[str] = Counter()
        for info in self.zf.infolist():
            name = info.filename
            # Names that could escape a target folder are never data; skip rather than trust.
            if name.startswith("/") or "\\" in name or ".." in name.split("/"):
                continue
            if info.is_dir():
                self._dirs.add(name.rstrip("/"))
                continue
            mode = info.external_attr >> 16  # Unix file type, when a Unix zip tool wrote it
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                skipped["link" if stat.S_ISLNK(mode) else _kind(mode)] += 1
                continue
            total += info.file_size
            self._infos[name] = info
        if total > MAX_ARCHIVE_BYTES:
            raise DataError(
                f"{path}: archive expands to {total / 2**30:.1f} GiB, more than the "
                f"{MAX_ARCHIVE_BYTES >> 30} GiB accepted (zip bomb?)"
            )
        self._files = sorted(self._infos)
        _say_skipped(str(path), skipped)

    @property
    def files(self) -> list[str]:
        return self._files

    @property
    def dirs(self) -> set[str]:
        return self._dirs

    def read(self, rel: str) -> bytes:
        info = self._infos.get(rel) or self.zf.getinfo(rel)
        if info.file_size > MAX_MEMBER_BYTES:
            raise DataError(
                f"{self.display(rel)}: member expands to {info.file_size} bytes, "
                f"more than the {MAX_MEMBER_BYTES} accepted (zip bomb?)"
            )
        try:
            return self.zf.read(info)
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            OSError,
            ValueError,
            NotImplementedError,
        ) as e:
            raise DataError(
                f"{self.display(rel)}: unreadable zip member ({fold_lines(e)}); "
                "the archive may be truncated or corrupt"
            ) from None

    def display(self, rel: str) -> str:
        return f"{self.path}:{rel}" if rel else str(self.path)

    def fingerprint(self) -> str:
        # Names + CRCs + sizes, not the archive bytes: path-independent, cheap (no data read),
        # and the stored and the deflated archive of the same images share one cache.
        h = hashlib.sha256(b"zip\n")
        body = "\n".join(f"{n}\0{i.CRC}\0{i.file_size}" for n, i in self._infos.items())
        h.update(body.encode())
        return h.hexdigest()


def _dir_id(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _first_visit(path: str, seen: set[tuple[int, int]]) -> bool:
    """False for a folder already listed (a symlink loop or a second link to it)."""
    try:
        key = _dir_id(path)
    except OSError:
        return False
    if key in seen:
        return False
    seen.add(key)
    return True


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _say_skipped(where: str, skipped: Counter[str]) -> None:
    if skipped:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        print(
            f"{where}: skipped {sum(skipped.values())} entries that are not regular files "
            f"({kinds})",
            file=sys.stderr,
        )


def open_tree(path: Path) -> Tree:
    if path.is_dir():
        return DirTree(path)
    if not path.is_file():
        raise DataError(
            f"{path}: data not found; pass --data, set VITMIM_DATA, or run `vitmim data download`"
        )
    if not zipfile.is_zipfile(path):  # also what a truncated download looks like
        raise DataError(
            f"{path}: not a zip archive (or a truncated one); expected "
            f"{ARCHIVE_NAME}, a packed subset, or a folder"
        )
    return ZipTree(path)


_WORKER_TREE: tuple[tuple[str, str], int, Tree] | None = None


def tree_for(spec: tuple[str, str]) -> Tree:
    """The tree for ``spec`` opened by this process (a forked zip handle shares its offset)."""
    global _WORKER_TREE
    if _WORKER_TREE is None or _WORKER_TREE[:2] != (spec, os.getpid()):
        kind, path = spec
        tree = DirTree(Path(path)) if kind == "dir" else ZipTree(Path(path))
        _WORKER_TREE = (spec, os.getpid(), tree)
    return _WORKER_TREE[2]


# ---------------------------------------------------------------------------------------------
# listing a source: which files, which labels


@dataclass
class Split:
    files: list[str]  # tree-relative paths
    labels: np.ndarray  # (N,) int64


@dataclass
class Plan:
    kind: str
    root: str  # tree prefix of the data set ("" or "top/")
    classes: list[str]
    class_names: list[str]
    train: Split
    val: Split | None
    held_out: tuple[float, int] | None = None  # (val_fraction, split_seed) that drew val


def hold_out(plan: Plan, fraction: float, seed: int) -> Plan:
    """``plan`` with ``fraction`` of each class's training images (of all images when
    unlabelled) moved to a validation split, drawn with ``seed``; at least one image of each
    class stays in training. Unchanged when the plan has a val split or nothing would move."""
    if plan.val is not None or fraction <= 0:
        return plan
    rng = np.random.default_rng(seed)
    labels = plan.train.labels
    val_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(round(fraction * len(idx)), len(idx) - 1)
        val_idx.append(np.sort(rng.permutation(idx)[:k]))
    moved = np.concatenate(val_idx) if val_idx else np.zeros(0, np.int64)
    if not len(moved):
        return plan
    keep = np.setdiff1d(np.arange(len(labels)), moved)
    files = plan.train.files
    return Plan(
        plan.kind,
        plan.root,
        plan.classes,
        plan.class_names,
        Split([files[i] for i in keep], labels[keep]),
        Split([files[i] for i in moved], labels[moved]),
        (fraction, seed),
    )


def _read_text(tree: Tree, rel: str) -> str:
    try:
        return tree.read(rel).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{tree.display(rel)}: not UTF-8 text") from None


def _plain_name(name: str, where: str, what: str) -> str:
    """``name`` when it is one path component that stays in its folder, else a UserError.

    Class ids and file names read from text files become parts of paths; ``/``, ``\\``,
    ``..``, absolute paths and control characters could point anywhere, so they are refused.
    """
    if name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        raise DataError(
            f"{where}: {what} {name!r} is not a plain name (no '/', '\\', '..' "
            "or control characters)"
        )
    return name


def _find_root(tree: Tree, markers: tuple[str, ...]) -> str:
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


def default_classes(kind: str) -> int | None:
    """What ``data.classes: auto`` means for a source: the first 10 classes of Tiny ImageNet
    (TIN-10, where the recipes were tuned), every class of any other source."""
    return 10 if kind == "tin" else None


def _select_classes(ids: list[str], cfg: DataConfig, where: str, kind: str = "tin") -> list[str]:
    """Apply ``cfg.classes`` / ``cfg.class_subset`` / ``cfg.class_seed`` to the ordered class ids
    of the source."""
    sel = default_classes(kind) if cfg.classes == "auto" else cfg.classes
    if sel is None and cfg.class_subset:  # auto on a folder: every class, no blocks to cut
        raise DataError(
            f"config key data.class_subset: needs a class count in data.classes "
            f"({where} has {len(ids)} classes; e.g. data.classes={len(ids) // 2})"
        )
    if sel is None:
        return list(ids)
    if isinstance(sel, int):
        if sel <= 0 or sel > len(ids):
            raise DataError(
                f"config key data.classes: asked for {sel} classes, but {where} "
                f"has {len(ids)}; set data.classes={len(ids)} or null (all)"
            )
        if cfg.class_subset:
            return class_block(ids, sel, cfg.class_subset, where)
        if cfg.class_seed is None:
            return ids[:sel]
        # Keep the drawn classes in source order, so the set (not the draw order) is what counts.
        picked = sorted(random.Random(cfg.class_seed).sample(range(len(ids)), sel))
        return [ids[i] for i in picked]
    known = set(ids)
    for c in sel:
        if c not in known:
            raise DataError(f"config key data.classes: unknown class id {c!r} (not in {where})")
    if len(set(sel)) != len(sel):
        raise DataError(f"config key data.classes: class ids repeat in {sel}")
    if not sel:
        raise DataError("config key data.classes: empty list; give ids, a count, or null")
    return list(sel)


SUBSET_SEED = 20240247  # fixes the shuffle behind data.class_subset; changing it moves every block


def class_block(ids: list[str], k: int, block: int, where: str) -> list[str]:
    """The ``block``-th (>= 1) set of ``k`` classes drawn from ``ids[k:]``, in source order.

    The classes after the first ``k`` are shuffled once with a fixed seed and cut into blocks of
    ``k``: every block is disjoint from the first ``k`` classes (the ones recipes were chosen on)
    and from every other block, and block ``b`` is the same set on every machine.
    """
    rest = list(range(k, len(ids)))
    random.Random(SUBSET_SEED).shuffle(rest)
    blocks = len(rest) // k
    if block > blocks:
        raise DataError(
            f"config key data.class_subset: {block} is past the last block; "
            f"{where} has {len(ids)} classes, so {blocks} blocks of {k} after the "
            f"first {k}"
        )
    return [ids[i] for i in sorted(rest[(block - 1) * k : block * k])]


def _words(tree: Tree, rel: str, wanted: set[str]) -> dict[str, str]:
    """wnid -> first synonym from words.txt (optional file).

    Only lines whose wnid is one of ``wanted`` (plain names from wnids.txt) are used; a name is
    display text, never a path, and loses control characters so it cannot drive a terminal.
    """
    if not tree.has_file(rel):
        return {}
    names = {}
    for line in _read_text(tree, rel).splitlines():
        wnid, _, words = line.partition("\t")
        if wnid in wanted:
            name = "".join(ch for ch in words.split(",")[0] if ch.isprintable()).strip()
            names[wnid] = name or wnid
    return names


def _plan_tin(tree: Tree, root: str, cfg: DataConfig) -> Plan:
    wn = root + "wnids.txt"
    if not tree.has_file(wn):
        raise DataError(
            f"{tree.display(wn)}: not found; expected the Tiny ImageNet layout "
            "(wnids.txt, words.txt, train/, val/)"
        )
    wnids = []
    for no, line in enumerate(_read_text(tree, wn).splitlines(), 1):
        if line.strip():
            wnids.append(_plain_name(line.strip(), f"{tree.display(wn)}:{no}", "class id"))
    if not wnids:
        raise DataError(f"{tree.display(wn)}: no class ids (expected one wnid a line)")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{tree.display(wn)}: a class id appears twice")
    classes = _select_classes(wnids, cfg, tree.display(wn), "tin")
    names = _words(tree, root + "words.txt", set(classes))
    index = {c: i for i, c in enumerate(classes)}
    per_class: dict[str, list[str]] = {c: [] for c in classes}
    tp = root + "train/"
    for rel in tree.files:
        if rel.startswith(tp):
            parts = rel[len(tp) :].split("/")
            if (
                len(parts) == 3
                and parts[1] == "images"
                and parts[0] in index
                and _is_image(parts[2])
            ):
                per_class[parts[0]].append(rel)
    for c, fs in per_class.items():
        if not fs:
            raise DataError(
                f"{tree.display(tp + c + '/images')}: no images (missing or empty class folder)"
            )
    train = Split(
        [f for c in classes for f in per_class[c]],
        np.concatenate([np.full(len(per_class[c]), index[c], np.int64) for c in classes]),
    )
    # No val/ at all (e.g. a pack of train only) -> no val split; val/ without its
    # annotations is a broken copy and an error.
    has_val = "val" in tree.listdir(root)[0]
    val = _plan_tin_val(tree, root, set(wnids), index) if has_val else None
    return Plan("tin", root, classes, [names.get(c, c) for c in classes], train, val)


def _plan_tin_val(tree: Tree, root: str, wnids: set[str], index: dict[str, int]) -> Split:
    ann = root + "val/val_annotations.txt"
    if not tree.has_file(ann):
        raise DataError(
            f"{tree.display(ann)}: not found; expected lines "
            "'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1'"
        )
    files, labels = [], []
    for no, line in enumerate(_read_text(tree, ann).splitlines(), 1):
        if not line.strip():
            continue
        # Tab-separated as in the official file; any whitespace when there is no tab.
        fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise DataError(
                f"{tree.display(ann)}:{no}: expected 'file<TAB>wnid<TAB>box...', "
                f"got {line.strip()[:80]!r}"
            )
        name = _plain_name(fields[0].strip(), f"{tree.display(ann)}:{no}", "file name")
        wnid = fields[1].strip()
        if wnid not in wnids:
            raise DataError(f"{tree.display(ann)}:{no}: class {wnid!r} is not in wnids.txt")
        if wnid not in index:
            continue
        rel = root + "val/images/" + name
        if not tree.has_file(rel):
            raise DataError(f"{tree.display(ann)}:{no}: image {name} not found in val/images")
        files.append(rel)
        labels.append(index[wnid])
    return Split(files, np.asarray(labels, np.int64))


def _class_files(tree: Tree, prefix: str, classes: list[str]) -> dict[str, list[str]]:
    """Images anywhere under ``prefix + class + "/"`` for each class."""
    out: dict[str, list[str]] = {c: [] for c in classes}
    for rel in tree.files:
        if rel.startswith(prefix) and _is_image(rel):
            head, sep, _ = rel[len(prefix) :].partition("/")
            if sep and head in out:
                out[head].append(rel)
    return out


def _plan_folder(tree: Tree, root: str, cfg: DataConfig) -> Plan:
    """``train/<class>/`` (+ ``val/<class>/``) under ``root``, or without ``train/`` the class
    folders themselves (torchvision's ImageFolder layout)."""
    tp = root + "train/" if "train" in tree.listdir(root)[0] else root
    found = sorted(d for d in tree.listdir(tp)[0] if _visible(d))
    if not found:
        raise DataError(
            f"{tree.display(tp)}: no class folders (expected <class>/<image>, or "
            f"train/<class>/<image>)"
        )
    classes = _select_classes(found, cfg, tree.display(tp), "folder")
    index = {c: i for i, c in enumerate(classes)}
    per_class = _class_files(tree, tp, classes)
    for c, fs in per_class.items():
        if not fs:
            raise DataError(f"{tree.display(tp + c)}: no images (empty class folder)")
    train = Split(
        [f for c in classes for f in per_class[c]],
        np.asarray([index[c] for c in classes for _ in per_class[c]], np.int64),
    )
    val = None
    vp = root + "val/"
    if tp != root and "val" in tree.listdir(root)[0]:
        for d in sorted(x for x in tree.listdir(vp)[0] if _visible(x)):
            if d not in found:
                raise DataError(f"{tree.display(vp + d)}: class folder {d!r} is not in train/")
        loose = sorted(f for f in tree.listdir(vp)[1] if _is_image(f))
        if loose:  # without class folders they have no labels: val top-1 would read 0
            raise DataError(
                f"{tree.display(vp + loose[0])}: a validation image outside a class "
                f"folder ({len(loose)} in val/); move them to val/<class>/"
            )
        vfiles = _class_files(tree, vp, classes)
        val = Split(
            [f for c in classes for f in vfiles[c]],
            np.asarray([index[c] for c in classes for _ in vfiles[c]], np.int64),
        )
    return Plan("folder", root, classes, list(classes), train, val)


def _plan_unlabelled(tree: Tree) -> Plan:
    files = [f for f in tree.files if _is_image(f)]
    if not files:
        raise DataError(
            f"{tree.display('')}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))})"
        )
    return Plan("unlabelled", "", [], [], Split(files, np.full(len(files), -1, np.int64)), None)


def _class_folders(tree: Tree, root: str) -> bool:
    """``root`` looks like torchvision's ImageFolder: two or more visible subfolders holding
    images, and no image beside them."""
    dirs, files = tree.listdir(root)
    if any(_is_image(f) for f in files):
        return False
    with_images = {
        rel[len(root) :].partition("/")[0]
        for rel in tree.files
        if rel.startswith(root) and _is_image(rel)
    }
    return len(with_images & {d for d in dirs if _visible(d)}) >= 2


def detect(tree: Tree, cfg: DataConfig) -> tuple[str, str]:
    """(source kind, tree prefix of the data set) that ``cfg.source`` names or ``auto`` finds."""
    if cfg.source == "unlabelled":
        return "unlabelled", ""
    root = _find_root(tree, ("wnids.txt", "train"))
    if cfg.source != "auto":
        return cfg.source, root
    dirs, files = tree.listdir(root)
    if "wnids.txt" in files:
        return "tin", root
    if "train" in dirs or _class_folders(tree, root):
        return "folder", root
    return "unlabelled", ""


def plan_source(tree: Tree, cfg: DataConfig) -> Plan:
    """The files and labels of each split; a source without val holds out ``val_fraction``."""
    kind, root = detect(tree, cfg)
    if kind == "tin":
        return _plan_tin(tree, root, cfg)
    if kind == "folder":
        if "train" not in tree.listdir(root)[0] and not _class_folders(tree, root):
            raise DataError(
                f"{tree.display(root)}: no class folders; expected <class>/<image> "
                "or train/<class>/<image> (and optionally val/<class>/<image>)"
            )
        plan = _plan_folder(tree, root, cfg)
    else:
        plan = _plan_unlabelled(tree)
    return hold_out(plan, cfg.val_fraction, cfg.split_seed)
