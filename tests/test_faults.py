"""Bad input: each case runs the real CLI in a process of its own (tests/cliproc.py) and must
end with exit code 2, one line on stderr that names the file or key (progress bars aside), no
traceback, and no partial output (the run folder unchanged, no temp files, no half-built data
cache).

The cases are the table :data:`CASES`: adding one is one line (a name, a function that builds the
inputs and returns the CLI arguments, and the text the message must contain).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cliproc
import pytest
import torch
from conftest import image_bytes

from vitmim import checkpoint
from vitmim.config import dump, load_config
from vitmim.data import load_splits
from vitmim.models import build_classifier, build_restorer

SMOKE = [
    "--preset",
    "smoke",
    "--set",
    "data.classes=null",
    "--set",
    "device=cpu",
    "--set",
    "pretrain.batch_size=8",
    "--set",
    "finetune.batch_size=8",
]
TRAIN0 = "train/n02000003/images/n02000003_0.JPEG"  # a training image of the fake TIN
VAL_ANN = "val/val_annotations.txt"
TQDM = re.compile(r"\d+/\d+ \[|^\s+$")  # a progress-bar frame, or what clears it

# Makes os.replace fail with ENOSPC for every file under $VITMIM_TEST_FULL_DIR after the first
# $VITMIM_TEST_FULL_AFTER renames there: a disk that fills up while a run writes its folder.
FULL_DISK = r"""
import errno, os
_dir, _left = os.environ["VITMIM_TEST_FULL_DIR"], [int(os.environ["VITMIM_TEST_FULL_AFTER"])]
_replace = os.replace
def replace(src, dst, **kw):
    if os.path.abspath(dst).startswith(_dir):
        if _left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        _left[0] -= 1
    return _replace(src, dst, **kw)
os.replace = replace
"""


@dataclass
class Ctx:
    """What a case builds in: its own folder, the fake data set, and clean-up actions."""

    tmp: Path
    tin_dir: Path  # an extracted fake Tiny ImageNet (read-only: copy before editing)
    zip_dir: Callable[[Path, Path], Path]
    env: dict[str, str] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def tin(self, put: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> Path:
        """A copy of the fake TIN with files replaced (``put``) or deleted (``drop``)."""
        top = self.tmp / "data" / "tiny-imagenet-200"
        shutil.copytree(self.tin_dir, top)
        for rel in drop:
            p = top / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for rel, data in (put or {}).items():
            (top / rel).write_bytes(data)
        return top

    def tin_zip(self, **edits) -> Path:
        return self.zip_dir(self.tin(**edits), self.tmp / "tiny-imagenet-200.zip")


def pretrain(c: Ctx, data: Path | str, *more: str) -> list[str]:
    return ["pretrain", *SMOKE, "--data", str(data), "--out", str(c.out), *more]


def finetune_init(c: Ctx, weights: Path) -> list[str]:
    return ["finetune", *SMOKE, "--data", str(c.tin()), "--out", str(c.out), "--init", str(weights)]


def truncated_zip(c: Ctx) -> Path:
    z = c.tin_zip()
    z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    return z


def corrupt_member_zip(c: Ctx) -> Path:
    """Flip bytes inside a stored member: the central directory is fine, the CRC is not."""
    z = c.tin_zip()
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo(f"tiny-imagenet-200/{TRAIN0}")
    data = bytearray(z.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    data[start : start + 16] = bytes(16)
    z.write_bytes(bytes(data))
    return z


def zip_bomb(c: Ctx) -> Path:
    """A training image that inflates to 65 MiB (from 65 KiB): refused before inflating."""
    z = c.tin_zip()
    bomb = c.tmp / "bomb.zip"
    with zipfile.ZipFile(z) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(TRAIN0):
                data = bytes(65 << 20)
            dst.writestr(info.filename, data, zipfile.ZIP_DEFLATED)
    return bomb


def non_zip_file(c: Ctx) -> Path:
    p = c.tmp / "tiny-imagenet-200.txt"
    p.write_text("these are not images\n")
    return p


def unwritable_out(c: Ctx) -> list[str]:
    """An existing output folder nobody may write: immutable for root, read-only otherwise."""
    c.out.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(c.out)], capture_output=True).returncode:
            pytest.skip("chattr +i not available: cannot make a folder unwritable for root")
        c.cleanup.append(lambda: subprocess.run(["chattr", "-i", str(c.out)]))
    else:
        c.out.chmod(0o500)
        c.cleanup.append(lambda: c.out.chmod(0o700))
    return pretrain(c, c.tin())


def out_under_file(c: Ctx) -> list[str]:
    (c.tmp / "afile").write_text("x")
    return ["pretrain", *SMOKE, "--data", str(c.tin()), "--out", str(c.tmp / "afile" / "run")]


def full_disk(c: Ctx) -> list[str]:
    """The disk fills after config.yaml, manifest.json and the step-0 checkpoint are written."""
    (c.tmp / "site").mkdir()
    (c.tmp / "site" / "sitecustomize.py").write_text(FULL_DISK)
    c.env.update(
        PYTHONPATH=str(c.tmp / "site"), VITMIM_TEST_FULL_DIR=str(c.out), VITMIM_TEST_FULL_AFTER="4"
    )
    return pretrain(c, c.tin(), "--set", "checkpoint_every=2")


def weights_of(c: Ctx, name: str, model: torch.nn.Module) -> Path:
    path = c.tmp / name
    checkpoint.save_weights(path, model.state_dict())
    return path


def other_size_restorer(c: Ctx) -> Path:
    cfg = load_config([], ["model.embed_dim=32", "model.num_heads=2"])
    return weights_of(c, "small.safetensors", build_restorer(cfg.model, cfg.pretrain))


def other_arch_restorer(c: Ctx) -> Path:
    cfg = load_config([], ["model.arch=unet-vit"])
    return weights_of(c, "unet.safetensors", build_restorer(cfg.model, cfg.pretrain))


def resume_other_size(c: Ctx) -> list[str]:
    """A run folder whose checkpoint holds a smaller model, resumed with the smoke model; its
    config.yaml says so, as the run that wrote the checkpoint left it."""
    cfg = load_config([], ["model.embed_dim=32", "model.num_heads=2"])
    model = build_classifier(cfg.model, 4)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    checkpoint.save_checkpoint(c.out, 0, tensors, {"stage": "finetune", "step": 0})
    (c.out / "config.yaml").write_text(dump(cfg))
    return ["finetune", *SMOKE, "--data", str(c.tin()), "--out", str(c.out), "--resume"]


def resume_unrecorded(c: Ctx) -> list[str]:
    """A run folder holding a checkpoint but neither config.yaml nor manifest.json."""
    args = resume_other_size(c)
    (c.out / "config.yaml").unlink()
    return args


def pickle_file(c: Ctx, name: str) -> Path:
    path = c.tmp / name
    torch.save({"backbone.pos_embed": torch.zeros(3)}, path)
    return path


CASES: dict[str, tuple[Callable[[Ctx], list[str]], str]] = {
    # name: (build inputs -> CLI arguments, text the one-line message must contain)
    "corrupt JPEG": (lambda c: pretrain(c, c.tin({TRAIN0: image_bytes(7)[:300]})), TRAIN0[-16:]),
    "non-image file": (lambda c: pretrain(c, c.tin({TRAIN0: b"hello"})), "n02000003_0.JPEG"),
    "image of another size": (lambda c: pretrain(c, c.tin({TRAIN0: image_bytes(7, 32)})), "32x32"),
    "truncated archive": (lambda c: pretrain(c, truncated_zip(c)), "tiny-imagenet-200.zip"),
    "corrupt archive member": (lambda c: pretrain(c, corrupt_member_zip(c)), "n02000003_0.JPEG"),
    "zip bomb": (lambda c: pretrain(c, zip_bomb(c)), "zip bomb"),
    "data is not an archive": (lambda c: pretrain(c, non_zip_file(c)), "tiny-imagenet-200.txt"),
    "missing val_annotations.txt": (lambda c: pretrain(c, c.tin(drop=(VAL_ANN,))), VAL_ANN),
    "malformed val_annotations.txt": (
        lambda c: pretrain(c, c.tin({VAL_ANN: b"val_0.JPEG\n"})),
        f"{VAL_ANN}:1",
    ),
    "annotation of unknown class": (
        lambda c: pretrain(c, c.tin({VAL_ANN: b"val_0.JPEG\tn09999999\t0\t0\t9\t9\n"})),
        "n09999999",
    ),
    "empty class folder": (
        lambda c: pretrain(c, c.tin(drop=("train/n01000001/images",))),
        "n01000001",
    ),
    "missing data path": (lambda c: pretrain(c, c.tmp / "no-such.zip"), "no-such.zip"),
    "unwritable output folder": (unwritable_out, "/out:"),
    "output folder under a file": (out_under_file, "afile"),
    "full disk": (full_disk, "No space left on device"),
    "mask cell does not divide the image": (
        lambda c: pretrain(c, c.tin(), "--set", "pretrain.mask_patch=5"),
        "pretrain.mask_patch",
    ),
    "mask ratio 1.5": (
        lambda c: pretrain(c, "x", "--set", "pretrain.mask_ratio=1.5"),
        "pretrain.mask_ratio",
    ),
    "mask ratio 0": (
        lambda c: pretrain(c, "x", "--set", "pretrain.mask_ratio=0"),
        "pretrain.mask_ratio",
    ),
    "unknown config key": (
        lambda c: pretrain(c, "x", "--set", "pretrain.mask_ration=0.4"),
        "pretrain.mask_ration",
    ),
    "value of the wrong type": (
        lambda c: pretrain(c, "x", "--set", "pretrain.epochs=many"),
        "pretrain.epochs",
    ),
    "batch larger than the data": (
        lambda c: pretrain(c, c.tin(), "--set", "pretrain.batch_size=512"),
        "pretrain.batch_size",
    ),
    "init of another size": (
        lambda c: finetune_init(c, other_size_restorer(c)),
        "small.safetensors",
    ),
    "init of another architecture": (
        lambda c: finetune_init(c, other_arch_restorer(c)),
        "unet.safetensors",
    ),
    "resume a checkpoint of another size": (resume_other_size, "holds a run made with "),
    "resume checkpoints without config or manifest": (resume_unrecorded, "cannot be told"),
    "pickle as init": (lambda c: finetune_init(c, pickle_file(c, "w.pt")), "pickle"),
    "pickle named .safetensors": (
        lambda c: finetune_init(c, pickle_file(c, "w.safetensors")),
        "pickle",
    ),
}


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (the run lock aside)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@dataclass
class Outcome:
    rc: int
    stderr: str
    out: Path
    before: dict[str, str]  # run folder before the command
    after: dict[str, str]
    cache_entries: list[str]


def run_case(name: str, root: Path, tin_dir: Path, zip_dir) -> Outcome:
    ctx = Ctx(root / re.sub(r"\W+", "-", name), tin_dir, zip_dir)
    ctx.tmp.mkdir()
    ctx.env["VITMIM_CACHE"] = str(ctx.tmp / "cache")
    try:
        args = CASES[name][0](ctx)
        before = snapshot(ctx.out)
        env = {**os.environ, **ctx.env}
        if "PYTHONPATH" in ctx.env:  # a start-up hook (sitecustomize): a fresh interpreter
            proc = subprocess.run(
                [sys.executable, "-m", "vitmim.cli", *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
            )
        else:
            proc = cliproc.vitmim(*args, env=env, timeout=300)
        cache = ctx.tmp / "cache"
        entries = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
        return Outcome(proc.returncode, proc.stderr, ctx.out, before, snapshot(ctx.out), entries)
    finally:
        for undo in ctx.cleanup:
            undo()


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory, tiny_tin_dir: Path, tin_tools
) -> dict[str, Outcome]:
    """Every case, three processes at a time (most of each is interpreter start-up)."""
    root = tmp_path_factory.mktemp("faults")
    with ThreadPoolExecutor(3) as pool:
        futures = {
            n: pool.submit(run_case, n, root, tiny_tin_dir, tin_tools.zip_dir) for n in CASES
        }
    return {n: f.result() for n, f in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_line(name: str, outcomes: dict[str, Outcome]) -> None:
    o = outcomes[name]
    lines = [ln for ln in re.split(r"[\r\n]", o.stderr) if ln.strip() and not TQDM.search(ln)]
    assert o.rc == 2, o.stderr[-3000:]
    assert "Traceback" not in o.stderr
    assert len(lines) == 1 and lines[0].startswith("vitmim: error: "), lines
    assert CASES[name][1] in lines[0]
    assert not [e for e in o.cache_entries if e.startswith(".tmp-")], "half-built cache left"
    if name == "full disk":  # what was written before the disk filled stays whole and usable
        assert not [p for p in o.after if Path(p).name.startswith(".")], o.after
        assert "model.safetensors" not in o.after
        assert checkpoint.latest_checkpoint(o.out) is not None
    else:
        assert o.after == o.before, "the command changed its output folder"


def test_archive_entries_escaping_the_folder_are_never_written(
    tmp_path: Path, tiny_tin: Path
) -> None:
    """Zip-slip: members named ../x or /x are skipped; nothing is written outside the cache."""
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(tiny_tin) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        for name in (
            "../../escaped.JPEG",
            "/tmp/escaped-abs.JPEG",
            "tiny-imagenet-200/train/n02000003/images/../../../../escaped2.JPEG",
        ):
            dst.writestr(name, image_bytes(1))
    cfg = load_config(
        [], ["data.classes=null", f"data.path={evil}", f"data.cache_dir={tmp_path / 'cache'}"]
    )
    train, val = load_splits(cfg.data, 64, progress=False)
    assert len(train) == 48 and val is not None and len(val) == 12
    assert not list(tmp_path.rglob("escaped*")) and not Path("/tmp/escaped-abs.JPEG").exists()
