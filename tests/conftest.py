"""Shared fixtures: small fake data sets in the layouts vitmim reads, generated once per session.

- ``tiny_tin``: a zip in the official Tiny ImageNet layout (``tiny-imagenet-200/`` top folder,
  4 classes x 12 train images, 3 val images per class, a ``test/`` folder to be ignored,
  every 5th image grayscale), 64x64 JPEGs.
- ``tiny_tin_dir``: the same files extracted (the ``tiny-imagenet-200`` folder).
- ``tiny_folder``: a class-per-folder set (``train/<class>/``, ``val/<class>/``, jpg and png).
- ``tiny_unlabelled``: a nested folder of images without labels.

``tin_tools`` gives the generators themselves, for tests that need a broken variant.

Every test's data is fixed by its code, never by the machine: a test that needs the real Tiny
ImageNet archive is marked ``@pytest.mark.real_data``, takes it from ``real_tin`` (or ``real2``),
and is skipped, with the reason saying how to get the archive, where it is absent.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

if "PYTEST_XDIST_WORKER" in os.environ:  # one core per worker, its subprocesses included:
    os.environ["OMP_NUM_THREADS"] = "1"  # oversubscribed threads run many times slower

TIN_CLASSES = ["n02000003", "n01000001", "n03000007", "n01500002"]  # wnids.txt order, unsorted
TIN_WORDS = {
    "n02000003": "red fox, Vulpes vulpes",
    "n01000001": "goldfish",
    "n03000007": "teapot",
    "n01500002": "volleyball",
}


def image_bytes(
    seed: int, size: int | tuple[int, int] = 64, gray: bool = False, fmt: str = "JPEG"
) -> bytes:
    """A smooth random image (looks like a photo to a codec), encoded as ``fmt``."""
    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR
    )
    if gray:
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def write_tin(
    root: Path,
    n_classes: int = 4,
    n_train: int = 12,
    n_val: int = 3,
    size: int = 64,
    test_dir: bool = True,
) -> Path:
    """Write the official layout under ``root/tiny-imagenet-200``; return that folder."""
    top = root / "tiny-imagenet-200"
    classes = TIN_CLASSES[:n_classes]
    (top / "train").mkdir(parents=True)
    (top / "wnids.txt").write_text("".join(f"{c}\n" for c in classes))
    words = {**TIN_WORDS, "n09999999": "unused, not in wnids"}  # words.txt covers all WordNet
    (top / "words.txt").write_text("".join(f"{k}\t{v}\n" for k, v in words.items()))
    seed = 0
    for c in classes:
        d = top / "train" / c / "images"
        d.mkdir(parents=True)
        boxes = []
        for k in range(n_train):
            seed += 1
            (d / f"{c}_{k}.JPEG").write_bytes(image_bytes(seed, size, gray=seed % 5 == 0))
            boxes.append(f"{c}_{k}.JPEG\t0\t0\t{size - 1}\t{size - 1}\n")
        (top / "train" / c / f"{c}_boxes.txt").write_text("".join(boxes))
    (top / "val" / "images").mkdir(parents=True)
    lines = []
    for i in range(n_val * n_classes):
        seed += 1
        (top / "val" / "images" / f"val_{i}.JPEG").write_bytes(
            image_bytes(seed, size, gray=seed % 5 == 0)
        )
        lines.append(f"val_{i}.JPEG\t{classes[i % n_classes]}\t1\t2\t40\t50\n")
    (top / "val" / "val_annotations.txt").write_text("".join(lines))
    if test_dir:  # the official archive has unlabelled test images; they must be ignored
        (top / "test" / "images").mkdir(parents=True)
        for i in range(3):
            (top / "test" / "images" / f"test_{i}.JPEG").write_bytes(image_bytes(1000 + i, size))
    return top


def zip_dir(src: Path, dest: Path) -> Path:
    """Zip the folder ``src`` as ``dest`` with ``src.name/`` as the top folder (stored)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for dirpath, _, files in sorted(os.walk(src)):
            for name in sorted(files):
                p = Path(dirpath) / name
                zf.write(p, str(Path(src.name) / p.relative_to(src)))
    return dest


def write_folder_set(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    n_train: int = 5,
    n_val: int = 2,
    val: bool = True,
) -> Path:
    """``root/train/<class>/`` (jpg and png, one grayscale each) and ``root/val/<class>/``."""
    for ci, c in enumerate(classes):
        for k in range(n_train):
            fmt, ext = ("PNG", "png") if k % 2 else ("JPEG", "jpg")
            p = root / "train" / c / f"{k}.{ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(image_bytes(100 * ci + k, gray=k == 0, fmt=fmt))
        for k in range(n_val if val else 0):
            p = root / "val" / c / f"v{k}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(image_bytes(5000 + 100 * ci + k))
    (root / "train" / "README.txt").write_text("not a class\n")
    return root


def write_unlabelled(root: Path, n: int = 7) -> Path:
    """``n`` images in ``root`` and a subfolder, plus a non-image file and a hidden file."""
    for k in range(n):
        p = root / ("sub" if k % 2 else "") / f"img{k}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(image_bytes(9000 + k, gray=k == 3))
    (root / "notes.txt").write_text("ignored\n")
    (root / ".hidden.jpg").write_bytes(b"ignored")
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory):
    """No test reads the user's data or writes to ~/.cache/vitmim."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITMIM_CACHE", str(tmp_path_factory.mktemp("vitmim-cache")))
        mp.delenv("VITMIM_DATA", raising=False)
        yield


@pytest.fixture(scope="session")
def tin_tools() -> SimpleNamespace:
    return SimpleNamespace(
        image_bytes=image_bytes,
        write_tin=write_tin,
        zip_dir=zip_dir,
        write_folder_set=write_folder_set,
        write_unlabelled=write_unlabelled,
        classes=TIN_CLASSES,
        words=TIN_WORDS,
    )


@pytest.fixture(scope="session")
def tiny_tin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Extracted fake Tiny ImageNet: the ``tiny-imagenet-200`` folder."""
    return write_tin(tmp_path_factory.mktemp("tin-dir"))


@pytest.fixture(scope="session")
def tiny_tin(tmp_path_factory: pytest.TempPathFactory, tiny_tin_dir: Path) -> Path:
    """Fake ``tiny-imagenet-200.zip`` (4 classes x 12 train, 3 val per class, 64x64)."""
    return zip_dir(tiny_tin_dir, tmp_path_factory.mktemp("tin-zip") / "tiny-imagenet-200.zip")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class-per-folder set: 3 classes x 5 train, 2 val per class."""
    return write_folder_set(tmp_path_factory.mktemp("folder-set"))


@pytest.fixture(scope="session")
def tiny_unlabelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 unlabelled images, some in a subfolder."""
    return write_unlabelled(tmp_path_factory.mktemp("unlabelled"))


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory: pytest.TempPathFactory, tiny_tin: Path) -> Path:
    """Run folders of the shipped smoke grid (2 mask ratios x 2 seeds + both baselines, probes)
    on ``tiny_tin``, run in-process once and shared by the grid and report tests."""
    from vitmim import cli

    out = tmp_path_factory.mktemp("grid") / "smoke"
    spec = Path(__file__).resolve().parents[1] / "configs" / "grids" / "smoke.yaml"
    assert (
        cli.main(
            [
                "grid",
                str(spec),
                "--out",
                str(out),
                "--data",
                str(tiny_tin),
                "--set",
                "data.classes=null",
                "--executor",
                "inline",
            ]
        )
        == 0
    )
    return out


REAL_TIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-200.zip"
REAL_TIN_ABSENT = (
    f"real_data: needs the real Tiny ImageNet archive at {REAL_TIN} "
    f"(`vitmim data download --dest {REAL_TIN}` fetches the official one)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test's data never depends on what the machine holds: only a test marked ``real_data``
    may use the real archive (through ``real_tin``), and it is skipped where that is absent."""
    absent = not REAL_TIN.is_file()
    for item in items:
        marked = item.get_closest_marker("real_data") is not None
        if not marked and "real_tin" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid}: uses real_tin without @pytest.mark.real_data")
        if marked and absent:
            item.add_marker(pytest.mark.skip(reason=REAL_TIN_ABSENT))


@pytest.fixture(scope="session")
def real_tin() -> Path:
    """The real ``tiny-imagenet-200.zip``, for tests marked ``real_data`` only."""
    return REAL_TIN


def two_classes(path: Path, batch: int, images_dir: Path) -> SimpleNamespace:
    """Two classes of the archive ``path``: the path, the dotted overrides of a seconds-long
    smoke run on it, and 4 of its validation images extracted as JPEG files."""
    overrides = {"data.classes": 2, "pretrain.batch_size": batch, "finetune.batch_size": batch}
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if "/val/images/" in n and n.endswith(".JPEG"))
        images = [Path(zf.extract(n, path=images_dir)) for n in names[:4]]
    return SimpleNamespace(path=path, overrides=overrides, images=images)


def smoke_runs(data: SimpleNamespace, out: Path) -> SimpleNamespace:
    """A smoke pre-training and a 2-epoch fine-tune from it on ``data``, through the Python API."""
    import vitmim

    pre = vitmim.pretrain(
        data=data.path, out=out / "pre", preset="smoke", overrides=data.overrides, progress=False
    )
    ft = vitmim.finetune(
        init=pre.run_dir,
        data=data.path,
        out=out / "ft",
        preset="smoke",
        overrides=data.overrides,
        progress=False,
        finetune__epochs=2,
    )
    return SimpleNamespace(pre=pre, ft=ft)


@pytest.fixture(scope="session")
def tin2(tiny_tin: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two classes of the generated archive ``tiny_tin`` (see ``two_classes``), batches of 8."""
    return two_classes(tiny_tin, 8, tmp_path_factory.mktemp("tin2-images"))


@pytest.fixture(scope="session")
def tin2_runs(tin2: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A smoke pre-training and a fine-tune from it on ``tin2``."""
    return smoke_runs(tin2, tmp_path_factory.mktemp("tin2-runs"))


@pytest.fixture(scope="session")
def real2(real_tin: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two classes of the real archive (see ``two_classes``), batches of 64."""
    return two_classes(real_tin, 64, tmp_path_factory.mktemp("real2-images"))


@pytest.fixture(scope="session")
def real2_runs(real2: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A smoke pre-training and a fine-tune from it on ``real2``."""
    return smoke_runs(real2, tmp_path_factory.mktemp("real2-runs"))
