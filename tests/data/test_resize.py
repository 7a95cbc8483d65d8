"""data.resize: images of any size enter the cache at model.img_size (fit, pad, crop, error)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitmim import cli
from vitmim.config import DataConfig, load_config
from vitmim.data import BACKGROUND, cache, load_splits
from vitmim.errors import UserError
from vitmim.inference import load_images


def write(path: Path, img: Image.Image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def gradient(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth RGB image of w x h px whose every row and column differs."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return small.resize((w, h), Image.Resampling.BILINEAR)


def chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    """train/{a,b}/ with PNGs of 100x50, 30x70 and 32x32 px (lossless, so pixels are exact)."""
    root = tmp_path / "set"
    write(root / "train" / "a" / "0.png", gradient(100, 50, 1))
    write(root / "train" / "a" / "1.png", gradient(32, 32, 2))
    write(root / "train" / "b" / "0.png", gradient(30, 70, 3))
    return root


def load(root: Path, cache: Path, img_size: int = 32, **kw):
    return load_splits(
        DataConfig(path=str(root), cache_dir=str(cache), classes=None, **kw),
        img_size,
        progress=False,
    )


def test_fit_is_pil_antialiased_resize(mixed_folder, tmp_path, capsys):
    train, _ = load(mixed_folder, tmp_path / "c", resize="fit")
    assert train.images.shape == (3, 3, 32, 32)
    src = Image.open(mixed_folder / "train" / "a" / "0.png")
    assert torch.equal(train.images[0], chw(src.resize((32, 32), Image.Resampling.BICUBIC)))
    assert torch.equal(train.images[1], chw(Image.open(mixed_folder / "train" / "a" / "1.png")))
    assert capsys.readouterr().err.strip().splitlines() == ["resized 2 of 3 images to 32x32 (fit)"]
    again, _ = load(mixed_folder, tmp_path / "c", resize="fit")  # from the cache: no line
    assert torch.equal(again.images, train.images) and capsys.readouterr().err == ""


def test_default_is_fit_for_folders_and_unlabelled(mixed_folder, tmp_path):
    fit, _ = load(mixed_folder, tmp_path / "c", resize="fit")
    auto, _ = load(mixed_folder, tmp_path / "c")
    assert torch.equal(auto.images, fit.images) and auto.fingerprint == fit.fingerprint
    unl, _ = load(mixed_folder / "train", tmp_path / "c", source="unlabelled")
    assert unl.images.shape == (3, 3, 32, 32) and torch.equal(unl.images, fit.images)


def test_pad_letterboxes_on_the_background(tmp_path):
    root = tmp_path / "set"
    write(root / "train" / "red" / "wide.png", Image.new("RGB", (64, 32), (255, 0, 0)))
    train, _ = load(root, tmp_path / "c", resize="pad")
    img = train.images[0]  # 64x32 -> 32x16 band, centred: rows 8..23 red, the rest background
    bg = torch.tensor(BACKGROUND, dtype=torch.uint8)[:, None]
    assert torch.equal(img[:, :8].reshape(3, -1), bg.expand(3, 8 * 32))
    assert torch.equal(img[:, 24:].reshape(3, -1), bg.expand(3, 8 * 32))
    red = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None]
    assert torch.equal(img[:, 9:23].reshape(3, -1), red.expand(3, 14 * 32))


def test_crop_keeps_the_centre(tmp_path):
    root = tmp_path / "set"
    three = Image.new("RGB", (96, 32), (0, 0, 255))  # blue | green | blue, 32 px each
    three.paste((0, 255, 0), (32, 0, 64, 32))
    write(root / "train" / "x" / "0.png", three)
    train, _ = load(root, tmp_path / "c", resize="crop")
    green = torch.tensor([0, 255, 0], dtype=torch.uint8)[:, None, None].expand(3, 32, 32)
    assert torch.equal(train.images[0], green)


def test_modes_have_their_own_cache(mixed_folder, tmp_path):
    prints = {m: load(mixed_folder, tmp_path / "c", resize=m)[0] for m in ("fit", "pad", "crop")}
    assert len({s.fingerprint for s in prints.values()}) == 3
    assert not torch.equal(prints["fit"].images, prints["pad"].images)
    assert not torch.equal(prints["fit"].images, prints["crop"].images)
    assert len([p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]) == 3


def test_error_mode_refuses_in_one_line(mixed_folder, tmp_path):
    with pytest.raises(UserError, match=r"0\.png: image is 100x50 px, expected 32x32") as e:
        load(mixed_folder, tmp_path / "c", resize="error")
    assert "\n" not in str(e.value) and "data.resize" in str(e.value)


def test_tin_at_another_size_with_fit(tin_tools, tmp_path, capsys):
    top = tin_tools.write_tin(tmp_path / "src", n_classes=2, n_train=3, n_val=1, test_dir=False)
    train, val = load(top, tmp_path / "c", img_size=32, resize="fit")
    assert train.images.shape == (6, 3, 32, 32) and val.images.shape == (2, 3, 32, 32)
    assert "resized 8 of 8 images to 32x32 (fit)" in capsys.readouterr().err


def test_config_key(tmp_path):
    assert load_config(overrides=["data.resize=pad"]).data.resize == "pad"
    assert load_config().data.resize == "auto"
    with pytest.raises(UserError, match="data.resize: expected one of"):
        load_config(overrides=["data.resize=squash"])


def test_load_images_takes_a_resize_mode(tmp_path):
    p = write(tmp_path / "wide.png", Image.new("RGB", (64, 32), (255, 0, 0)))
    crop = load_images([p], img_size=16)
    assert torch.equal(
        crop[0], torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None].expand(3, 16, 16)
    )
    pad = load_images([p], img_size=16, resize="pad")
    assert pad[0, :, 0, 0].tolist() == list(BACKGROUND)


def test_training_on_odd_sized_images(tmp_path):
    """Patch and mask cells divide model.img_size; the 50x37 source size plays no part."""
    root = tmp_path / "set"
    for c in ("a", "b"):
        for k in range(4):
            write(root / "train" / c / f"{k}.png", gradient(50, 37, k + (10 if c == "b" else 0)))
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data",
        str(root),
        "--out",
        str(out),
        "--set",
        "data.classes=null",
        "--set",
        "model.img_size=32",
        "--set",
        "model.patch_size=8",
        "--set",
        "model.embed_dim=32",
        "--set",
        "model.depth=1",
        "--set",
        "model.num_heads=2",
        "--set",
        "model.decoder_dim=32",
        "--set",
        "pretrain.mask_patch=8",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "pretrain.batch_size=4",
        "--set",
        f"data.cache_dir={tmp_path / 'c'}",
    ]
    assert cli.main(args) == 0
    assert (out / "model.safetensors").is_file()


def test_parallel_workers_count_resized_images(mixed_folder, tmp_path, monkeypatch, capsys):
    serial, _ = load(mixed_folder, tmp_path / "s")
    monkeypatch.setattr(cache, "MIN_PARALLEL", 0)
    monkeypatch.setattr(cache, "CHUNK", 1)
    monkeypatch.setattr(cache, "_n_workers", lambda n: 2)
    capsys.readouterr()
    parallel, _ = load(mixed_folder, tmp_path / "p")
    assert torch.equal(parallel.images, serial.images)
    assert capsys.readouterr().err.strip() == "resized 2 of 3 images to 32x32 (fit)"
