"""The baseline registry: the public names and folders, and what each baseline shares with the
variant it is compared with."""

import copy
import math

from vitmim.baselines import BASELINES, DEFAULT_BASELINES, baseline_axes, variant_axes
from vitmim.config import load_config
from vitmim.data import load_splits
from vitmim.pipeline import RUN_DIRS, classifier_stage, training_flops_per_image

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
        "scratch_tuned_flops": "scratch_tuned_flops",
    }
    assert DEFAULT_BASELINES == ("scratch", "scratch_equal_compute")
    assert RUN_DIRS == {
        "pretrain": "pretrain",
        "finetune": "finetune",
        **{k: b.folder for k, b in BASELINES.items()},
    }
    assert len({b.folder for b in BASELINES.values()} | {"pretrain", "finetune"}) == 7


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
    assert baseline_axes("scratch_tuned_flops", AXES, cfg) == AXES  # FLOPs and its recipe
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


def test_tuned_scratch_at_equal_flops_trains_as_long_as_pre_training_and_fine_tuning(tiny_tin):
    """The tuned recipe (its own batch size) for the pre-trained model's fine-tune epochs plus
    the pre-training's FLOPs in its own fine-tune epochs; the epochs the recipe names do not
    count."""
    cfg = load_config(
        base={
            "model": {"embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_dim": 32},
            "data": {"path": str(tiny_tin), "classes": None},
            "pretrain": {"batch_size": 16, "epochs": 3},
            "finetune": {"batch_size": 16, "epochs": 2},
            "scratch": {"finetune.batch_size": 8, "finetune.epochs": 99},
        },
    )
    train_set, _ = load_splits(cfg.data, cfg.model.img_size, progress=False)
    tuned, name = classifier_stage(cfg, "scratch_tuned_flops", None, train_set)
    pre_flops, ft_flops = training_flops_per_image(tuned, len(train_set.classes))
    pre_total = len(train_set) // 16 * 16 * cfg.pretrain.epochs * pre_flops
    per_epoch = len(train_set) // 8 * 8 * ft_flops  # the recipe's batches
    assert tuned.finetune.batch_size == 8
    assert tuned.finetune.epochs == 2 + math.ceil(round(pre_total / per_epoch, 6)) > 2
    assert name == f"scratch, tuned recipe (equal flops: {tuned.finetune.epochs} epochs)"
