"""vitmim.pipeline: stage folder names, the ETA line, the summary table and equal compute."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch

from vitmim import pipeline
from vitmim.config import load_config, preset_file
from vitmim.data import load_splits
from vitmim.errors import ConfigError
from vitmim.pipeline import (
    RESTORED_NOTE,
    equal_compute,
    eta_text,
    stage_dirname,
    steps_per_epoch,
    summary_table,
)


def test_stage_dirname_marks_a_label_share():
    assert stage_dirname("finetune", None) == "finetune"
    assert stage_dirname("finetune", 1.0) == "finetune"
    assert stage_dirname("finetune", 0.1) == "finetune_lf0.1"
    assert stage_dirname("scratch", 0.25) == "scratch_lf0.25"


def test_eta_text_gives_the_clock_time_and_what_is_left(monkeypatch):
    now = 1_700_000_000.0
    monkeypatch.setattr(pipeline.time, "time", lambda: now)
    at = time.strftime("%H:%M", time.localtime(now + 720))
    assert eta_text(720) == f" (ETA {at}, about 12 min left)"
    at = time.strftime("%H:%M", time.localtime(now + 45))
    assert eta_text(45) == f" (ETA {at}, about 45 s left)"
    assert eta_text(150).endswith("about 2 min left)")  # minutes from 90 s on


RESULTS = {
    "pretrain": {
        "description": "pre-train (restorer)",
        "val_pixel_l1": 0.123456,
        "val_psnr": 17.891,
        "step": 40,
        "wall_s": 12.4,
    },
    "finetune": {
        "description": "finetune (pre-trained)",
        "val_top1": 62.5,
        "val_top5": 100.0,
        "step": 20,
        "wall_s": None,
    },
}


def test_summary_table_drops_top5_with_five_classes_or_fewer():
    few = summary_table(RESULTS, 5).splitlines()
    assert few[0] == (
        "| run | what | val top-1 % | restored L1 px | restored PSNR dB | steps | wall s |"
    )
    assert few[1] == "| --- | --- |" + " ---: |" * 5
    assert few[2] == "| pretrain | pre-train (restorer) | - | 0.1235 | 17.89 | 40 | 12 |"
    assert few[3] == "| finetune | finetune (pre-trained) | 62.50 | - | - | 20 | - |"
    assert few[-1] == RESTORED_NOTE
    many = summary_table(RESULTS, 6).splitlines()
    assert "| val top-1 % | val top-5 % |" in many[0]
    assert many[3] == "| finetune | finetune (pre-trained) | 62.50 | 100.00 | - | - | 20 | - |"
    assert "val top-5 %" in summary_table(RESULTS, None)  # unknown count: kept


@pytest.fixture(scope="module")
def two(tin2):
    overrides = [f"{k}={v}" for k, v in tin2.overrides.items()]
    cfg = load_config(
        [preset_file("smoke")],
        [
            *overrides,
            f"data.path={tin2.path}",
            "pretrain.batch_size=4",
            "pretrain.epochs=3",
            "finetune.batch_size=3",
            "finetune.epochs=2",
            "data.label_fraction=0.5",
        ],
    )
    train_set, _ = load_splits(cfg.data, cfg.model.img_size, progress=False)
    return cfg, train_set


def test_equal_compute_by_steps_matches_the_formula(two):
    cfg, train_set = two
    counts = torch.bincount(train_set.labels).tolist()
    n_labelled = sum(max(1, round(0.5 * n)) for n in counts)
    pre_per_epoch, ft_per_epoch = len(train_set) // 4, n_labelled // 3
    assert steps_per_epoch(cfg, train_set) == (pre_per_epoch, ft_per_epoch)
    long = equal_compute(cfg, "steps", train_set)
    assert long.finetune.epochs == 2 + math.ceil(3 * pre_per_epoch / ft_per_epoch)
    assert cfg.finetune.epochs == 2  # the caller's config is left as it was
    # another recipe's own epochs do not count: the pre-trained model's are given
    assert equal_compute(cfg, "steps", train_set, epochs=5).finetune.epochs == (
        long.finetune.epochs + 3
    )


def test_equal_compute_refuses_a_batch_larger_than_the_labelled_images(two):
    cfg, train_set = two
    big = copy.deepcopy(cfg)
    big.finetune.batch_size = 10_000
    with pytest.raises(ConfigError, match="finetune.batch_size: 10000 is larger than the"):
        equal_compute(big, "steps", train_set)


def test_a_share_of_labels_set_twice_is_refused_before_any_work(tmp_path):
    cfg = load_config(overrides=["data.label_fraction=0.2", "data.path=/no/such/data"])
    with pytest.raises(ConfigError, match=r"data.label_fraction 0.2 and label fractions \[1.0\]"):
        pipeline.run_all(cfg, tmp_path / "run", None, label_fractions=(1.0,))  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()
