"""Tracking: what a tiny real run writes to TensorBoard and MLflow (each read back with its own
reader) and CSV."""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import time

import pytest
import yaml
from PIL import Image

import vitmim
from vitmim import cli

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed"
)
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed"
)


def events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def records(run_dir) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


@needs_tensorboard
def test_pretrain_mirrors_metrics_loss_and_reconstructions(tin2, tmp_path):
    run = tmp_path / "pre"
    args = [
        "pretrain",
        "--data",
        str(tin2.path),
        "--out",
        str(run),
        "--preset",
        "smoke",
        "--log",
        "tensorboard",
        "--log-every",
        "2",
        "--set",
        "pretrain.epochs=2",
        *[f"--set={k}={v}" for k, v in tin2.overrides.items()],
    ]
    assert cli.main(args) == 0
    acc, recs = events(run), records(run)
    total = recs[-1]["step"]
    assert total == 6  # 2 epochs of 24 images in batches of 8: the log spans both
    loss = acc.Scalars("pretrain/train_loss_step")
    assert [e.step for e in loss] == list(range(2, total + 1, 2))  # every 2nd step, no more
    for key in (
        "lr",
        "train_loss",
        "val_loss",
        "val_pixel_l1",
        "val_psnr",
        "images_per_s",
        "epoch",
    ):
        points = acc.Scalars(f"pretrain/{key}")
        assert [e.step for e in points] == [r["step"] for r in recs]
        assert [e.value for e in points] == pytest.approx([r[key] for r in recs], rel=1e-6)
    grids = acc.Images("pretrain/reconstruction")
    assert [e.step for e in grids] == [r["step"] for r in recs]
    with Image.open(run / "images" / "recon_epoch002.png") as png:
        assert (grids[-1].width, grids[-1].height) == png.size


@needs_tensorboard
def test_finetune_through_the_api_logs_accuracy(tin2, tin2_runs, tmp_path):
    ft = vitmim.finetune(
        init=tin2_runs.pre.run_dir,
        data=tin2.path,
        out=tmp_path / "ft",
        preset="smoke",
        overrides=tin2.overrides,
        log="tensorboard",
        progress=False,
    )
    acc = events(ft.run_dir)
    assert acc.Scalars("finetune/val_top1")[-1].value == pytest.approx(ft.metrics["val_top1"])
    assert acc.Tags()["images"] == []  # no reconstructions when fine-tuning


def test_no_tensorboard_folder_without_log(tin2_runs):
    assert not (tin2_runs.pre.run_dir / "tensorboard").exists()


@pytest.mark.parametrize(
    "log, every, message",
    [("wandb", 50, "--log wandb: unknown"), ("tensorboard", 0, "--log-every 0")],
)
def test_bad_tracking_options_are_config_errors(tin2, tmp_path, log, every, message):
    with pytest.raises(vitmim.ConfigError, match=message):
        vitmim.pretrain(
            data=tin2.path, out=tmp_path / "x", preset="smoke", log=log, log_every=every
        )
    assert not (tmp_path / "x").exists()


def test_csv_log_holds_every_epoch_record(tin2, tmp_path):
    """A CSV view of metrics.jsonl, rewritten from it each epoch: one row per epoch record."""
    import csv

    out = tmp_path / "csv"
    kwargs = dict(
        data=tin2.path,
        out=out,
        preset="smoke",
        overrides=tin2.overrides,
        log="csv",
        progress=False,
        pretrain__epochs=2,
    )
    vitmim.pretrain(**kwargs)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    want = records(out)
    assert len(rows) == len(want) == 2
    for row, rec in zip(rows, want):
        assert set(row) == set(rec)
        assert float(row["train_loss"]) == pytest.approx(rec["train_loss"])
        assert int(row["epoch"]) == rec["epoch"]
    assert not (out / "tensorboard").exists()


@needs_mlflow
def test_mlflow_run_holds_metrics_params_and_ends(tin2, tin2_runs, tmp_path, monkeypatch):
    """A fine-tune through the command line, read back from the store with MLflow's client."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's default kind of store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = tmp_path / "ft-mlflow"
    args = [
        "finetune",
        "--init",
        str(tin2_runs.pre.run_dir),
        "--data",
        str(tin2.path),
        "--out",
        str(run),
        "--preset",
        "smoke",
        "--log",
        "mlflow",
        "--log-every",
        "2",
        "--set",
        "finetune.epochs=2",
        *[f"--set={k}={v}" for k, v in tin2.overrides.items()],
    ]
    assert cli.main(args) == 0
    recs = records(run)
    assert len(recs) == 2
    client = MlflowClient(tracking_uri=uri)
    found = mlflow_run(uri, run)
    assert found.info.status == "FINISHED"
    assert found.data.tags["vitmim.stage"] == "finetune"
    for key in ("val_loss", "val_top1", "train_loss", "lr"):
        history = client.get_metric_history(found.info.run_id, key)
        assert [m.step for m in history] == [r["step"] for r in recs]
        assert [m.value for m in history] == pytest.approx([r[key] for r in recs], rel=1e-6)
    loss = client.get_metric_history(found.info.run_id, "train_loss_step")
    assert [m.step for m in loss] == list(range(2, recs[-1]["step"] + 1, 2))
    params = found.data.params
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert float(params["finetune.lr"]) == pytest.approx(cfg["finetune"]["lr"])
    assert params["model.depth"] == str(cfg["model"]["depth"])
    assert params["finetune.epochs"] == "2"
    assert not (run / "tensorboard").exists()


@pytest.mark.parametrize(
    "log, module", [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")]
)
def test_missing_tracking_package_is_one_config_error(tin2, tmp_path, monkeypatch, log, module):
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package raises
    with pytest.raises(vitmim.ConfigError) as err:
        vitmim.pretrain(data=tin2.path, out=tmp_path / "x", preset="smoke", log=log)
    assert str(err.value) == (f"--log {log}: needs the {log} package (pip install 'vitmim[{log}]')")
    assert not (tmp_path / "x").exists()


@needs_mlflow
def test_unusable_mlflow_store_is_refused_before_the_run(tin2, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://nowhere")
    with pytest.raises(vitmim.ConfigError) as err:
        vitmim.pretrain(data=tin2.path, out=tmp_path / "x", preset="smoke", log="mlflow")
    assert str(err.value).startswith("--log mlflow: tracking store bogus://nowhere: ")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def mlflow_run(uri: str, run_dir):
    """The one MLflow run named after ``run_dir`` in the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    [found] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"attributes.run_name = '{run_dir.name}'",
    )
    return found


@needs_mlflow
def test_mlflow_run_ends_failed_or_killed_with_its_stage(tiny_tin, tmp_path):
    """Real ``vitmim`` processes through the fault hook of test_resume: a diverging run ends its
    MLflow run FAILED, an interrupted one KILLED, each with the epochs it finished."""
    from test_resume import COMMON, output, run, start

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pretrain = ["pretrain", *COMMON, "--data", str(tiny_tin), "--log", "mlflow"]
    pretrain += ["--set", "pretrain.batch_size=8", "--set", "pretrain.epochs=3"]

    diverged = tmp_path / "nan"
    rc, _, err = run(
        tmp_path, [*pretrain, "--out", str(diverged)], "nan:7", MLFLOW_TRACKING_URI=uri
    )
    assert rc == 2 and "non-finite" in err, err[-3000:]
    found = mlflow_run(uri, diverged)
    assert found.info.status == "FAILED"
    assert found.data.metrics["epoch"] == records(diverged)[-1]["epoch"]

    stopped = tmp_path / "int"
    proc = start(tmp_path, [*pretrain, "--out", str(stopped)], "slow:0", MLFLOW_TRACKING_URI=uri)
    metrics = stopped / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text()):  # inside the stage: an epoch is done
        assert proc.poll() is None, output(proc)[1][-3000:]
        time.sleep(0.05)
    # its checkpoint follows the epoch's MLflow write: the signal lands in the slow steps after
    saved = stopped / "checkpoints" / f"step_{records(stopped)[0]['step']:08d}.json"
    while not saved.exists():
        assert proc.poll() is None, output(proc)[1][-3000:]
        time.sleep(0.05)
    # SIGTERM, which vitmim handles as Ctrl-C: a suite run in the background (a shell's `&`)
    # passes SIGINT on ignored
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(180) == 130, output(proc)[1][-3000:]
    found = mlflow_run(uri, stopped)
    assert found.info.status == "KILLED"
    assert found.data.metrics["epoch"] == records(stopped)[-1]["epoch"]
