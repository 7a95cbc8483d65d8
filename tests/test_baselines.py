"""The baseline registry: the public names and folders, and what each baseline shares with the
variant it is compared with."""

import copy

from vitmim.baselines import BASELINES, DEFAULT_BASELINES, baseline_axes, variant_axes
from vitmim.config import load_config
from vitmim.pipeline import RUN_DIRS

AXES = {
    "pretrain.mask_ratio": 0.4,
    "pretrain.mask_patch": 8,
    "pretrain.epochs": 3,
    "pretrain.batch_size": 64,
    "model.decoder_dim": 32,
    "model.depth": 3,
    "finetune.lr": 1e-3,
    "scratch.finetune.lr": 2e-3,
}


def test_names_and_folders_are_those_runs_and_grids_already_hold():
    assert {k: b.folder for k, b in BASELINES.items()} == {
        "scratch": "scratch",
        "scratch_tuned": "scratch_tuned",
        "scratch_equal_compute": "scratch_long",
        "scratch_equal_flops": "scratch_flops",
    }
    assert DEFAULT_BASELINES == ("scratch", "scratch_equal_compute")
    assert RUN_DIRS == {
        "pretrain": "pretrain",
        "finetune": "finetune",
        **{k: b.folder for k, b in BASELINES.items()},
    }
    assert len({b.folder for b in BASELINES.values()} | {"pretrain", "finetune"}) == 6


def test_each_baseline_shares_only_what_changes_it():
    cfg = load_config()  # the default mask cell is a multiple of the patch: the fast path
    outside = {"model.depth": 3, "finetune.lr": 1e-3}
    steps = {"pretrain.epochs": 3, "pretrain.batch_size": 64}
    assert baseline_axes("scratch", AXES, cfg) == outside
    assert baseline_axes("scratch_tuned", AXES, cfg) == {**outside, "scratch.finetune.lr": 2e-3}
    assert baseline_axes("scratch_equal_compute", AXES, cfg) == {**outside, **steps}
    assert baseline_axes("scratch_equal_flops", AXES, cfg) == {
        k: v for k, v in AXES.items() if k != "scratch.finetune.lr"
    }
    assert variant_axes(AXES) == {k: v for k, v in AXES.items() if k != "scratch.finetune.lr"}


def test_equal_flops_ignores_the_mask_on_the_full_token_path():
    cfg = copy.deepcopy(load_config())
    cfg.pretrain.fast = False  # every token encoded however many are masked
    assert baseline_axes("scratch_equal_flops", AXES, cfg) == {
        "model.depth": 3,
        "finetune.lr": 1e-3,
        "pretrain.epochs": 3,
        "pretrain.batch_size": 64,
        "pretrain.fast": False,
    }
