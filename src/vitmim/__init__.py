"""vitmim: masked-pixel pre-training of vision transformers for small image data sets.

The Python API does what the command line does, for notebooks and scripts::

    import vitmim
    pre = vitmim.pretrain(data="tiny-imagenet-200.zip", out="runs/pre", preset="smoke")
    ft = vitmim.finetune(init=pre.run_dir, data="tiny-imagenet-200.zip", out="runs/ft",
                         preset="smoke", finetune__epochs=3)
    ft.metrics["val_top1"]
    vitmim.predict(ft.run_dir, ["cat.jpg"])

The config is built as on the command line: defaults <- ``preset`` <- ``config`` files <-
``overrides`` (``{"pretrain.mask_ratio": 0.4}`` or ``["pretrain.mask_ratio=0.4"]``) <- keyword
overrides, where ``__`` stands for the dot (``pretrain__mask_ratio=0.4``). Anything a user can get
wrong raises a :class:`UserError` subclass (:class:`ConfigError`, :class:`DataError`,
:class:`CheckpointError`) with a one-line message.

Importing vitmim is cheap: torch and the rest load with the first call that needs them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitmim.errors import CheckpointError, ConfigError, DataError, UserError

__all__ = ["CheckpointError", "ConfigError", "DataError", "PipelineResult", "RunResult",
           "UserError", "evaluate", "export", "finetune", "predict", "pretrain", "reconstruct",
           "report", "run"]

Overrides = dict[str, Any] | list[str] | None


@dataclass
class RunResult:
    """A finished training run: its folder and its last epoch's metrics (``metrics.jsonl``)."""

    run_dir: Path
    metrics: dict[str, Any]

    @property
    def model_path(self) -> Path:
        """The final weights (``model.safetensors``; ``model.json`` beside it describes them)."""
        return self.run_dir / "model.safetensors"

    @property
    def metrics_path(self) -> Path:
        """One JSON record per epoch."""
        return self.run_dir / "metrics.jsonl"


@dataclass
class PipelineResult:
    """``run()``: the runs under ``out`` by name (pretrain, finetune, scratch, and with
    ``equal_compute`` scratch_long or scratch_flops) and the summary table (Markdown)."""

    out: Path
    runs: dict[str, RunResult]
    summary: str


def _path(value: Any, name: str) -> Path:
    """``value`` as a Path; anything but a str or path-like object is refused in one line."""
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name}={value!r}: expected a path (str or pathlib.Path), not "
                          f"{type(value).__name__}")
    return Path(value)


def _paths(values: Any, name: str, empty: bool = False) -> list[Path]:
    """A list of paths; a lone string (which would be read character by character) or an
    empty list (unless ``empty``) is refused."""
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name}={values!r}: expected a list of paths, e.g. [{values!r}]")
    if not values and not empty:
        raise ConfigError(f"{name}: an empty list; give at least one path")
    return [_path(v, name) for v in values]


def _config(data: str | Path | None, preset: str | None, config: list[str | Path] | tuple,
            overrides: Overrides, dotted: dict[str, Any]):
    """The Config from keyword arguments, validated before any work starts."""
    from vitmim.config import load_config
    files = [_preset_file(preset)] if preset else []
    texts = _override_texts(overrides, dotted)
    if data is not None:
        texts.append(f"data.path={json.dumps(str(_path(data, 'data')))}")
    return load_config([*files, *_paths(config, "config", empty=True)], texts)


def _override_texts(overrides: Overrides, dotted: dict[str, Any]) -> list[str]:
    """``--set`` texts from a dict, a list of ``key=value`` texts and ``a__b=`` keywords."""
    if not (overrides is None or isinstance(overrides, dict) or isinstance(
            overrides, (list, tuple)) and all(isinstance(t, str) for t in overrides)):
        raise ConfigError(f"overrides={overrides!r}: expected a dict ({{'key': value}}) or a "
                          f"list of 'key=value' texts")
    texts = list(overrides) if isinstance(overrides, (list, tuple)) else [
        f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]  # JSON values are YAML
    return texts + [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in dotted.items()]


def _preset_file(name: str) -> Path:
    from vitmim.config import preset_file
    return preset_file(name)


def _env(cfg):
    """Device and precision as the command line picks them (torchrun's variables included)."""
    from vitmim.engine import env_for
    return env_for(cfg)


def pretrain(*, out: str | Path, data: str | Path | None = None, preset: str | None = None,
             config: list[str | Path] | tuple = (), overrides: Overrides = None,
             resume: bool = False, log: str | None = None, log_every: int = 50,
             progress: bool = True, **dotted: Any) -> RunResult:
    """Masked-pixel pre-training of a restorer in ``out`` (``vitmim pretrain``).

    Args:
        out: run folder. data: data set path (default: ``$VITMIM_DATA``).
        resume: continue an interrupted run. log: ``"tensorboard"`` mirrors the metrics to
            ``out/tensorboard`` (training loss every ``log_every`` steps). progress: bars and
            one line per epoch.
    """
    from vitmim.stages import pretrain as run_pretrain
    from vitmim.tracking import tracking
    cfg = _config(data, preset, config, overrides, dotted)
    with tracking(log, log_every):
        metrics = run_pretrain(cfg, _path(out, "out"), _env(cfg), resume=resume,
                               progress=progress)
    return RunResult(Path(out), metrics)


def finetune(*, out: str | Path, init: str | Path | None = None, data: str | Path | None = None,
             preset: str | None = None, config: list[str | Path] | tuple = (),
             overrides: Overrides = None, resume: bool = False, log: str | None = None,
             log_every: int = 50, progress: bool = True, **dotted: Any) -> RunResult:
    """Fine-tune a classifier in ``out`` from ``init`` (a pre-trained run folder or weights
    file), or from scratch without it (``vitmim finetune``). Other arguments as :func:`pretrain`.
    """
    from vitmim.stages import finetune as run_finetune
    from vitmim.tracking import tracking
    cfg = _config(data, preset, config, overrides, dotted)
    with tracking(log, log_every):
        metrics = run_finetune(cfg, _path(out, "out"), _env(cfg),
                               init=None if init is None else _path(init, "init"), resume=resume,
                               progress=progress)
    return RunResult(Path(out), metrics)


def run(*, out: str | Path = "runs/run", data: str | Path | None = None,
        preset: str | None = None, config: list[str | Path] | tuple = (),
        overrides: Overrides = None, equal_compute: str | None = None, resume: bool = False,
        log: str | None = None, log_every: int = 50, **dotted: Any) -> PipelineResult:
    """Pre-train, fine-tune, train the scratch baseline (``vitmim run``); ``equal_compute``
    ("steps" or "flops") adds scratch trained as long as both stages together."""
    from vitmim.stages import BASELINES, run_all, summary_table
    from vitmim.tracking import tracking
    cfg = _config(data, preset, config, overrides, dotted)
    counts = sorted({by for by in BASELINES.values() if by})
    if equal_compute is not None and equal_compute not in counts:
        raise ConfigError(f"equal_compute={equal_compute!r}: expected None or one of "
                          f"{', '.join(map(repr, counts))}")
    equal = [kind for kind, by in BASELINES.items() if by and by == equal_compute]
    with tracking(log, log_every):
        results = run_all(cfg, _path(out, "out"), _env(cfg), resume=resume,
                          baselines=("scratch", "scratch_tuned", *equal))
    runs = {name: RunResult(Path(out) / name, metrics) for name, metrics in results.items()
            if "step" in metrics}  # a stage that did not train (no tuned recipe) is in .summary
    return PipelineResult(Path(out), runs, summary_table(results))


def evaluate(run: str | Path, data: str | Path | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and loss of a fine-tuned run on the validation split."""
    from vitmim.inference import evaluate_run
    return evaluate_run(_path(run, "run"), str(_path(data, "data")) if data else None)


def predict(run: str | Path, images: list[str | Path], topk: int = 5
            ) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image file."""
    from vitmim.inference import predict as run_predict
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise ConfigError(f"topk={topk!r}: expected an integer >= 1")
    return run_predict(_path(run, "run"), [str(p) for p in _paths(images, "images")], topk)


def reconstruct(run: str | Path, images: list[str | Path], out: str | Path = "reconstruction.png",
                seed: int = 0, overrides: Overrides = None, **dotted: Any) -> Path:
    """PNG grid of original | masked | restored, one row per image; returns its path.
    Overrides change the masking (``pretrain__mask_ratio=0.4``)."""
    from vitmim.inference import reconstruct as run_reconstruct
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: expected an integer")
    return run_reconstruct(_path(run, "run"), [str(p) for p in _paths(images, "images")],
                           _path(out, "out"), _override_texts(overrides, dotted), seed)


def report(runs_dir: str | Path, out: str | Path | None = None) -> Path:
    """Tables, plots and a self-contained HTML page for a grid's run folders; returns the HTML
    page's path."""
    from vitmim.lab.report import build_report
    return build_report(_path(runs_dir, "runs_dir"), None if out is None else _path(out, "out"))


def export(run: str | Path, out: str | Path, format: str = "file", encoder: bool = False
           ) -> Path:
    """Weights for timm: ``format="file"`` one .safetensors (+ .json), ``"timm"`` a model folder
    that ``timm.create_model("local-dir:OUT", pretrained=True)`` loads; ``encoder`` the backbone
    alone."""
    from vitmim.inference import export as run_export
    return run_export(_path(run, "run"), _path(out, "out"), format, encoder)


def __getattr__(name: str):
    if name == "__version__":  # read from the installed metadata only when asked for
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("vitmim")
        except PackageNotFoundError:  # a source tree on PYTHONPATH without an install
            return "0+unknown"
    raise AttributeError(f"module 'vitmim' has no attribute {name!r}")
