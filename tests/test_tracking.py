"""Tracking: what a tiny real run writes to TensorBoard (read back with its own reader) and CSV."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import vitmim
from vitmim import cli

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def records(run_dir) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
