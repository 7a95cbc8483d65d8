"""Data loading: sources, class selection, cache, pack, download, and every user error."""

from __future__ import annotations

import io
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitmim.config import DataConfig
from vitmim.data import (
    ImageSet,
    cache,
    cache_root,
    load_splits,
    pack,
    resolve_data_path,
    sources,
)
from vitmim.errors import UserError
from vitmim.inference import load_images
from vitmim.tasks import label_subset


def cfg_for(path: Path, cache: Path, **kw) -> DataConfig:
    kw.setdefault("classes", None)
    return DataConfig(path=str(path), cache_dir=str(cache), **kw)


def load(path: Path, cache: Path, **kw) -> tuple[ImageSet, ImageSet | None]:
    return load_splits(cfg_for(path, cache, **kw), progress=False)


def cache_entries(cache: Path) -> list[str]:
    """What a build left in the cache root, lock files aside."""
    return (
        sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))
        if cache.exists()
        else []
    )


def pil_rgb(raw: bytes) -> torch.Tensor:
    """(3, H, W) uint8 reference decode."""
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).copy()).permute(
        2, 0, 1
    )


# ---------------------------------------------------------------------------------------------
# Tiny ImageNet layout


def test_zip_loads_official_layout(tiny_tin, tin_tools, tmp_path):
    train, val = load(tiny_tin, tmp_path)
    assert train.images.shape == (48, 3, 64, 64) and train.images.dtype == torch.uint8
    assert val is not None and val.images.shape == (12, 3, 64, 64)
    assert train.labels.dtype == torch.int64
    assert train.classes == tin_tools.classes  # wnids.txt order, not sorted
    assert train.class_names == ["red fox", "goldfish", "teapot", "volleyball"]
    assert val.classes == train.classes
    assert torch.bincount(train.labels).tolist() == [12] * 4
    assert val.labels.tolist() == [i % 4 for i in range(12)]  # from val_annotations.txt
    assert train.fingerprint != val.fingerprint
    # Pixels equal a direct PIL decode; the first train image of class 0 is n02000003_0.
    with zipfile.ZipFile(tiny_tin) as zf:
        raw = zf.read("tiny-imagenet-200/train/n02000003/images/n02000003_0.JPEG")
        gray = zf.read("tiny-imagenet-200/train/n02000003/images/n02000003_4.JPEG")
    assert torch.equal(train.images[0], pil_rgb(raw))
    assert Image.open(io.BytesIO(gray)).mode == "L"
    k = sorted(f"n02000003_{i}.JPEG" for i in range(12)).index("n02000003_4.JPEG")
    assert torch.equal(train.images[k][0], train.images[k][1])  # grayscale -> equal channels
    assert torch.equal(train.images[k], pil_rgb(gray))


def test_folder_matches_zip(tiny_tin, tiny_tin_dir, tmp_path):
    tz, vz = load(tiny_tin, tmp_path / "a")
    for path in (tiny_tin_dir, tiny_tin_dir.parent):  # the folder itself or its parent
        td, vd = load(path, tmp_path / "b")
        assert torch.equal(td.images, tz.images) and torch.equal(td.labels, tz.labels)
        assert torch.equal(vd.images, vz.images) and td.class_names == tz.class_names


def test_zip_with_contents_at_root(tiny_tin_dir, tmp_path):
    dest = tmp_path / "flat.zip"
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(tiny_tin_dir.rglob("*")):
            if p.is_file():
                zf.write(p, str(p.relative_to(tiny_tin_dir)))
    train, val = load(dest, tmp_path / "c")
    assert len(train) == 48 and len(val) == 12


def test_explicit_source_tin(tiny_tin, tmp_path):
    train, _ = load(tiny_tin, tmp_path, source="tin")
    assert len(train) == 48


# ---------------------------------------------------------------------------------------------
# class selection


def test_first_k_classes(tiny_tin, tin_tools, tmp_path):
    train, val = load(tiny_tin, tmp_path, classes=2)
    assert train.classes == tin_tools.classes[:2]
    assert len(train) == 24 and len(val) == 6
    assert set(train.labels.tolist()) == {0, 1} and set(val.labels.tolist()) == {0, 1}


def test_seeded_classes_deterministic(tiny_tin, tin_tools, tmp_path):
    picks = {s: load(tiny_tin, tmp_path, classes=2, class_seed=s)[0].classes for s in range(6)}
    assert load(tiny_tin, tmp_path, classes=2, class_seed=3)[0].classes == picks[3]
    assert len({tuple(p) for p in picks.values()}) > 1  # different seeds, different draws
    order = tin_tools.classes
    for p in picks.values():  # kept in wnids.txt order
        assert sorted(p, key=order.index) == p


def real_wnids(real_tin: Path) -> list[str]:
    with zipfile.ZipFile(real_tin) as zf:
        return zf.read("tiny-imagenet-200/wnids.txt").decode().split()


@pytest.mark.real_data
def test_class_subsets_are_disjoint_from_the_first_ten_and_each_other(real_tin):
    wnids = real_wnids(real_tin)
    where = str(real_tin)
    picks = {
        k: sources._select_classes(wnids, DataConfig(classes=10, class_subset=k), where)
        for k in range(6)
    }
    assert picks[0] == wnids[:10]  # subset 0: the classes every recipe was chosen on
    seen: set[str] = set()
    for k in range(6):
        assert len(set(picks[k])) == 10 and not seen & set(picks[k])
        seen |= set(picks[k])
        assert sorted(picks[k], key=wnids.index) == picks[k]  # kept in wnids.txt order
    again = sources._select_classes(wnids, DataConfig(classes=10, class_subset=3), where)
    assert again == picks[3]  # reproducible
    last = sources._select_classes(wnids, DataConfig(classes=10, class_subset=19), where)
    assert not seen & set(last)  # 19 blocks of 10 after the first 10
    with pytest.raises(UserError, match="class_subset: 20 is past the last block.*19 blocks"):
        sources._select_classes(wnids, DataConfig(classes=10, class_subset=20), where)


def test_class_subset_loads_a_disjoint_block(tiny_tin, tin_tools, tmp_path):
    picks = [load(tiny_tin, tmp_path, classes=1, class_subset=k)[0] for k in range(4)]
    assert len({p.classes[0] for p in picks}) == 4  # 4 classes, 4 disjoint blocks of 1
    assert picks[0].classes == tin_tools.classes[:1]
    train, val = load(tiny_tin, tmp_path, classes=2, class_subset=1)
    assert not set(train.classes) & set(tin_tools.classes[:2])
    assert set(train.labels.tolist()) == {0, 1} and len(val) == 6
    with pytest.raises(UserError, match="past the last block"):
        load(tiny_tin, tmp_path, classes=2, class_subset=2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.class_subset=-1"], "data.class_subset: expected 0"),
        (["data.class_subset=1", "data.classes=null"], "needs a class count"),
        (["data.class_subset=1", "data.class_seed=3"], "either it or data.class_seed"),
    ],
)
def test_bad_class_subsets_are_refused(overrides, message):
    from vitmim.config import load_config

    with pytest.raises(UserError, match=message):
        load_config(overrides=overrides)


def test_explicit_class_list(tiny_tin, tmp_path):
    train, val = load(tiny_tin, tmp_path, classes=["n01500002", "n02000003"])
    assert train.classes == ["n01500002", "n02000003"]
    assert train.class_names == ["volleyball", "red fox"]
    full, _ = load(tiny_tin, tmp_path)
    # label 0 is now n01500002 = full label 3
    assert torch.equal(train.images[train.labels == 0], full.images[full.labels == 3])
    assert len(val) == 6


def test_unknown_class_id(tiny_tin, tmp_path):
    with pytest.raises(UserError, match="n07777777"):
        load(tiny_tin, tmp_path, classes=["n02000003", "n07777777"])
    with pytest.raises(UserError, match="asked for 9 classes"):
        load(tiny_tin, tmp_path, classes=9)
    assert cache_entries(tmp_path) == []


def test_label_subset_counts():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 1 + [-1] * 4)
    idx = label_subset(labels, 0.5, seed=0)
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values)
    assert torch.bincount(labels[idx]).tolist() == [5, round(1.5), 1]  # >= 1 per class
    assert torch.equal(idx, label_subset(labels, 0.5, seed=0))
    assert not torch.equal(label_subset(labels, 0.3, seed=0), label_subset(labels, 0.3, seed=1))
    assert torch.equal(label_subset(labels, 1.0, seed=0), torch.arange(14))
    with pytest.raises(UserError, match="label_fraction"):
        label_subset(labels, 0.0, seed=0)


# ---------------------------------------------------------------------------------------------
# cache


def test_cache_reused_without_decoding(tiny_tin, tmp_path, monkeypatch):
    train, val = load(tiny_tin, tmp_path, classes=3)
    (key,) = cache_entries(tmp_path)
    d = tmp_path / key
    assert sorted(p.name for p in d.iterdir()) == [
        "meta.json",
        "train_images.npy",
        "train_labels.npy",
        "val_images.npy",
        "val_labels.npy",
    ]

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "_decode", boom)
    t2, v2 = load(tiny_tin, tmp_path, classes=3)
    assert t2.fingerprint == train.fingerprint and torch.equal(t2.images, train.images)
    assert torch.equal(v2.labels, val.labels)
    t2.images[0] += 1  # copy-on-write map: writable, but the cache file is untouched
    assert torch.equal(load(tiny_tin, tmp_path, classes=3)[0].images[0], train.images[0])


def test_cache_key_depends_on_selection(tiny_tin, tmp_path):
    a, _ = load(tiny_tin, tmp_path, classes=2)
    b, _ = load(tiny_tin, tmp_path, classes=3)
    c, _ = load(tiny_tin, tmp_path, classes=2, class_seed=0)
    assert len({a.fingerprint, b.fingerprint}) == 2
    assert (c.fingerprint == a.fingerprint) == (c.classes == a.classes)


def test_interrupted_build_leaves_nothing(tiny_tin, tmp_path, monkeypatch):
    real = cache._decode
    calls = []

    def dies(raw, size, name):
        calls.append(name)
        if len(calls) == 10:
            raise KeyboardInterrupt  # like Ctrl-C halfway through
        return real(raw, size, name)

    monkeypatch.setattr(cache, "_decode", dies)
    with pytest.raises(KeyboardInterrupt):
        load(tiny_tin, tmp_path)
    assert cache_entries(tmp_path) == []
    monkeypatch.setattr(cache, "_decode", real)
    assert len(load(tiny_tin, tmp_path)[0]) == 48


def test_stale_temp_folder_is_ignored(tiny_tin, tmp_path):
    # A build killed with SIGKILL leaves its temp folder; the next build removes it.
    train, _ = load(tiny_tin, tmp_path)
    (key,) = cache_entries(tmp_path)
    shutil.rmtree(tmp_path / key)
    stale = tmp_path / f".tmp-{key}-dead"
    stale.mkdir()
    (stale / "train_images.npy").write_bytes(b"half")
    again, _ = load(tiny_tin, tmp_path)
    assert torch.equal(again.images, train.images) and cache_entries(tmp_path) == [key]


def test_concurrent_builds_share_one_cache(tiny_tin, tmp_path):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(load(tiny_tin, tmp_path)[0]))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(cache_entries(tmp_path)) == 1
    assert all(torch.equal(r.images, results[0].images) for r in results)


def test_unwritable_cache_dir(tiny_tin, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should go")
    with pytest.raises(UserError, match="cannot write the data cache"):
        load(tiny_tin, blocker / "cache")


def test_parallel_decode(tiny_tin, tmp_path, monkeypatch):
    serial, _ = load(tiny_tin, tmp_path / "s")
    monkeypatch.setattr(cache, "MIN_PARALLEL", 0)
    monkeypatch.setattr(cache, "CHUNK", 7)
    monkeypatch.setattr(cache, "_n_workers", lambda n: 2)
    parallel, _ = load(tiny_tin, tmp_path / "p")
    assert torch.equal(parallel.images, serial.images)


def test_parallel_decode_error(tiny_tin_dir, tin_tools, tmp_path, monkeypatch):
    top = tin_tools.write_tin(tmp_path / "src", n_classes=2, n_train=8, n_val=1)
    bad = top / "train" / tin_tools.classes[1] / "images" / f"{tin_tools.classes[1]}_5.JPEG"
    bad.write_bytes(b"garbage")
    monkeypatch.setattr(cache, "MIN_PARALLEL", 0)
    monkeypatch.setattr(cache, "CHUNK", 3)
    monkeypatch.setattr(cache, "_n_workers", lambda n: 2)
    with pytest.raises(UserError, match=bad.name):
        load(top, tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


# ---------------------------------------------------------------------------------------------
# other sources


def test_folder_source(tiny_folder, tmp_path):
    train, val = load(tiny_folder, tmp_path)
    assert train.classes == ["cat", "dog", "fox"] and train.class_names == train.classes
    assert len(train) == 15 and torch.bincount(train.labels).tolist() == [5, 5, 5]
    assert len(val) == 6 and torch.bincount(val.labels).tolist() == [2, 2, 2]
    assert torch.equal(train.images[0][0], train.images[0][2])  # 0.jpg is grayscale
    sub, _ = load(tiny_folder, tmp_path, source="folder", classes=["fox", "cat"])
    assert sub.classes == ["fox", "cat"] and len(sub) == 10


def test_folder_source_without_val(tin_tools, tmp_path):
    root = tin_tools.write_folder_set(tmp_path / "set", val=False)
    train, val = load(root, tmp_path / "cache", classes=2)
    assert val is None and train.classes == ["cat", "dog"]


def test_unlabelled_source(tiny_unlabelled, tmp_path):
    train, val = load(tiny_unlabelled, tmp_path, val_fraction=0)
    assert val is None and len(train) == 7
    assert train.labels.tolist() == [-1] * 7 and train.classes == []
    t2, _ = load(tiny_unlabelled, tmp_path, source="unlabelled", val_fraction=0)
    assert torch.equal(t2.images, train.images)
    held, val = load(tiny_unlabelled, tmp_path)  # by default 10 % is held out for validation
    assert len(held) == 6 and val.labels.tolist() == [-1]
    assert not any(torch.equal(val.images[0], im) for im in held.images)


def test_unlabelled_source_on_tin_reads_every_image(tiny_tin, tmp_path):
    train, val = load(tiny_tin, tmp_path, source="unlabelled", val_fraction=0)
    assert val is None and len(train) == 48 + 12 + 3  # train, val and test images


# ---------------------------------------------------------------------------------------------
# pack


def test_pack_round_trip(tiny_tin, tmp_path):
    train, val = load(tiny_tin, tmp_path / "c1", classes=["n03000007", "n01000001"])
    dest = pack(train, val, tmp_path / "subset.zip")
    assert dest.stat().st_size < 1 << 20
    t2, v2 = load(dest, tmp_path / "c2")
    assert t2.classes == train.classes and t2.class_names == train.class_names
    assert torch.equal(t2.labels, train.labels) and torch.equal(v2.labels, val.labels)
    diff = (t2.images.float() - train.images.float()).abs().mean()
    assert diff < 3.0  # JPEG q95 re-encode
    assert (v2.images.float() - val.images.float()).abs().mean() < 3.0


def test_pack_train_only_and_unlabelled(tiny_tin, tiny_unlabelled, tmp_path):
    train, _ = load(tiny_tin, tmp_path / "c", classes=2)
    t2, v2 = load(pack(train, None, tmp_path / "p.zip"), tmp_path / "c")
    assert v2 is None and len(t2) == len(train)
    u, _ = load(tiny_unlabelled, tmp_path / "c", val_fraction=0)
    u2, uv = load(pack(u, None, tmp_path / "u.zip"), tmp_path / "c", val_fraction=0)
    assert uv is None and len(u2) == 7 and u2.labels.tolist() == [-1] * 7


# ---------------------------------------------------------------------------------------------
# load_images, paths


def test_load_images(tin_tools, tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(tin_tools.image_bytes(1, size=(80, 40), gray=True, fmt="PNG"))
    b = tmp_path / "b.jpg"
    b.write_bytes(tin_tools.image_bytes(2))
    x = load_images([a, str(b)], img_size=32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[0][0], x[0][1])
    assert load_images([b]).shape == (1, 3, 64, 64)
    assert torch.equal(load_images([b])[0], pil_rgb(b.read_bytes()))
    with pytest.raises(UserError, match="nope.png"):
        load_images([tmp_path / "nope.png"])
    (tmp_path / "t.png").write_text("text")
    with pytest.raises(UserError, match="t.png"):
        load_images([tmp_path / "t.png"])


def test_resolve_data_path(tiny_tin, tmp_path, monkeypatch):
    assert resolve_data_path(str(tiny_tin)) == tiny_tin
    monkeypatch.setenv("VITMIM_DATA", str(tiny_tin))
    assert resolve_data_path(None) == tiny_tin
    monkeypatch.delenv("VITMIM_DATA")
    monkeypatch.setenv("VITMIM_CACHE", str(tmp_path))
    assert cache_root() == tmp_path and cache_root("/x/y") == Path("/x/y")
    with pytest.raises(UserError, match="tiny-imagenet-200.zip: data not found"):
        resolve_data_path(None)
    (tmp_path / "tiny-imagenet-200.zip").write_bytes(tiny_tin.read_bytes())
    assert resolve_data_path(None) == tmp_path / "tiny-imagenet-200.zip"
    assert len(load_splits(DataConfig(classes=1), progress=False)[0]) == 12


# ---------------------------------------------------------------------------------------------
# user errors: one line naming the file, no cache left behind


def small_tin(tin_tools, tmp_path: Path) -> Path:
    return tin_tools.write_tin(tmp_path / "src", n_classes=2, n_train=3, n_val=1, test_dir=False)


def expect_error(path: Path, cache: Path, match: str, **kw) -> str:
    with pytest.raises(UserError, match=match) as info:
        load(path, cache, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert cache_entries(cache) == []
    return msg


def test_error_missing_path(tmp_path):
    expect_error(tmp_path / "nothing.zip", tmp_path / "c", "nothing.zip: data not found")


def test_error_not_a_zip(tmp_path):
    p = tmp_path / "fake.zip"
    p.write_text("hello")
    expect_error(p, tmp_path / "c", "fake.zip: not a zip archive")


def test_error_truncated_zip(tiny_tin, tmp_path):
    p = tmp_path / "cut.zip"
    p.write_bytes(tiny_tin.read_bytes()[: tiny_tin.stat().st_size // 2])
    expect_error(p, tmp_path / "c", "cut.zip: not a zip archive")


def test_error_corrupt_member(tiny_tin, tmp_path):
    # Central directory intact, one member's bytes overwritten: CRC check names the member.
    raw = bytearray(tiny_tin.read_bytes())
    with zipfile.ZipFile(tiny_tin) as zf:
        info = zf.getinfo("tiny-imagenet-200/train/n01000001/images/n01000001_2.JPEG")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
    raw[start : start + 50] = b"\x00" * 50
    p = tmp_path / "bad.zip"
    p.write_bytes(bytes(raw))
    expect_error(p, tmp_path / "c", "n01000001_2.JPEG")


def test_error_missing_wnids(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    (top / "wnids.txt").unlink()
    expect_error(top, tmp_path / "c", "wnids.txt: not found", source="tin")


def test_error_missing_val_annotations(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    (top / "val" / "val_annotations.txt").unlink()
    expect_error(top, tmp_path / "c", "val_annotations.txt: not found")


def test_error_malformed_val_annotations(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    ann = top / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\n")
    expect_error(top, tmp_path / "c", r"val_annotations.txt:3: expected")


def test_error_annotation_unknown_class(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    ann = top / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn05555555\t0\t0\t1\t1\n" + ann.read_text())
    expect_error(top, tmp_path / "c", r"val_annotations.txt:1: class 'n05555555' is not in")


def test_error_annotation_missing_image(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    (top / "val" / "images" / "val_1.JPEG").unlink()
    expect_error(top, tmp_path / "c", r"val_annotations.txt:2: image val_1.JPEG not found")


def test_error_empty_class_folder(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    c = tin_tools.classes[1]
    for p in (top / "train" / c / "images").iterdir():
        p.unlink()
    expect_error(top, tmp_path / "c", f"{c}/images: no images")
    root = tin_tools.write_folder_set(tmp_path / "set")
    shutil.rmtree(root / "train" / "dog")
    (root / "train" / "dog").mkdir()
    expect_error(root, tmp_path / "c", "train/dog: no images")


def test_error_corrupt_jpeg(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    p = top / "train" / tin_tools.classes[0] / "images" / f"{tin_tools.classes[0]}_1.JPEG"
    p.write_bytes(p.read_bytes()[:300])  # truncated JPEG
    expect_error(top, tmp_path / "c", f"{p.name}: not a readable image")


def test_error_non_image_file(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    p = top / "val" / "images" / "val_0.JPEG"
    p.write_text("<html>not an image</html>")
    expect_error(top, tmp_path / "c", "val_0.JPEG: not a readable image")


def test_error_wrong_image_size(tin_tools, tmp_path):
    top = small_tin(tin_tools, tmp_path)
    p = top / "train" / tin_tools.classes[1] / "images" / f"{tin_tools.classes[1]}_0.JPEG"
    p.write_bytes(tin_tools.image_bytes(7, size=(48, 64)))
    expect_error(top, tmp_path / "c", f"{p.name}: image is 48x64 px, expected 64x64")
    # and the whole set at another size than asked
    with pytest.raises(UserError, match="expected 32x32"):
        load_splits(
            cfg_for(small_tin(tin_tools, tmp_path / "x"), tmp_path / "c"),
            img_size=32,
            progress=False,
        )


def test_error_folder_val_class_not_in_train(tin_tools, tmp_path):
    root = tin_tools.write_folder_set(tmp_path / "set")
    (root / "val" / "wolf").mkdir()
    (root / "val" / "wolf" / "a.jpg").write_bytes(tin_tools.image_bytes(1))
    expect_error(root, tmp_path / "c", "wolf")


def test_error_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path / "empty", tmp_path / "c", "no images found")


def test_zip_bomb_refused(tiny_tin, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 1000)
    expect_error(tiny_tin, tmp_path / "c", "zip bomb")


def test_zip_slip_names_ignored(tiny_tin, tin_tools, tmp_path):
    p = tmp_path / "slip.zip"
    shutil.copy(tiny_tin, p)
    with zipfile.ZipFile(p, "a") as zf:
        zf.writestr("../evil.JPEG", tin_tools.image_bytes(1))
        zf.writestr("a/../../evil.JPEG", tin_tools.image_bytes(2))
    train, _ = load(p, tmp_path / "c", source="unlabelled", val_fraction=0)
    assert len(train) == 63
    assert not (tmp_path / "evil.JPEG").exists()


# ---------------------------------------------------------------------------------------------
# the real archive


@pytest.mark.real_data
def test_real_tiny_imagenet(real_tin, tmp_path):
    cfg = DataConfig(path=str(real_tin), classes=None, cache_dir=str(tmp_path))
    t0 = time.perf_counter()
    train, val = load_splits(cfg, progress=False)
    build = time.perf_counter() - t0
    assert train.images.shape == (100_000, 3, 64, 64) and val.images.shape == (10_000, 3, 64, 64)
    assert len(train.classes) == 200 and train.classes == val.classes
    assert torch.bincount(train.labels, minlength=200).tolist() == [500] * 200
    assert torch.bincount(val.labels, minlength=200).tolist() == [50] * 200
    with zipfile.ZipFile(real_tin) as zf:
        first = zf.read(
            f"tiny-imagenet-200/train/{train.classes[0]}/images/{train.classes[0]}_0.JPEG"
        )
    assert torch.equal(train.images[0], pil_rgb(first))
    t0 = time.perf_counter()
    again, _ = load_splits(cfg, progress=False)
    reopen = time.perf_counter() - t0
    assert again.fingerprint == train.fingerprint
    print(f"full cache build {build:.1f} s, reopen {reopen:.2f} s")
    # About 25 s and 1.3 s on an idle 2-core machine; the bounds only catch a regression
    # (e.g. decoding serially or twice) without failing on a busy CI runner.
    assert build < 240 and reopen < 15
