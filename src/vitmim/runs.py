"""The run folder: one training stage's files, and the only module that reads or writes them.

RUN/config.yaml         the resolved config (written once the folder is known to fit)
RUN/manifest.json       what reproduces the run: command, commit, packages, device, data
RUN/.lock               held while a process trains here
RUN/metrics.jsonl       one JSON record per epoch
RUN/checkpoints/        step_XXXXXXXX.{safetensors,json} (see :mod:`vitmim.checkpoint`)
RUN/model.safetensors   the final model; RUN/model.json describes it (kind, config, classes,
                        metrics, sha256): both present = the stage is finished
RUN/best.safetensors    the epoch with the best ``keep_best`` metric so far; RUN/best.json
                        describes it as model.json does, plus ``best`` (metric, value, epoch)
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Literal, cast

import torch
import yaml
from torch import nn

from vitmim import checkpoint
from vitmim.baselines import RESTORER_KEYS
from vitmim.config import (
    POOLS,
    Config,
    dump,
    flatten,
    load_config,
    load_yaml,
    read_json_mapping,
    read_jsonl,
    to_dict,
)
from vitmim.data import AUTO_RESIZE, ImageSet, default_classes, resolve_data_path, source_kind
from vitmim.env import Env
from vitmim.errors import CheckpointError, ConfigError

METRICS = "metrics.jsonl"
MODEL = "model.safetensors"
BEST = "best.safetensors"
# written into a folder of stage folders (`vitmim run --out`, a grid cell) before its stages
PARENT_MARKERS = ("summary.json", "cell.json")


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock``: a second process on the same folder is refused.
    The kernel drops it when the holder dies, so a SIGKILLed run can be resumed at once."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CheckpointError(
                f"{run_dir}: cannot write the run folder ({e.strerror})"
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise CheckpointError(
                f"{run_dir}: in use by another vitmim process; wait for it or choose another --out"
            ) from None
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
# whose folder is it


def json_object(path: Path) -> dict:
    """A JSON file's top-level object; empty when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_run(folder: Path) -> bool:
    """``folder`` holds a vitmim run: its manifest, config, checkpoints or final model."""
    ckpt = next(folder.glob("checkpoints/step_*.json"), None)
    return (
        {"data_fingerprint", "packages"} <= set(json_object(folder / "manifest.json"))
        or {"data", "model", "pretrain", "finetune"} <= set(_yaml_mapping(folder / "config.yaml"))
        or ckpt is not None
        and {"stage", "sha256"} <= set(json_object(ckpt))
        or "sha256" in json_object(folder / "model.json")
    )


def _yaml_mapping(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------
# config and manifest: what the run is, and refusing to continue it as something else

# where and how fast a run trains, not what it learns: a run may continue on another device, or
# with its data at another path (the data's content fingerprint is compared instead)
SETTINGS_KEYS = frozenset(
    {
        "device",
        "amp",
        "compile",
        "checkpoint_every",
        "data.path",
        "data.cache_dir",
        "pretrain.keep_best",  # which weights are kept besides the last, not what is learned
        "finetune.keep_best",
    }
)


def absolute_data(cfg: Config) -> Config:
    """``cfg`` with ``data.path`` the absolute path of the data it reads (``$VITMIM_DATA`` or the
    default download resolved), so that a run folder names its data from any working folder, and
    ``data.classes: auto`` resolved for that source (10 for Tiny ImageNet, else all). So is
    ``data.resize: auto`` outside Tiny ImageNet (``fit``): the run's images then say how a
    single image must be brought to size for its model (``vitmim predict``, the export)."""
    path = os.path.abspath(resolve_data_path(cfg.data.path, cfg.data.cache_dir))
    pool = cfg.pretrain.pool if cfg.pretrain.pool in POOLS else os.path.abspath(cfg.pretrain.pool)
    if (cfg.data.path, cfg.pretrain.pool) == (path, pool) and "auto" not in (
        cfg.data.classes,
        cfg.data.resize,
    ):
        return cfg
    out = copy.deepcopy(cfg)
    out.data.path, out.pretrain.pool = path, pool
    if "auto" in (out.data.classes, out.data.resize):
        kind = source_kind(out.data)
        if out.data.classes == "auto":
            out.data.classes = default_classes(kind)
        if out.data.resize == "auto" and kind != "tin":  # TIN's auto: refuse other sizes
            out.data.resize = cast(Literal["fit"], AUTO_RESIZE[kind])
    return out


def run_keys(cfg: Config | dict) -> dict:
    """The dotted keys of a config that define what a run learns (not :data:`SETTINGS_KEYS`)."""
    values = flatten(cfg if isinstance(cfg, dict) else to_dict(cfg))
    if values.get("pretrain.pool", "classes") not in POOLS:  # like data.path: by content
        values["pretrain.pool"] = "<path>"
    return {k: v for k, v in values.items() if k not in SETTINGS_KEYS}


def restorer_keys(cfg: Config | dict) -> dict:
    """The keys that shape a pre-trained restorer: fine-tuning and the share of labels do not,
    so a restorer serves every config that agrees on these (the pre-training never sees a
    label). A restorer of a pool other than the fine-tuning classes (``pretrain.pool``) serves
    every class selection; one of a path pool, any path with the same images (compared by
    content, as ``data.path`` is)."""
    keys = {
        k: v
        for k, v in run_keys(cfg).items()
        if k.startswith(("data.", "model.", "pretrain.")) and k != "data.label_fraction"
    }
    pool = keys.get("pretrain.pool", "classes")
    if pool != "classes":
        for key in ("data.classes", "data.class_seed", "data.class_subset"):
            keys.pop(key, None)
    if pool not in POOLS:
        keys.pop("data.source", None)
    return keys


def classifier_keys(cfg: Config | dict) -> dict:
    """The keys that shape a classifier trained from random weights (a baseline's stage): what
    shapes only pre-training (its section, the restorer's decoder) does not, so regimes that
    pre-train differently have baselines that train the same classifier where these agree."""
    return {
        k: v
        for k, v in run_keys(cfg).items()
        if not k.startswith("pretrain.") and k not in RESTORER_KEYS
    }


def config_fingerprint(cfg: Config) -> str:
    """sha256 of the config's keys that define the run (not :data:`SETTINGS_KEYS`)."""
    return hashlib.sha256(json.dumps(run_keys(cfg), sort_keys=True).encode()).hexdigest()


def differing_key(
    saved: Config | dict, cfg: Config | dict, keys: Callable[[Config | dict], dict] = run_keys
) -> str | None:
    """The first key of ``keys`` whose value differs between a saved config and ``cfg``, as
    ``key=old -> new``; None when they define the same run. A key the saved config lacks
    matches at its default: one added to vitmim since the run was made keeps, by design, the
    old behaviour at its default."""
    unset = "<unset>"  # a key one of the two configs does not have
    old, new, defaults = keys(saved), keys(cfg), keys(Config())
    for key in dict.fromkeys([*new, *old]):
        if key not in old and key in defaults and new.get(key, unset) == defaults[key]:
            continue
        if old.get(key, unset) != new.get(key, unset):
            return f"{key}={old.get(key, unset)!r} -> {new.get(key, unset)!r}"
    return None


def _has_trained(run_dir: Path) -> bool:
    """``run_dir`` holds something a run trained: checkpoints, epoch records or a final model."""
    return (
        any(run_dir.glob("checkpoints/step_*.json"))
        or (run_dir / METRICS).exists()
        or (run_dir / MODEL).exists()
    )


def _unknown_run(run_dir: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{run_dir}: holds a run without {what}, so whether it is this one cannot "
        f"be told; delete the folder to start afresh, or choose another --out"
    )


def check_same_config(
    run_dir: Path, cfg: Config, keys: Callable[[Config | dict], dict] = run_keys
) -> None:
    """Refuse to continue or reuse the run in ``run_dir`` with another config, naming the first
    differing key of ``keys`` (:func:`restorer_keys` for a pre-training). Without a readable
    config.yaml the manifest's config fingerprint is compared (which covers every run key); a
    trained folder with neither is refused (nothing proves it is the same run)."""
    saved = _yaml_mapping(run_dir / "config.yaml")
    if not saved:
        recorded = json_object(run_dir / "manifest.json").get("config_fingerprint")
        if recorded is None and _has_trained(run_dir):
            raise _unknown_run(run_dir, "a readable config.yaml or manifest.json")
        if recorded is not None and recorded != config_fingerprint(cfg):
            raise CheckpointError(
                f"{run_dir}: holds a run made with another config (its "
                f"config.yaml is missing or damaged; manifest.json records another "
                f"config fingerprint); use the same settings, or choose another --out"
            )
        return
    diff = differing_key(saved, cfg, keys)
    if diff:
        key, _, change = diff.partition("=")
        was, now = change.split(" -> ", 1)
        raise CheckpointError(
            f"{run_dir}: holds a run made with {key}={was}, not {now}; use the same "
            f"settings to continue it, or choose another --out"
        )


def check_same_data(run_dir: Path, data_fingerprint: str) -> None:
    """Refuse to continue or reuse the run in ``run_dir`` on other data (by content: the same
    data at another path is the same run); a trained folder whose manifest does not record its
    data is refused."""
    recorded = json_object(run_dir / "manifest.json")
    if "data_fingerprint" not in recorded:
        if _has_trained(run_dir):
            raise _unknown_run(run_dir, "a manifest.json that records its data")
        return
    if recorded["data_fingerprint"] != data_fingerprint:
        where = recorded.get("data", {}).get("path", "another data set")
        raise CheckpointError(
            f"{run_dir}: holds a run on other data (made from {where}); pass the "
            f"same data to continue it, or choose another --out"
        )


def check_same_stage(run_dir: Path, stage: str) -> None:
    """Refuse to train one stage in the folder of another (a pre-training in a fine-tune's)."""
    recorded = json_object(run_dir / "manifest.json").get("stage")
    if recorded not in (None, stage):
        raise CheckpointError(
            f"{run_dir}: holds a {recorded} run, not a {stage} run; choose another --out"
        )


def check_same_init(run_dir: Path, init_sha256: str | None) -> None:
    """Refuse to continue or reuse a fine-tune from other starting weights (by content)."""
    recorded = json_object(run_dir / "manifest.json")
    if "init_sha256" in recorded and recorded["init_sha256"] != init_sha256:
        was = recorded.get("init") or "random weights"
        raise CheckpointError(
            f"{run_dir}: holds a fine-tune started from {was}, not from "
            f"{'these weights' if init_sha256 else 'random weights'}; pass the same "
            f"--init to continue it, or choose another --out"
        )


def manifest(cfg: Config, env: Env, data: ImageSet, extra: dict | None = None) -> dict:
    """Everything needed to reproduce a run."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = (
        torch.cuda.get_device_name(env.device)
        if env.device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    return {
        "command": sys.argv,
        "git_commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": platform.python_version(),
        "packages": {
            "torch": torch.__version__,
            **{  # read without importing them
                name: version(name) for name in ("torchvision", "timm", "numpy")
            },
        },
        "device": str(env.device),
        "device_name": device,
        "world_size": env.world,
        "threads": torch.get_num_threads(),
        "config_fingerprint": config_fingerprint(cfg),
        "data": {"path": cfg.data.path, "fingerprint": data.fingerprint},
        "data_fingerprint": data.fingerprint,
        "classes": data.classes,
        "train_images": len(data),
        **(extra or {}),
    }


def device_kind(device: object) -> str:
    """The type of a recorded device (``cuda:1`` -> ``cuda``; none recorded: ``cpu``): costs
    measured on one type say nothing of another's."""
    return str(device or "cpu").split(":")[0]


def core_seconds(epochs: list[dict], manifest: dict) -> float | None:
    """What a stage's epochs cost, from its metrics and manifest: on a CPU, the CPU seconds of
    its processes (``cpu_s``; an epoch logged without it: wall time x threads, an upper bound on
    a busy machine); on a GPU, wall time x processes (GPU-seconds). None where an epoch lacks
    its times."""
    if any(e.get("time_s") is None for e in epochs):
        return None
    procs = manifest.get("world_size") or 1
    if device_kind(manifest.get("device")) == "cuda":
        return sum(e["time_s"] for e in epochs) * procs
    threads = manifest.get("threads") or 1
    return (
        sum(e["cpu_s"] if e.get("cpu_s") is not None else e["time_s"] * threads for e in epochs)
        * procs
    )


def cost_is_bound(epochs: list[dict], manifest: dict) -> bool:
    """Whether :func:`core_seconds` of these epochs is only an upper bound: a CPU stage with an
    epoch logged without its CPU time (wall time x threads counts a busy machine's waiting)."""
    cpu = device_kind(manifest.get("device")) != "cuda"
    return cpu and any(e.get("cpu_s") is None for e in epochs)


def open_run(
    run_dir: Path, cfg: Config, env: Env, data: ImageSet, extra: dict | None = None
) -> None:
    """Write config.yaml and manifest.json (main process); refuse an unwritable folder."""
    if not env.main:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(run_dir / "config.yaml", dump(cfg))
        checkpoint.write_json(run_dir / "manifest.json", manifest(cfg, env, data, extra))
    except OSError as e:
        raise CheckpointError(f"{run_dir}: cannot write the run folder ({e.strerror})") from None


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


def class_count(*run_dirs: Path) -> int | None:
    """The number of classes the first of ``run_dirs`` whose manifest records them trained on;
    None when none does."""
    for run_dir in run_dirs:
        classes = json_object(run_dir / "manifest.json").get("classes")
        if isinstance(classes, list):
            return len(classes)
    return None


def last_metrics(run_dir: Path) -> dict:
    """The newest epoch record; empty when there is none."""
    return (read_metrics(run_dir) or [{}])[-1]


# ---------------------------------------------------------------------------------------------
# the final model


def finished(run_dir: Path) -> bool:
    """A run is finished when its final model has been written."""
    return (run_dir / MODEL).exists() and (run_dir / MODEL).with_suffix(".json").exists()


def share_left(run_dir: Path, stage: str) -> float:
    """The share of a stage's epochs still to train, for estimates: none once finished, all
    until a checkpoint holds some (counted against the epochs of the config the stage started
    with, which for an equal-compute baseline is its extended length)."""
    if finished(run_dir):
        return 0.0
    done = checkpoint.checkpoint_epoch(run_dir)
    epochs = _yaml_mapping(run_dir / "config.yaml").get(stage, {}).get("epochs")
    if not done or not isinstance(epochs, int | float) or epochs <= 0:
        return 1.0
    return max(0.0, 1.0 - done / epochs)


def model_description(kind: str, cfg: Config, data: ImageSet, metrics: dict) -> dict:
    """What model.json (and best.json) say of the weights beside them."""
    return {
        "kind": kind,
        "config": to_dict(cfg),
        "classes": data.classes,
        "class_names": data.class_names,
        "metrics": metrics,
    }


def save_final(
    run_dir: Path, model: nn.Module, kind: str, cfg: Config, data: ImageSet, metrics: dict
) -> None:
    """model.safetensors and model.json (which makes the run finished)."""
    checkpoint.save_weights(
        run_dir / MODEL, model.state_dict(), meta=model_description(kind, cfg, data, metrics)
    )


# keep_best's metrics per stage, and whether a larger value is better
BEST_METRICS = {
    "pretrain": {"val_psnr": True, "val_pixel_l1": False, "val_loss": False},
    "finetune": {"val_top1": True, "val_top5": True, "val_loss": False},
}


class BestKeeper:
    """Keeps RUN/best.safetensors: the weights of the epoch whose record holds the best value of
    ``metric`` so far (the first such epoch on a tie), described like the final model plus
    ``best``: {metric, value, epoch, step}.

    Args:
        describe: the record's description of the weights (:func:`model_description`) for the
            epoch's metrics.
    """

    def __init__(self, run_dir: Path, stage: str, metric: str, describe: Callable[[dict], dict]):
        self.path, self.stage, self.metric = run_dir / BEST, stage, metric
        self.higher = BEST_METRICS[stage][metric]
        self.describe = describe
        self.value: float | None = None
        self.missing_told = False

    def start(self, step: int) -> None:
        """Take up the best model kept up to optimisation step ``step`` (a resumed run); one of
        a later step, or of an earlier run in this folder, is deleted: its epochs are redone."""
        kept = json_object(self.path.with_suffix(".json")).get("best") or {}
        if kept.get("metric") == self.metric and kept.get("step", step + 1) <= step:
            self.value = kept.get("value")
            return
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".json").unlink(missing_ok=True)

    def update(self, model: nn.Module, record: dict) -> None:
        """After an epoch: keep ``model`` when ``record``'s metric beats the best so far."""
        value = record.get(self.metric)
        if value is None:
            if not self.missing_told:
                print(
                    f"{self.stage}.keep_best={self.metric}: not measured (no validation "
                    f"images); only the last model is kept",
                    flush=True,
                )
                self.missing_told = True
            return
        if self.value is not None and (value <= self.value if self.higher else value >= self.value):
            return
        best = {"metric": self.metric, "value": value, "epoch": record["epoch"]}
        meta = {**self.describe(record), "best": {**best, "step": record["step"]}}
        checkpoint.save_weights(self.path, model.state_dict(), meta=meta)
        self.value = value


def best_keeper(
    run_dir: Path, stage: str, kind: str, cfg: Config, data: ImageSet
) -> BestKeeper | None:
    """The stage's :class:`BestKeeper`, or None with ``keep_best: none``."""
    metric = getattr(cfg, stage).keep_best
    if metric == "none":
        return None
    return BestKeeper(
        run_dir, stage, metric, lambda record: model_description(kind, cfg, data, record)
    )


def model_file(run: Path, which: str = "last") -> Path:
    """The weights a command reads: ``last``, ``run`` itself (a run folder's final model, or a
    weights file); ``best``, the run folder's kept best epoch."""
    if which == "last":
        return run
    if not run.is_dir():
        raise CheckpointError(f"{run}: checkpoint best needs a run folder, not a weights file")
    if not (run / BEST).exists():
        raise CheckpointError(
            f"{run}: no best model kept ({BEST} is missing: the run was made with "
            f"keep_best none, measured no validation metric, or by an older vitmim)"
        )
    return run / BEST


def read_model(
    path: str | Path, described: bool = True
) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """A final model: a run folder (its model.safetensors) or a weights file.

    Returns the tensors, the JSON description beside the weights (empty when ``described`` is
    False and there is none) and the weights file's path. With ``described`` a missing
    description is refused: the kind, config and classes of the model come from it. The weights
    must match the sha256 that the description recorded.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MODEL
    meta_path = p.with_suffix(".json")
    meta: dict = {}
    if meta_path.exists():
        meta = read_json_mapping(
            meta_path,
            "model description",
            {"kind": str, "config": dict, "classes": list, "class_names": list},
        )
        if len(meta["classes"]) != len(meta["class_names"]):
            raise CheckpointError(
                f"{meta_path}: model description: {len(meta['classes'])} classes "
                f"but {len(meta['class_names'])} class names"
            )
        try:
            load_config(base=meta["config"])
        except ConfigError as e:
            raise ConfigError(f"{meta_path}: {e}") from None
    elif described and p.exists():
        raise CheckpointError(f"{meta_path}: missing; it describes the model in {p}")
    return checkpoint.load_weights(p, meta.get("sha256")), meta, p
