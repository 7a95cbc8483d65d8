"""One image: encoded bytes -> (3, S, S) uint8 RGB, whatever its size, mode and orientation.

Every mode ends as 8-bit RGB: ``L``, ``1``, ``P``, ``CMYK`` and ``YCbCr`` through PIL's
conversion; 16-bit grey (``I;16``, ``I``) scaled by 255/65535 instead of clipped at 255; any
transparency (``RGBA``, ``LA``, ``PA``, a palette or RGB colour key) composited on
:data:`BACKGROUND` (white). A JPEG's EXIF orientation is applied first, so a phone photo stands
upright. Then the image is brought to S x S by ``resize``:

- ``fit``: the whole image scaled to S x S (aspect not kept), antialiased bicubic.
- ``pad``: scaled to fit inside S x S keeping aspect, centred on the BACKGROUND (letterbox).
- ``crop``: shorter side scaled to S, then the centre S x S cut out.
- ``error``: an image of another size is refused with one line.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from vitmim.errors import DataError, UserError, fold_lines

RESIZE_MODES = ("fit", "pad", "crop", "error")
BACKGROUND = (255, 255, 255)  # white: what transparent pixels and letterbox bars become
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GREY = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_RESAMPLE = Image.Resampling.BICUBIC  # PIL widens its kernel when shrinking: antialiased
_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _sixteen_bit(im: Image.Image) -> Image.Image:
    """16-bit grey (0..65535) -> 8-bit RGB, rounding 257*k to k (PIL would clip at 255)."""
    a = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
    grey = ((a + 128) // 257).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency composited on BACKGROUND."""
    if im.mode in _WIDE_GREY:
        return _sixteen_bit(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        page = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(page, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _fit(rgb: Image.Image, size: int) -> Image.Image:
    return rgb.resize((size, size), _RESAMPLE)


def _pad(rgb: Image.Image, size: int) -> Image.Image:
    return ImageOps.pad(rgb, (size, size), _RESAMPLE, color=BACKGROUND)


def _crop(rgb: Image.Image, size: int) -> Image.Image:
    return ImageOps.fit(rgb, (size, size), _RESAMPLE)


_RESIZERS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "fit": _fit,
    "pad": _pad,
    "crop": _crop,
}


def _unreadable(name: str, e: Exception) -> DataError:
    """The one line for bytes PIL cannot decode; never PIL's in-memory buffer repr."""
    if isinstance(e, Image.UnidentifiedImageError):
        return DataError(f"{name}: not a readable image (unknown or unsupported format)")
    return DataError(f"{name}: not a readable image ({_BUFFER_REPR.sub('data', fold_lines(e))})")


def decode_image(data: bytes, size: int, resize: str, name: str) -> tuple[np.ndarray, bool]:
    """Encoded image ``data`` -> ((3, size, size) uint8 RGB, whether it was resized).

    Args:
        data: the file's bytes (any format PIL reads).
        size: output side in px.
        resize: one of RESIZE_MODES, applied only when the upright image is not size x size.
        name: the file as the user knows it; every error names it.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: the size check reads the header only
            return prepare_image(im, size, resize, name)
    except UserError:
        raise
    except Exception as e:  # PIL raises many types for bad data; all mean "not an image"
        raise _unreadable(name, e) from None


def prepare_image(
    im: Image.Image, size: int, resize: str, name: str = "image"
) -> tuple[np.ndarray, bool]:
    """An opened PIL image -> ((3, size, size) uint8 RGB, whether it was resized): upright,
    RGB on white, brought to size x size by ``resize`` (as :func:`decode_image`)."""
    if resize == "error" and im.size != (size, size):
        w, h = im.size
        raise DataError(
            f"{name}: image is {w}x{h} px, expected {size}x{size} "
            "(set model.img_size, or data.resize to fit, pad or crop)"
        )
    im = ImageOps.exif_transpose(im)  # a copy only when it was not upright
    rgb = to_rgb(im)
    changed = rgb.size != (size, size)
    if changed:
        rgb = _RESIZERS[resize](rgb, size)
    return np.asarray(rgb).transpose(2, 0, 1), changed
