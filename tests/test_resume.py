"""Exact resumption: a run SIGKILLed at arbitrary points and resumed with ``--resume`` ends with
weights bit-for-bit equal to an uninterrupted run (CPU, same seed), in both stages.

Each chain kills one real ``vitmim`` process after another at a different kind of point (inside
a checkpoint write, between steps, from outside at a moment of the kernel's choosing), corrupts
a checkpoint once, and resumes each time. The kill points come from a small hook that wraps the
CLI (:data:`HOOK`); it changes nothing else, so an unhooked run is the reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Runs vitmim.cli.main after installing the faults named in $VITMIM_TEST_FAULT, a comma list of
#   step:K      SIGKILL just before training step K
#   replace:K   SIGKILL inside the rename of checkpoint K's weights (a temp file is left)
#   json:K      SIGKILL after checkpoint K's weights are written, before its JSON
#   slow:K      sleep 0.2 s before each step >= K (gives an outside killer time to act)
#   nan:K       the loss of step K is NaN once per process (weights turn NaN too)
#   nanfrom:K   the loss of every step >= K is NaN
#   wait:K      before step K, wait until the file $VITMIM_TEST_GO exists
#   shalog:PATH append "step sha256" of every checkpoint written to PATH
HOOK = r"""
import os, signal, sys, time
from pathlib import Path
from vitmim import checkpoint, engine
from vitmim.cli import main

faults = dict(f.split(":", 1) for f in os.environ.get("VITMIM_TEST_FAULT", "").split(",") if f)
at = {k: int(v) for k, v in faults.items() if k != "shalog"}
nan_done = []


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


train_step = engine.Trainer.train_step
def hooked_step(self, idx):
    if self.step == at.get("step"):
        kill()
    if self.step >= at.get("slow", 1 << 60):
        time.sleep(0.2)
    if self.step == at.get("wait"):
        while not Path(os.environ["VITMIM_TEST_GO"]).exists():
            time.sleep(0.05)
    nan = (self.step == at.get("nan") and not nan_done) or self.step >= at.get("nanfrom", 1 << 60)
    if nan:
        nan_done.append(self.step)
        loss_fn = self.task.loss
        self.task.loss = lambda model, batch: loss_fn(model, batch) * float("nan")
        try:
            return train_step(self, idx)
        finally:
            del self.task.loss
    return train_step(self, idx)
engine.Trainer.train_step = hooked_step

replace = os.replace
def hooked_replace(src, dst):
    if Path(dst).name == f"step_{at.get('replace', -1):08d}.safetensors":
        kill()
    return replace(src, dst)
os.replace = hooked_replace

write_json = checkpoint.write_json
def hooked_write_json(path, obj):
    if Path(path).name == f"step_{at.get('json', -1):08d}.json":
        kill()
    return write_json(path, obj)
checkpoint.write_json = hooked_write_json

save_checkpoint = engine.save_checkpoint
def hooked_save_checkpoint(run_dir, step, tensors, state):
    path = save_checkpoint(run_dir, step, tensors, state)
    if "shalog" in faults:
        with open(faults["shalog"], "a") as f:
            f.write(f"{step} {checkpoint.sha256(path)}\n")
    return path
engine.save_checkpoint = hooked_save_checkpoint

sys.exit(main(sys.argv[1:]))
"""

# Tiny model of the smoke preset on the 4-class fake archive: 48 training images.
# pretrain: batch 8 -> 6 steps/epoch x 3 = 18 steps; finetune: 6 steps/epoch x 2 = 12 steps.
# checkpoint_every=4 puts checkpoints mid-epoch (4, 8, 16) as well as at epoch ends (6, 12, 18).
COMMON = [
    "--preset",
    "smoke",
    "--set",
    "data.classes=null",
    "--set",
    "device=cpu",
    "--set",
    "checkpoint_every=4",
]
PRETRAIN = [
    "pretrain",
    *COMMON,
    "--set",
    "pretrain.batch_size=8",
    "--set",
    "pretrain.epochs=3",
    "--set",
    "pretrain.ema=0.9",
    "--set",
    "pretrain.augment.trivial_augment=true",
    "--set",
    "pretrain.augment.erasing=0.25",
]
FINETUNE = [
    "finetune",
    *COMMON,
    "--set",
    "finetune.batch_size=8",
    "--set",
    "finetune.epochs=2",
    "--set",
    "finetune.augment.mixup=0.2",
    "--set",
    "finetune.augment.cutmix=0.2",
]
TIMEOUT = 180  # s per process: generous, the machine is shared


def hook_file(tmp_path: Path) -> Path:
    path = tmp_path / "vitmim_hooked.py"
    if not path.exists():
        path.write_text(HOOK)
    return path


def start(tmp_path: Path, args: list[str], fault: str = "", **env: str) -> subprocess.Popen:
    """A ``vitmim`` process (through the hook) with ``fault`` installed; output to files."""
    env = {**os.environ, "VITMIM_TEST_FAULT": fault, **env}
    log = tmp_path / f"log-{time.monotonic_ns()}"
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(hook_file(tmp_path)), *args], env=env, stdout=out, stderr=err
        )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) of a finished process started by :func:`start`."""
    return Path(f"{proc.log}.out").read_text(), Path(f"{proc.log}.err").read_text()


def run(tmp_path: Path, args: list[str], fault: str = "", **env: str) -> tuple[int, str, str]:
    """Run to the end; (exit code, stdout, stderr)."""
    proc = start(tmp_path, args, fault, **env)
    rc = proc.wait(TIMEOUT)
    return rc, *output(proc)


def interrupted(tmp_path: Path, args: list[str], fault: str) -> None:
    """Run a process that the hook SIGKILLs; check it died that way and shipped no model."""
    rc, out, err = run(tmp_path, args, fault)
    assert rc == -signal.SIGKILL, f"expected a SIGKILL at {fault}, got exit {rc}: {err[-2000:]}"
    out_dir = Path(args[args.index("--out") + 1])
    assert not (out_dir / "model.safetensors").exists()


def killed_from_outside(tmp_path: Path, args: list[str], after: Path, slow_from: int) -> None:
    """SIGKILL from this process as soon as the checkpoint JSON ``after`` appears."""
    proc = start(tmp_path, args, f"slow:{slow_from}")
    deadline = time.monotonic() + TIMEOUT
    while not after.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(TIMEOUT) == -signal.SIGKILL, output(proc)[1][-2000:]


def resumed(tmp_path: Path, args: list[str], fault: str = "") -> str:
    """``--resume``; returns stderr. With ``fault`` it must be killed again."""
    if fault:
        interrupted(tmp_path, [*args, "--resume"], fault)
        return ""
    rc, _, err = run(tmp_path, [*args, "--resume"])
    assert rc == 0, err[-3000:]
    return err


def assert_same_run(run: Path, reference: Path) -> None:
    """Final weights bit-for-bit equal; metrics equal except wall-clock ones."""
    a, b = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"

    def records(d: Path) -> list[dict]:
        lines = (d / "metrics.jsonl").read_text().splitlines()
        return [
            {
                k: v
                for k, v in json.loads(ln).items()
                if k not in ("images_per_s", "time_s", "cpu_s")
            }
            for ln in lines
        ]

    assert records(run) == records(reference)


def assert_clean_checkpoints(run_dir: Path) -> None:
    """No temp files and no weights without their JSON are left by the killed processes."""
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert not [n for n in names if n.startswith(".")], names
    for weights in (run_dir / "checkpoints").glob("step_*.safetensors"):
        assert weights.with_suffix(".json").exists(), weights


def ckpt(run_dir: Path, step: int, suffix: str = "json") -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}.{suffix}"


def run_reference(tmp: Path, data: Path) -> dict[str, Path]:
    """Uninterrupted pretrain, then finetune initialised from it (the hook with no fault)."""
    pre, ft = tmp / "pretrain", tmp / "finetune"
    for args in (
        [*PRETRAIN, "--data", str(data), "--out", str(pre)],
        [*FINETUNE, "--data", str(data), "--out", str(ft), "--init", str(pre)],
    ):
        rc, _, err = run(tmp, args)
        assert rc == 0, err[-3000:]
    return {"pretrain": pre, "finetune": ft}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_tin: Path):
    """The reference runs, computed in a thread while the first kill chain runs beside them."""
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(run_reference, tmp_path_factory.mktemp("reference"), tiny_tin)


def test_pretrain_killed_three_times_resumes_bit_exact(
    tmp_path: Path, tiny_tin: Path, reference: Future
) -> None:
    out = tmp_path / "run"
    args = [*PRETRAIN, "--data", str(tiny_tin), "--out", str(out)]
    # 1. inside the very first checkpoint: weights on disk, no JSON -> resume starts afresh
    interrupted(tmp_path, args, "json:0")
    assert ckpt(out, 0, "safetensors").exists() and not ckpt(out, 0).exists()
    # 2. inside the rename of step 8's weights (epoch 2, mid-epoch): a temp file is left
    resumed(tmp_path, args, "replace:8")
    assert list((out / "checkpoints").glob(".step_00000008.safetensors.*.tmp"))
    # 3. from outside, at whatever point after the end of epoch 2 (step 12) the kernel picks
    killed_from_outside(tmp_path, [*args, "--resume"], ckpt(out, 12), slow_from=12)
    # the newest checkpoint is then truncated: resume warns and falls back to the older one
    newest = max((out / "checkpoints").glob("step_*.json")).with_suffix(".safetensors")
    newest.write_bytes(newest.read_bytes()[:1000])
    err = resumed(tmp_path, args)
    assert "corrupted or incomplete" in err and newest.name in err
    assert_same_run(out, reference.result()["pretrain"])
    assert_clean_checkpoints(out)


def test_finetune_killed_twice_resumes_bit_exact(
    tmp_path: Path, tiny_tin: Path, reference: Future
) -> None:
    out = tmp_path / "run"
    args = [
        *FINETUNE,
        "--data",
        str(tiny_tin),
        "--out",
        str(out),
        "--init",
        str(reference.result()["pretrain"]),
    ]
    # 1. just before step 3 (only the step-0 checkpoint exists)
    interrupted(tmp_path, args, "step:3")
    # 2. at the end of the last epoch: its metrics record is written, its checkpoint is not
    resumed(tmp_path, args, "json:12")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    resumed(tmp_path, args)
    assert_same_run(out, reference.result()["finetune"])
    assert_clean_checkpoints(out)
