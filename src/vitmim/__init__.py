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
:class:`CheckpointError`, :class:`TrainingError`) with a one-line message.

Importing vitmim is cheap: torch and the rest load with the first call that needs them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from vitmim.errors import CheckpointError, ConfigError, DataError, TrainingError, UserError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "PipelineResult",
    "RunResult",
    "TrainingError",
    "UserError",
    "download_data",
    "evaluate",
    "export",
    "finetune",
    "grid",
    "load",
    "load_data",
    "pack_data",
    "predict",
    "pretrain",
    "probe",
    "reconstruct",
    "report",
    "run",
]

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
        raise ConfigError(
            f"{name}={value!r}: expected a path (str or pathlib.Path), not {type(value).__name__}"
        )
    return Path(value)


def _paths(values: Any, name: str, empty: bool = False) -> list[Path]:
    """A list of paths; a lone string (which would be read character by character) or an
    empty list (unless ``empty``) is refused."""
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name}={values!r}: expected a list of paths, e.g. [{values!r}]")
    if not values and not empty:
        raise ConfigError(f"{name}: an empty list; give at least one path")
    return [_path(v, name) for v in values]


def _config(
    data: str | Path | None,
    preset: str | None,
    config: list[str | Path] | tuple,
    overrides: Overrides,
    dotted: dict[str, Any],
    init: str | Path | None = None,
):
    """The Config from keyword arguments, validated before any work starts (and before torch
    is imported: a typo costs a fraction of a second). With ``init``, a trained run, its model
    section is the base (:func:`vitmim.config.load_config_for_init`)."""
    from vitmim.config import load_config, load_config_for_init

    files = [*([_preset_file(preset)] if preset else []), *_paths(config, "config", empty=True)]
    texts = _override_texts(overrides, dotted)
    if data is not None:
        texts.append(f"data.path={json.dumps(str(_path(data, 'data')))}")
    run_model = _run_model(init) if init is not None else None
    if run_model is None:
        return load_config(files, texts)
    return load_config_for_init(files, texts, run_model, str(init))


def _run_model(init: str | Path) -> dict | None:
    """The model section a trained run (folder or weights file) recorded in its ``model.json``;
    None for bare weights."""
    from vitmim.config import read_json_mapping

    p = Path(init)
    meta = (p / "model.json") if p.is_dir() else p.with_suffix(".json")
    if not meta.is_file():
        return None
    model = read_json_mapping(meta, "model description", {"config": dict})["config"].get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{meta}: model description: no model section in its config")
    return model


def _override_texts(overrides: Overrides, dotted: dict[str, Any]) -> list[str]:
    """``--set`` texts from a dict, a list of ``key=value`` texts and ``a__b=`` keywords."""
    if not (
        overrides is None
        or isinstance(overrides, dict)
        or isinstance(overrides, (list, tuple))
        and all(isinstance(t, str) for t in overrides)
    ):
        raise ConfigError(
            f"overrides={overrides!r}: expected a dict ({{'key': value}}) or a "
            f"list of 'key=value' texts"
        )
    texts = (
        list(overrides)
        if isinstance(overrides, (list, tuple))
        else [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]
    )  # JSON values are YAML
    return texts + [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in dotted.items()]


def _preset_file(name: str) -> Path:
    from vitmim.config import preset_file

    return preset_file(name)


def _check_device(device: str) -> None:
    """A misspelt ``device`` refused before torch loads (0.2 s instead of 10 s or more)."""
    from vitmim.config import check_device

    check_device(device)


CHECKPOINTS = ("last", "best")  # which weights of a run a command reads


def _weights(run: Any, checkpoint: str) -> Path:
    """The weights file or run folder a command reads: ``last``, the final model (or the file
    given); ``best``, the run's kept best epoch (``RUN/best.safetensors``, see ``keep_best``).
    A bad ``checkpoint`` is refused before torch loads."""
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={checkpoint!r}: expected last or best")
    from vitmim.runs import model_file

    return model_file(_path(run, "run"), checkpoint)


def _env(cfg):
    """Device and precision as the command line picks them (torchrun's variables included)."""
    from vitmim.env import env_for

    return env_for(cfg)


def pretrain(
    *,
    out: str | Path,
    data: str | Path | None = None,
    preset: str | None = None,
    config: list[str | Path] | tuple = (),
    overrides: Overrides = None,
    resume: bool = False,
    log: str | None = None,
    log_every: int = 50,
    progress: bool = True,
    **dotted: Any,
) -> RunResult:
    """Masked-pixel pre-training of a restorer in ``out`` (``vitmim pretrain``).

    Args:
        out: run folder. data: data set path (default: ``$VITMIM_DATA``).
        resume: continue an interrupted run. log: ``"tensorboard"``, ``"csv"`` or ``"mlflow"``
            mirrors the metrics to ``out/tensorboard``, ``out/metrics.csv`` or an MLflow run
            (training loss every ``log_every`` steps). progress: bars and one line per epoch.
    """
    cfg = _config(data, preset, config, overrides, dotted)
    from vitmim.stages import pretrain as run_pretrain
    from vitmim.tracking import tracking

    with tracking(log, log_every):
        metrics = run_pretrain(cfg, _path(out, "out"), _env(cfg), resume=resume, progress=progress)
    return RunResult(Path(out), metrics)


def finetune(
    *,
    out: str | Path,
    init: str | Path | None = None,
    data: str | Path | None = None,
    preset: str | None = None,
    config: list[str | Path] | tuple = (),
    overrides: Overrides = None,
    resume: bool = False,
    log: str | None = None,
    log_every: int = 50,
    progress: bool = True,
    **dotted: Any,
) -> RunResult:
    """Fine-tune a classifier in ``out`` from ``init`` (a pre-trained run folder or weights
    file), or from scratch without it (``vitmim finetune``). Other arguments as :func:`pretrain`.
    """
    init = None if init is None else _path(init, "init")
    cfg = _config(data, preset, config, overrides, dotted, init)
    from vitmim.stages import finetune as run_finetune
    from vitmim.tracking import tracking

    with tracking(log, log_every):
        metrics = run_finetune(
            cfg, _path(out, "out"), _env(cfg), init=init, resume=resume, progress=progress
        )
    return RunResult(Path(out), metrics)


def run(
    *,
    out: str | Path = "runs/run",
    data: str | Path | None = None,
    preset: str | None = None,
    config: list[str | Path] | tuple = (),
    overrides: Overrides = None,
    equal_compute: str | None = None,
    resume: bool = False,
    log: str | None = None,
    log_every: int = 50,
    **dotted: Any,
) -> PipelineResult:
    """Pre-train, fine-tune, train the scratch baseline (``vitmim run``); ``equal_compute``
    ("steps" or "flops") adds scratch trained as long as both stages together."""
    cfg = _config(data, preset, config, overrides, dotted)
    from vitmim.baselines import BASELINES

    counts = sorted({b.equal for b in BASELINES.values() if b.equal})
    if equal_compute is not None and equal_compute not in counts:
        raise ConfigError(
            f"equal_compute={equal_compute!r}: expected None or one of "
            f"{', '.join(map(repr, counts))}"
        )
    from vitmim.pipeline import run_all, summary_table
    from vitmim.runs import class_count
    from vitmim.tracking import tracking

    # every baseline at the fine-tune epochs, and those at equal compute counted as asked
    baselines = tuple(name for name, b in BASELINES.items() if b.equal in (None, equal_compute))
    with tracking(log, log_every):
        results = run_all(cfg, _path(out, "out"), _env(cfg), resume=resume, baselines=baselines)
    runs = {
        name: RunResult(Path(out) / name, metrics)
        for name, metrics in results.items()
        if "step" in metrics
    }  # a stage that did not train (no tuned recipe) is in .summary
    classes = class_count(*(Path(out) / name for name in runs))
    return PipelineResult(Path(out), runs, summary_table(results, classes))


Images = str | Path | list[str | Path] | tuple[str | Path, ...]


def _image_paths(images: Images) -> list[str]:
    """One image path (str or Path) or a non-empty list of them, as a list of str."""
    return (
        [str(_path(images, "images"))]
        if isinstance(images, (str, os.PathLike))
        else [str(p) for p in _paths(images, "images")]
    )


def evaluate(
    run: str | Path,
    data: str | Path | None = None,
    device: str = "auto",
    checkpoint: str = "last",
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and loss of a fine-tuned run on the validation split.
    ``device``: ``auto`` (the best available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``;
    ``checkpoint``: ``last`` (the final model) or ``best`` (the kept best epoch)."""
    _check_device(device)
    weights = _weights(run, checkpoint)
    from vitmim.inference import evaluate_run

    return evaluate_run(weights, str(_path(data, "data")) if data else None, device)


@overload
def predict(
    run: str | Path,
    images: str | Path,
    topk: int = 5,
    device: str = "auto",
    checkpoint: str = "last",
) -> list[tuple[str, float]]: ...


@overload
def predict(
    run: str | Path,
    images: list[str | Path] | tuple[str | Path, ...],
    topk: int = 5,
    device: str = "auto",
    checkpoint: str = "last",
) -> list[list[tuple[str, float]]]: ...


def predict(
    run: str | Path,
    images: Images,
    topk: int = 5,
    device: str = "auto",
    checkpoint: str = "last",
) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
    """Top-k (class name, probability): for one image path, its list; for a list of paths,
    one list per image. ``checkpoint``: ``last`` or ``best`` (the kept best epoch)."""
    _check_device(device)
    weights = _weights(run, checkpoint)
    from vitmim.inference import predict as run_predict

    if isinstance(topk, bool) or not isinstance(topk, int):
        raise ConfigError(f"topk={topk!r}: expected an integer >= 1")
    top = run_predict(weights, _image_paths(images), topk, device)
    return top[0] if isinstance(images, (str, Path)) else top


def reconstruct(
    run: str | Path,
    images: Images,
    out: str | Path = "reconstruction.png",
    seed: int = 0,
    overrides: Overrides = None,
    device: str = "auto",
    checkpoint: str = "last",
    **dotted: Any,
) -> Path:
    """PNG grid of original | masked | restored, one row per image (one path or a list);
    returns its path. Overrides change the masking (``pretrain__mask_ratio=0.4``);
    ``checkpoint``: ``last`` or ``best`` (the kept best epoch)."""
    _check_device(device)
    weights = _weights(run, checkpoint)
    from vitmim.inference import reconstruct as run_reconstruct

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: expected an integer")
    return run_reconstruct(
        weights,
        _image_paths(images),
        _path(out, "out"),
        _override_texts(overrides, dotted),
        seed,
        device,
    )


def load(run: str | Path, device: str = "auto", checkpoint: str = "last"):
    """``(model, transform)`` of a finished run, ready for inference: the classifier in eval
    mode (``model.class_names`` in logit order; a pre-training run gives its restorer) and the
    transform that turns an image file or PIL image into the (3, S, S) tensor the model was
    trained on::

        model, transform = vitmim.load("runs/ft")
        probs = model(transform("cat.jpg")[None]).softmax(-1)

    ``checkpoint``: ``last`` (the final model) or ``best`` (the kept best epoch).
    """
    _check_device(device)
    weights = _weights(run, checkpoint)
    from vitmim.inference import load as load_run

    return load_run(weights, device)


def probe(
    run: str | Path, data: str | Path | None = None, device: str = "auto", k: int = 20
) -> dict[str, float]:
    """k-NN and linear-probe accuracy (%) of a run's frozen backbone (``vitmim probe``); writes
    ``probe.json`` in the run. ``data``: labelled images (default: the run's own), needed for a
    restorer pre-trained on an unlabelled folder."""
    _check_device(device)
    from vitmim.probes import probe_run

    return probe_run(run, str(data) if data else None, device, k)


def grid(
    spec: str | Path,
    out: str | Path | None = None,
    data: str | Path | None = None,
    jobs: int = 1,
    executor: str = "local",
    config: list[str | Path] | tuple = (),
    overrides: Overrides = None,
    dry_run: bool = False,
    wait: bool | None = None,
    slurm: list[str] | None = None,
    until: str | None = None,
) -> Path:
    """Run a grid spec (``vitmim grid``): variants x seeds + baselines, one folder per run under
    ``out`` (default: the spec's ``out``, else ``runs/<spec name>``); returns ``out``.
    Finished runs are skipped, so calling it again continues an interrupted grid. ``until``
    (``"HH:MM"``): start only the runs estimated to end by then; the rest wait for a later call."""
    from vitmim.lab.grid import load_spec, parse_until, run_grid, slurm_params

    loaded = load_spec(spec)
    folder = Path(out or loaded.out or Path("runs") / loaded.path.stem)
    texts = _override_texts(overrides, {})
    if data is not None:
        texts.append(f"data.path={json.dumps(str(data))}")
    run_grid(
        loaded,
        folder,
        executor,
        texts,
        slurm_params(slurm or []),
        wait,
        dry_run,
        [str(c) for c in _paths(config, "config", empty=True)],
        jobs,
        parse_until(until) if until is not None else None,
    )
    return folder


def load_data(
    data: str | Path | None = None,
    preset: str | None = None,
    config: list[str | Path] | tuple = (),
    overrides: Overrides = None,
    progress: bool = True,
    **dotted: Any,
):
    """``(train, val)`` image sets of a data set as training reads them (decoded once into the
    cache): ``.images`` (N, 3, S, S) uint8, ``.labels``, ``.classes``; ``val`` is None only
    when there is none and ``data__val_fraction=0``."""
    from vitmim.data import load_splits

    cfg = _config(data, preset, config, overrides, dotted)
    return load_splits(cfg.data, cfg.model.img_size, progress)


def download_data(
    dest: str | Path | None = None, url: str | None = None, sha256: str | None = None
) -> Path:
    """Fetch the Tiny ImageNet archive, checksum-checked (``vitmim data download``)."""
    from vitmim.data import OFFICIAL_URL, default_download_path, download

    return download(url or OFFICIAL_URL, Path(dest) if dest else default_download_path(), sha256)


def pack_data(
    out: str | Path,
    data: str | Path | None = None,
    preset: str | None = None,
    config: list[str | Path] | tuple = (),
    overrides: Overrides = None,
    **dotted: Any,
) -> Path:
    """Write the selected classes of a data set as a small archive (``vitmim data pack``)."""
    from vitmim.data import load_splits, pack

    cfg = _config(data, preset, config, overrides, dotted)
    train, val = load_splits(cfg.data, cfg.model.img_size)
    return pack(train, val, _path(out, "out"), source=cfg.data.path)


def report(runs_dir: str | Path, out: str | Path | None = None) -> Path:
    """Tables, plots and a self-contained HTML page for a grid's run folders; returns the HTML
    page's path."""
    from vitmim.lab.report import build_report

    return build_report(_path(runs_dir, "runs_dir"), None if out is None else _path(out, "out"))


def export(
    run: str | Path,
    out: str | Path,
    format: str = "file",
    encoder: bool = False,
    checkpoint: str = "last",
) -> Path:
    """Weights for timm: ``format="file"`` one .safetensors (+ .json), ``"timm"`` a model folder
    that ``timm.create_model("local-dir:OUT", pretrained=True)`` loads; ``encoder`` the backbone
    alone; ``checkpoint``: ``last`` or ``best`` (the kept best epoch)."""
    weights = _weights(run, checkpoint)
    from vitmim.inference import export as run_export

    return run_export(weights, _path(out, "out"), format, encoder)


def __getattr__(name: str):
    if name == "__version__":  # read from the installed metadata only when asked for
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("vitmim")
        except PackageNotFoundError:  # a source tree on PYTHONPATH without an install
            return "0+unknown"
    raise AttributeError(f"module 'vitmim' has no attribute {name!r}")
