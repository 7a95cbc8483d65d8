"""Sources on hostile file systems: non-regular files, link loops, names that look like paths."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from vitmim.config import DataConfig
from vitmim.data import load_splits
from vitmim.data.sources import DirTree
from vitmim.errors import UserError

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX special files")


def load_within(cfg: DataConfig, seconds: float = 60.0):
    """load_splits in a thread; fails (instead of hanging the suite) if it does not return."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(_try(cfg)), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "load_splits hung"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _try(cfg: DataConfig):
    try:
        return load_splits(cfg, progress=False)
    except BaseException as e:  # handed to the test thread
        return e


def test_special_files_skipped_with_a_count(tin_tools, tmp_path, capsys):
    root = tin_tools.write_unlabelled(tmp_path / "set", n=3)
    os.mkfifo(root / "x.png")  # a reader of a FIFO blocks until a writer appears
    sock = socket.socket(socket.AF_UNIX)
    short = Path(tempfile.mkdtemp(dir="/tmp")) / "s"  # AF_UNIX paths are limited to ~100 bytes
    sock.bind(str(short))
    os.symlink(short, root / "s.jpg")
    os.symlink("/dev/null", root / "dev.jpg")
    os.symlink(root / "gone.jpg", root / "broken.jpg")
    try:
        train, _ = load_within(DataConfig(path=str(root), cache_dir=str(tmp_path / "c")))
    finally:
        sock.close()
        shutil.rmtree(short.parent)
    assert len(train) == 3
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "skipped" in ln]
    assert lines == [
        f"{root}: skipped 4 entries that are not regular files "
        "(1 broken link, 1 device, 1 fifo, 1 socket)"
    ]


def test_fifo_in_a_class_folder(tin_tools, tmp_path):
    root = tin_tools.write_folder_set(tmp_path / "set")
    os.mkfifo(root / "train" / "cat" / "9.png")
    os.mkfifo(root / "val" / "dog" / "v9.jpg")
    train, val = load_within(
        DataConfig(path=str(root), cache_dir=str(tmp_path / "c"), classes=None)
    )
    assert len(train) == 15 and len(val) == 6


def test_read_refuses_a_fifo_swapped_in_after_listing(tin_tools, tmp_path):
    root = tin_tools.write_unlabelled(tmp_path / "set", n=2)
    tree = DirTree(root)
    assert "img0.jpg" in tree.files
    (root / "img0.jpg").unlink()
    os.mkfifo(root / "img0.jpg")
    done: list = []

    def read() -> None:
        try:
            tree.read("img0.jpg")
        except UserError as e:
            done.append(str(e))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert done == [f"{root / 'img0.jpg'}: not a regular file"]


def test_symlink_loop_is_listed_once(tin_tools, tmp_path):
    root = tin_tools.write_unlabelled(tmp_path / "set", n=4)
    os.symlink(root, root / "sub" / "loop")
    train, _ = load_within(DataConfig(path=str(root), cache_dir=str(tmp_path / "c")))
    assert len(train) == 4


def test_zip_symlink_member_skipped(tin_tools, tmp_path, capsys):
    p = tmp_path / "set.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.jpg", tin_tools.image_bytes(1))
        link = zipfile.ZipInfo("etc.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    train, _ = load_splits(DataConfig(path=str(p), cache_dir=str(tmp_path / "c")), progress=False)
    assert len(train) == 1
    assert "skipped 1 entries that are not regular files (1 link)" in capsys.readouterr().err


def small_tin(tin_tools, tmp_path: Path) -> Path:
    return tin_tools.write_tin(tmp_path / "src", n_classes=2, n_train=3, n_val=1, test_dir=False)


def expect_one_line(top: Path, cache: Path, match: str) -> None:
    with pytest.raises(UserError, match=match) as e:
        load_splits(DataConfig(path=str(top), cache_dir=str(cache), classes=None), progress=False)
    assert "\n" not in str(e.value)
    assert not cache.exists() or not any(p for p in cache.iterdir() if p.suffix != ".lock")


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "/abs", "..", "a\\b"])
def test_wnid_that_is_a_path_is_refused(tin_tools, tmp_path, bad):
    top = small_tin(tin_tools, tmp_path)
    (top / "wnids.txt").write_text((top / "wnids.txt").read_text() + bad + "\n")
    expect_one_line(top, tmp_path / "c", r"wnids.txt:3: class id .* is not a plain name")


@pytest.mark.parametrize(
    "bad",
    ["../../../secret.JPEG", "/etc/passwd", "sub/val_0.JPEG", "..\\val_0.JPEG", "val_\x1b0.JPEG"],
)
def test_val_annotation_path_is_refused(tin_tools, tmp_path, bad):
    top = small_tin(tin_tools, tmp_path)
    (tmp_path / "secret.JPEG").write_bytes(tin_tools.image_bytes(5))  # what ../ would reach
    ann = top / "val" / "val_annotations.txt"
    ann.write_text(f"{bad}\t{tin_tools.classes[0]}\t0\t0\t1\t1\n" + ann.read_text())
    expect_one_line(top, tmp_path / "c", r"val_annotations.txt:1: file name .* is not a plain")


def test_plain_names_still_load(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    train, val = load_splits(
        DataConfig(path=str(top), cache_dir=str(tmp_path / "c"), classes=None), progress=False
    )
    assert len(train) == 6 and len(val) == 2 and torch.equal(val.labels, torch.tensor([0, 1]))


def test_words_are_display_text_without_control_characters(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    c0, c1 = tin_tools.classes[:2]
    (top / "words.txt").write_text(
        f"{c0}\t\x1b[31mred\x1b[0m fox, x\n../{c1}\tescape\n{c1}\tgold/fish\n"
    )
    train, _ = load_splits(
        DataConfig(path=str(top), cache_dir=str(tmp_path / "c"), classes=None), progress=False
    )
    assert train.class_names == ["[31mred[0m fox", "gold/fish"]
