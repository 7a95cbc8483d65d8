"""Image modes: every PIL mode, written as a real file, reaches the cache as correct 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitmim.config import DataConfig
from vitmim.data import BACKGROUND, load_splits
from vitmim.errors import UserError
from vitmim.inference import load_images

WHITE = list(BACKGROUND)
assert WHITE == [255, 255, 255]  # the README's "transparent pixels become white"


def decoded(img: Image.Image, tmp_path: Path, name: str = "x.png", **save) -> torch.Tensor:
    """Save ``img`` as ``name`` in its own folder, load it as an unlabelled set: (3, H, W)."""
    folder = tmp_path / "set"
    folder.mkdir()
    img.save(folder / name, **save)
    w, h = img.size
    cfg = DataConfig(
        path=str(folder),
        cache_dir=str(tmp_path / "c"),
        source="unlabelled",
        resize="error" if w == h else "fit",
    )
    train, _ = load_splits(cfg, img_size=w, progress=False)
    return train.images[0]


def px(x: torch.Tensor, row: int, col: int) -> list[int]:
    return x[:, row, col].tolist()


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 0)  # fully transparent red -> background
    a[0, 1] = (0, 0, 255, 255)  # opaque blue
    a[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    x = decoded(Image.fromarray(a, "RGBA"), tmp_path)
    assert px(x, 0, 0) == WHITE and px(x, 0, 1) == [0, 0, 255]
    assert all(abs(v - 127) <= 1 for v in px(x, 0, 2))


def test_la_composited_on_white(tmp_path):
    a = np.zeros((8, 8, 2), np.uint8)
    a[..., 1] = 255
    a[0, 0] = (0, 0)  # transparent black
    x = decoded(Image.fromarray(a, "LA"), tmp_path)
    assert px(x, 0, 0) == WHITE and px(x, 1, 1) == [0, 0, 0]


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    x = decoded(im, tmp_path, transparency=0)  # index 0 is transparent
    assert px(x, 0, 0) == WHITE and px(x, 3, 3) == [255, 0, 0]


def test_palette_gif(tmp_path):
    im = Image.new("P", (8, 8), 2)
    im.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 759)
    im.putpixel((1, 0), 0)
    x = decoded(im, tmp_path, name="x.gif")
    assert px(x, 0, 1) == [10, 20, 30] and px(x, 0, 0) == [70, 80, 90]


def test_cmyk(tmp_path):
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    im.putpixel((0, 0), (0, 0, 0, 255))  # black
    x = decoded(im, tmp_path, name="x.tif")
    assert px(x, 1, 1) == [255, 0, 0] and px(x, 0, 0) == [0, 0, 0]


def test_grey(tmp_path):
    im = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
    x = decoded(im, tmp_path)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.equal(x[0], torch.from_numpy(np.asarray(im).copy()))


def test_sixteen_bit_png_scaled_not_clipped(tmp_path):
    v = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    im = Image.fromarray(v)
    folder = tmp_path / "probe"
    folder.mkdir()
    im.save(folder / "p.png")
    assert Image.open(folder / "p.png").mode.startswith("I")  # really 16 bit on disk
    x = decoded(im, tmp_path)
    want = torch.from_numpy(((v.astype(np.int64) + 128) // 257).astype(np.uint8))
    assert torch.equal(x[0], want) and torch.equal(x[2], want)
    assert (x[0] == 255).float().mean() < 0.01  # clipping made 99 % of these 255


def test_exif_rotation_applied(tmp_path):
    im = Image.new("RGB", (32, 32), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 16, 32))  # stored: left red, right blue
    exif = im.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left edge goes to the top
    x = decoded(im, tmp_path, name="x.jpg", exif=exif, quality=95).int()
    top, bottom = x[:, 2, 16], x[:, 29, 16]
    assert top[0] > 200 and top[2] < 60, top  # red on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_exif_rotation_of_a_non_square_photo(tmp_path):
    im = Image.new("RGB", (64, 32), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 8
    folder = tmp_path / "set"
    folder.mkdir()
    im.save(folder / "p.jpg", exif=exif)
    with pytest.raises(UserError, match="p.jpg: image is 64x32 px"):
        load_splits(
            DataConfig(path=str(folder), cache_dir=str(tmp_path / "c"), resize="error"),
            32,
            progress=False,
        )
    x = load_images([folder / "p.jpg"], img_size=16, resize="pad")[0]
    assert px(x, 8, 0) == WHITE and px(x, 0, 8)[0] > 200  # upright 32x64: bars left and right


@pytest.mark.parametrize("raw", [b"garbage, not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_decode_error_names_the_file(tmp_path, raw):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "bad.png").write_bytes(raw)
    with pytest.raises(UserError) as e:
        load_splits(DataConfig(path=str(folder), cache_dir=str(tmp_path / "c")), 32, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{folder / 'bad.png'}: not a readable image")
    assert "BytesIO" not in msg and "0x" not in msg and "\n" not in msg
    with pytest.raises(UserError, match="bad.png: not a readable image") as e:
        load_images([folder / "bad.png"])
    assert "BytesIO" not in str(e.value)
