"""The run folder: one training stage's files, and the only module that reads or writes them.

    RUN/config.yaml         the resolved config (written once the folder is known to fit)
    RUN/manifest.json       what reproduces the run: command, commit, packages, device, data
    RUN/.lock               held while a process trains here
    RUN/metrics.jsonl       one JSON record per epoch
    RUN/checkpoints/        step_XXXXXXXX.{safetensors,json} (see :mod:`vitmim.checkpoint`)
    RUN/model.safetensors   the final model; RUN/model.json describes it (kind, config, classes,
                            metrics, sha256): both present = the stage is finished
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from vitmim import checkpoint
from vitmim.config import Config, dump, load_config, read_json_mapping, read_jsonl, to_dict
from vitmim.errors import UserError

if TYPE_CHECKING:  # engine imports this module
    from vitmim.data import ImageSet
    from vitmim.engine import Env

METRICS = "metrics.jsonl"
MODEL = "model.safetensors"


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock``: a second process on the same folder is refused.
    The kernel drops it when the holder dies, so a SIGKILLed run can be resumed at once."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{run_dir}: cannot write the run folder ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UserError(f"{run_dir}: in use by another vitmim process; wait for it or "
                            f"choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(run_dir: Path, env: Env):
    """The folder lock, taken by the main process only."""
    return RunLock(run_dir) if env.main else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# config and manifest


def manifest(cfg: Config, env: Env, data: ImageSet, extra: dict | None = None) -> dict:
    """Everything needed to reproduce a run."""
    import numpy
    import timm
    import torchvision
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = (torch.cuda.get_device_name(env.device) if env.device.type == "cuda"
              else platform.processor() or platform.machine())
    return {"command": sys.argv, "git_commit": commit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "python": platform.python_version(),
            "packages": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "timm": timm.__version__, "numpy": numpy.__version__},
            "device": str(env.device), "device_name": device, "world_size": env.world,
            "data_fingerprint": data.fingerprint, "classes": data.classes, **(extra or {})}


def open_run(run_dir: Path, cfg: Config, env: Env, data: ImageSet, extra: dict | None = None
             ) -> None:
    """Write config.yaml and manifest.json (main process); refuse an unwritable folder."""
    if not env.main:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(run_dir / "config.yaml", dump(cfg))
        checkpoint.write_json(run_dir / "manifest.json", manifest(cfg, env, data, extra))
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write the run folder ({e.strerror})") from None


# ---------------------------------------------------------------------------------------------
# metrics: one JSON record per epoch


def append_metrics(run_dir: Path, record: dict) -> None:
    """Append one line; the file is rewritten atomically so a kill never leaves half a line."""
    path = run_dir / METRICS
    old = path.read_text() if path.exists() else ""
    checkpoint.write_text(path, old + json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records written after ``step`` (they are recomputed after a resume)."""
    path = run_dir / METRICS
    if path.exists():
        kept = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= step]
        checkpoint.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(run_dir: Path) -> list[dict]:
    """Every epoch record of a run, oldest first; empty when there is none yet. A damaged line
    is a one-line UserError naming the file and line."""
    return read_jsonl(run_dir / METRICS)


def last_metrics(run_dir: Path) -> dict:
    """The newest epoch record; empty when there is none."""
    return (read_metrics(run_dir) or [{}])[-1]


# ---------------------------------------------------------------------------------------------
# the final model


def finished(run_dir: Path) -> bool:
    """A run is finished when its final model has been written."""
    return (run_dir / MODEL).exists() and (run_dir / MODEL).with_suffix(".json").exists()


def save_final(run_dir: Path, model: nn.Module, kind: str, cfg: Config, data: ImageSet,
               metrics: dict) -> None:
    """model.safetensors and model.json (which makes the run finished)."""
    checkpoint.save_weights(run_dir / MODEL, model.state_dict(), meta={
        "kind": kind, "config": to_dict(cfg), "classes": data.classes,
        "class_names": data.class_names, "metrics": metrics})


def read_model(path: str | Path, described: bool = True
               ) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """A final model: a run folder (its model.safetensors) or a weights file.

    Returns the tensors, the JSON description beside the weights (empty when ``described`` is
    False and there is none) and the weights file's path. With ``described`` a missing
    description is refused: the kind, config and classes of the model come from it.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MODEL
    tensors = checkpoint.load_weights(p)
    meta_path = p.with_suffix(".json")
    if not meta_path.exists():
        if described:
            raise UserError(f"{meta_path}: missing; it describes the model in {p}")
        return tensors, {}, p
    meta = read_json_mapping(meta_path, "model description", {
        "kind": str, "config": dict, "classes": list, "class_names": list})
    if len(meta["classes"]) != len(meta["class_names"]):
        raise UserError(f"{meta_path}: model description: {len(meta['classes'])} classes but "
                        f"{len(meta['class_names'])} class names")
    try:
        load_config(base=meta["config"])
    except UserError as e:
        raise UserError(f"{meta_path}: {e}") from None
    return tensors, meta, p
