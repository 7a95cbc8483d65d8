"""Archive tools: download the official Tiny ImageNet zip, pack decoded splits into a small one."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from vitmim.data.cache import ImageSet, cache_root
from vitmim.data.sources import ARCHIVE_NAME
from vitmim.errors import DataError, fold_lines

OFFICIAL_URL = "https://cs231n.stanford.edu/tiny-imagenet-200.zip"
# Either checksum proves a tiny-imagenet-200.zip genuine: the sha256 of the copy this project is
# developed and tested on (stored, not deflated) and the md5 that data-set loaders everywhere
# record for the official deflated download (248,100,043 bytes), whose sha256 is not published.
# md5 is broken for collisions, not for matching one fixed published file.
PINNED = (
    ("sha256", "3675ca5acc916526c078d4493f297e56a647e93afb83cf0111c593ff991e04a5"),
    ("md5", "90528d7ca1a48142e341f4ef8d21d0de"),
)
DIGESTS = ("sha256", "md5")  # computed while streaming, so either pinned checksum can match
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PACK_QUALITY = 95  # JPEG quality of packed images (4:4:4): a few grey levels off the source


# ---------------------------------------------------------------------------------------------
# where the data is


def default_download_path(cache_dir: str | None = None) -> Path:
    """Where ``vitmim data download`` puts the official archive."""
    return cache_root(cache_dir) / ARCHIVE_NAME


def resolve_data_path(path: str | None, cache_dir: str | None = None) -> Path:
    """``path`` (--data), else ``$VITMIM_DATA``, else the default download location."""
    raw = path or os.environ.get("VITMIM_DATA")
    p = Path(raw).expanduser() if raw else default_download_path(cache_dir)
    if not p.exists():
        raise DataError(
            f"{p}: data not found; pass --data, set VITMIM_DATA, or run `vitmim data download`"
        )
    return p


# ---------------------------------------------------------------------------------------------
# download


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    progress: bool = True,
    allow_local_http: bool = False,
) -> Path:
    """Fetch ``url`` over https to ``dest`` (temp file + rename) and verify its checksum.

    Args:
        url: an https URL; redirects must stay on https.
        dest: the archive's path; a file already there whose checksum matches is kept and
            nothing is downloaded.
        sha256: the expected hex digest. When None and the URL ends in ``tiny-imagenet-200.zip``
            the pinned checksums of that archive are expected (:data:`PINNED`); for any other
            URL without ``sha256`` nothing is verified.
        allow_local_http: also accept plain http to 127.0.0.1 / localhost (for tests; never
            set from user input).

    On any failure nothing is left at ``dest`` (an existing file there is not touched).
    """
    _check_url(url, allow_local_http)
    want = _expected(url, sha256)
    dest = Path(dest).expanduser()
    if want and dest.is_file() and _matches(_file_digests(dest), want):
        print(f"{dest}: already there, checksum matches; not downloading", file=sys.stderr)
        return dest
    from vitmim import outputs  # runs (which outputs reads) imports this package

    outputs.check_file(dest)
    if want and dest.is_file():
        print(f"{dest}: checksum does not match; downloading again", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digests = _stream(url, fd, progress, allow_local_http)
        if want and not _matches(digests, want):
            expected = " or ".join(f"{alg} {hex_}" for alg, hex_ in want)
            raise DataError(
                f"{url}: sha256 mismatch (got {digests['sha256']}, expected "
                f"{expected}); nothing saved to {dest}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    outputs.record(dest)
    return dest


def _check_url(url: str, allow_local_http: bool) -> None:
    """Refuse anything but https (or, when allowed, http to this machine) in one line."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if allow_local_http and parts.scheme == "http" and parts.hostname in LOCAL_HOSTS:
        return
    raise DataError(
        f"{url}: only https downloads are accepted (an archive fetched over plain "
        "http could be swapped on the way)"
    )


def _expected(url: str, sha256: str | None) -> list[tuple[str, str]]:
    """(algorithm, hex digest) pairs of which one must match; [] = nothing to verify."""
    if sha256:
        return [("sha256", sha256.strip().lower())]
    if urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] == ARCHIVE_NAME:
        return list(PINNED)
    return []


def _matches(digests: dict[str, str], want: list[tuple[str, str]]) -> bool:
    return any(digests[alg] == hex_ for alg, hex_ in want)


def _file_digests(path: Path) -> dict[str, str]:
    hashes = {alg: hashlib.new(alg) for alg in DIGESTS}
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashes.values():
                h.update(chunk)
    return {alg: h.hexdigest() for alg, h in hashes.items()}


class _HttpsRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL that :func:`_check_url` accepts."""

    def __init__(self, allow_local_http: bool):
        self.allow_local_http = allow_local_http

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        _check_url(newurl, self.allow_local_http)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _stream(url: str, fd: int, progress: bool, allow_local_http: bool) -> dict[str, str]:
    """Copy ``url`` into the open file ``fd``; return its hex digests by algorithm."""
    hashes = {alg: hashlib.new(alg) for alg in DIGESTS}
    got = 0
    opener = urllib.request.build_opener(_HttpsRedirects(allow_local_http))
    try:
        with os.fdopen(fd, "wb") as f, opener.open(url, timeout=60) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                desc=f"downloading {url.rsplit('/', 1)[-1]}",
                unit="B",
                unit_scale=True,
                disable=not progress,
                file=sys.stderr,
            ) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
        reason = getattr(e, "reason", None) or e
        raise DataError(f"{url}: download failed ({fold_lines(reason)})") from None
    if total is not None and got != total:
        raise DataError(f"{url}: download incomplete ({got} of {total} bytes)")
    return {alg: h.hexdigest() for alg, h in hashes.items()}


# ---------------------------------------------------------------------------------------------
# pack


def _jpeg(img: torch.Tensor) -> bytes:
    """(3, H, W) uint8 -> JPEG bytes at PACK_QUALITY, no chroma subsampling."""
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(
        buf, format="JPEG", quality=PACK_QUALITY, subsampling=0
    )
    return buf.getvalue()


def pack(
    train: ImageSet, val: ImageSet | None, dest: Path, source: str | Path | None = None
) -> Path:
    """Write the splits as a small zip in the official Tiny ImageNet layout.

    Images are re-encoded as JPEG (quality 95, 4:4:4; a few grey levels off the source), so
    ten classes (5,500 images) take about 25 MB. ``load_splits`` (source auto or tin) reads the
    result; an unlabelled ``train`` (no classes) is written as a plain folder of images.
    ``source``: the data set it was read from, never written onto or into.
    """
    from vitmim import outputs  # runs (which outputs reads) imports this package

    dest = outputs.check_file(dest, inputs=[source] if source else [])
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
    outputs.record(dest)
    return dest


def _pack_tin(zf: zipfile.ZipFile, top: str, train: ImageSet, val: ImageSet | None) -> None:
    classes = train.classes
    for c in classes:
        if not c or c != c.strip() or any(ch in c for ch in "\t\n\r/"):
            raise DataError(
                f"cannot pack class id {c!r}: ids must be non-empty, without "
                "tabs, line breaks, '/' or surrounding spaces"
            )
    if val is not None and val.classes != classes:
        raise ValueError("pack: train and val have different class lists")
    counts = torch.bincount(train.labels.clamp(min=0), minlength=len(classes))
    if (train.labels < 0).any() or (train.labels >= len(classes)).any():
        raise ValueError("pack: train labels must be in 0..len(classes)-1")
    for c, n in zip(classes, counts.tolist()):
        if n == 0:
            raise DataError(f"cannot pack class {c}: it has no training images")
    zf.writestr(top + "wnids.txt", "".join(f"{c}\n" for c in classes))
    zf.writestr(
        top + "words.txt", "".join(f"{c}\t{n}\n" for c, n in zip(classes, train.class_names))
    )
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
