"""Cache checksums: damage that keeps a file's size is found on open and the cache rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitmim.config import DataConfig
from vitmim.data import cache, load_splits


def load(src: Path, root: Path):
    return load_splits(DataConfig(path=str(src), cache_dir=str(root), classes=None), progress=False)


def the_cache(root: Path) -> Path:
    (d,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return d


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_meta_records_size_and_digest_of_every_array(tiny_tin, tmp_path):
    load(tiny_tin, tmp_path)
    d = the_cache(tmp_path)
    sums = json.loads((d / "meta.json").read_text())["checksums"]
    assert sorted(sums) == [
        "train_images.npy",
        "train_labels.npy",
        "val_images.npy",
        "val_labels.npy",
    ]
    assert sums["train_images.npy"][0] == (d / "train_images.npy").stat().st_size


@pytest.mark.parametrize("name", ["train_images.npy", "val_labels.npy"])
def test_flipped_byte_rebuilds(tiny_tin, tmp_path, capsys, name):
    train, val = load(tiny_tin, tmp_path)
    want_images, want_labels = train.images.clone(), val.labels.clone()
    d = the_cache(tmp_path)
    size = (d / name).stat().st_size
    flip(d / name, size - 7)  # in the data, past the .npy header
    assert (d / name).stat().st_size == size
    capsys.readouterr()
    t2, v2 = load(tiny_tin, tmp_path)
    assert capsys.readouterr().err.strip() == (
        f"{d}: {name} does not match its checksum; rebuilding the cache"
    )
    assert torch.equal(t2.images, want_images) and torch.equal(v2.labels, want_labels)
    load(tiny_tin, tmp_path)  # repaired: opens silently
    assert capsys.readouterr().err == ""


def test_truncated_array_rebuilds(tiny_tin, tmp_path, capsys):
    train, _ = load(tiny_tin, tmp_path)
    want = train.images.clone()
    p = the_cache(tmp_path) / "train_images.npy"
    p.write_bytes(p.read_bytes()[:-100])
    again, _ = load(tiny_tin, tmp_path)
    assert "train_images.npy does not match its checksum" in capsys.readouterr().err
    assert torch.equal(again.images, want)


def test_sampled_blocks_of_a_large_array(tiny_tin, tmp_path, monkeypatch, capsys):
    # 4 blocks of 1 KiB: the 590 KB train array is sampled, not hashed whole.
    monkeypatch.setattr(cache, "SAMPLE_BLOCKS", 4)
    monkeypatch.setattr(cache, "SAMPLE_BYTES", 1024)
    load(tiny_tin, tmp_path)
    p = the_cache(tmp_path) / "train_images.npy"
    size = p.stat().st_size
    assert size > 4 * 1024
    block_2 = 2 * (size - 1024) // 3  # start of the third sampled block
    flip(p, block_2 + 500)
    load(tiny_tin, tmp_path)
    assert "train_images.npy does not match its checksum" in capsys.readouterr().err
