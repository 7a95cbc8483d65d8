"""Optional experiment tracking: a run's progress mirrored to TensorBoard, MLflow or a CSV file.

``metrics.jsonl`` stays the record of a run; tracking only copies it to a viewer. With
``csv``, each run's main process rewrites ``RUN/metrics.csv`` from ``metrics.jsonl`` after
every epoch (one row per epoch, one column per key: what a spreadsheet or pandas reads, and
after a resume or a rollback it holds what the record holds). Inside
``with tracking("tensorboard", every=50):`` each training run's main process writes to
``RUN/tensorboard/``:

- every scalar of each epoch record (``pretrain/val_psnr``, ``finetune/val_top1``, ...),
- the training loss every ``every`` optimisation steps (``pretrain/train_loss_step``),
- the epoch's reconstruction grid while pre-training (``pretrain/reconstruction``).

With ``mlflow``, each training run's main process opens an MLflow run named after the run
folder (nested when the caller already has an active run) in MLflow's own tracking store
(``MLFLOW_TRACKING_URI``, else MLflow's local default in the working folder) and logs the same
epoch scalars and training loss under their plain names (one MLflow run holds one stage), the
resolved config as parameters with dotted keys (``finetune.lr``), and ends it when the stage
ends: FINISHED, FAILED on an error, KILLED on an interrupt. A resume opens a new MLflow run; a
rollback logs the replayed steps again (MLflow keeps every point).

The x axis is the optimisation step. The engine calls :func:`on_step`, :func:`on_epoch` and
wraps each stage's training in :func:`stage_run`; all return at once when tracking is off.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitmim.errors import ConfigError, one_line

BACKENDS = ("tensorboard", "csv", "mlflow")
# the module each backend imports, and the extra that installs it
_NEEDS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
LOG_EVERY = 50  # optimisation steps between training-loss points


@dataclass
class _Tracker:
    every: int
    backend: str
    writers: dict[Path, Any] = field(default_factory=dict)  # run folder -> SummaryWriter
    last_step: dict[Path, int] = field(default_factory=dict)
    mlflow_runs: dict[Path, str] = field(default_factory=dict)  # run folder -> MLflow run id

    def writer(self, run_dir: Path, step: int):
        """The run's writer, opened at its first event with ``purge_step`` so that TensorBoard
        drops what an earlier attempt (before a resume) wrote from that step on; reopened the
        same way when the steps go back (a rollback)."""
        from torch.utils.tensorboard import SummaryWriter

        w = self.writers.get(run_dir)
        if w is None or step < self.last_step.get(run_dir, -1):
            if w is not None:
                w.close()
            w = self.writers[run_dir] = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step)
        self.last_step[run_dir] = step
        return w

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


_active: _Tracker | None = None


@contextlib.contextmanager
def tracking(backend: str | None, every: int = LOG_EVERY) -> Iterator[None]:
    """Mirror every training run inside the block to ``backend`` (None: no tracking)."""
    global _active
    if backend is None:
        yield
        return
    if backend not in BACKENDS:
        raise ConfigError(f"--log {backend}: unknown (known: {', '.join(BACKENDS)})")
    if every < 1:
        raise ConfigError(f"--log-every {every}: must be a positive number of steps")
    if backend in _NEEDS:
        module, extra = _NEEDS[backend]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                f"--log {backend}: needs the {extra} package (pip install 'vitmim[{extra}]')"
            ) from None
    if backend == "mlflow" and os.environ.get("RANK", "0") == "0":  # torchrun: main logs
        _open_mlflow_store()
    outer, _active = _active, _Tracker(every, backend)
    try:
        yield
    finally:
        _active.close()
        _active = outer


@contextlib.contextmanager
def stage_run(trainer) -> Iterator[None]:
    """Around a stage's training, once its config.yaml is written: the MLflow run that mirrors
    it (main process), ended with the stage however it ends."""
    t = _active
    if t is None or t.backend != "mlflow" or not trainer.env.main:
        yield
        return
    import mlflow

    run = mlflow.start_run(
        run_name=trainer.run_dir.name,
        nested=mlflow.active_run() is not None,
        tags={"vitmim.stage": trainer.stage, "vitmim.run_dir": str(trainer.run_dir.resolve())},
    )
    t.mlflow_runs[trainer.run_dir] = run.info.run_id
    status = "FAILED"
    try:
        mlflow.log_params(config_params(trainer.run_dir), run_id=run.info.run_id)
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        del t.mlflow_runs[trainer.run_dir]
        try:
            mlflow.end_run(status)
        except Exception as e:  # the store failing (an interrupt inside its write, say) must
            # not hide how the stage ended: metrics.jsonl holds it either way
            warnings.warn(
                f"{trainer.run_dir}: MLflow run {run.info.run_id} not marked {status} "
                f"({one_line(e)})",
                stacklevel=2,
            )


def config_params(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config (``RUN/config.yaml``) flattened to dotted keys."""
    import yaml

    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node

    walk("", yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    return flat


def _open_mlflow_store() -> None:
    """Reach MLflow's tracking store before any run starts, so that a store MLflow refuses (a
    bad ``MLFLOW_TRACKING_URI``, an unreachable server) is one error line, not a stage that
    fails after its folder is written."""
    import mlflow

    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except Exception as e:
        raise ConfigError(
            f"--log mlflow: tracking store {mlflow.get_tracking_uri()}: {one_line(e)}"
        ) from None


def on_step(trainer, loss) -> None:
    """After an optimisation step (``trainer.step`` already counts it). The loss is read, a host
    sync on a GPU, only every ``every`` steps."""
    t = _active
    if t is None or t.backend == "csv" or not trainer.env.main or trainer.step % t.every:
        return
    if t.backend == "mlflow":
        import mlflow

        run_id = t.mlflow_runs[trainer.run_dir]
        mlflow.log_metric("train_loss_step", loss.item(), step=trainer.step, run_id=run_id)
        return
    t.writer(trainer.run_dir, trainer.step).add_scalar(
        f"{trainer.stage}/train_loss_step", loss.item(), trainer.step
    )


def on_epoch(trainer, record: dict) -> None:
    """After an epoch's record is written to metrics.jsonl (main process)."""
    t = _active
    if t is None:
        return
    if t.backend == "csv":
        write_csv(trainer.run_dir)
        return
    step = record["step"]
    scalars = {
        key: value
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"
    }
    if t.backend == "mlflow":
        import mlflow

        mlflow.log_metrics(scalars, step=step, run_id=t.mlflow_runs[trainer.run_dir])
        return
    w = t.writer(trainer.run_dir, step)
    for key, value in scalars.items():
        w.add_scalar(f"{trainer.stage}/{key}", value, step)
    grid = trainer.run_dir / "images" / f"recon_epoch{record['epoch']:03d}.png"
    if grid.exists():
        import numpy as np  # on use: the command line imports this module for --help
        from PIL import Image

        with Image.open(grid) as im:
            w.add_image(
                f"{trainer.stage}/reconstruction",
                np.asarray(im.convert("RGB")),
                step,
                dataformats="HWC",
            )
    w.flush()


def write_csv(run_dir: Path) -> Path:
    """``RUN/metrics.csv``: every epoch record of ``metrics.jsonl``, columns in first-seen order
    (a key an epoch lacks, such as validation on a skipped epoch, is an empty cell)."""
    import csv
    import io

    from vitmim import checkpoint
    from vitmim.runs import read_metrics

    records = read_metrics(run_dir)
    columns = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    path = run_dir / "metrics.csv"
    checkpoint.write_text(path, buf.getvalue())
    return path
