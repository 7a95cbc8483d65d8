"""vitmim.tasks: the label share, the classification metrics and the tasks' evaluations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitmim.augment import denormalize
from vitmim.config import load_config, preset_file
from vitmim.data import load_splits
from vitmim.data.cache import ImageSet
from vitmim.env import Env
from vitmim.errors import ConfigError
from vitmim.models import build_classifier, build_restorer
from vitmim.tasks import (
    FinetuneTask,
    PretrainTask,
    classification_metrics,
    label_subset,
    top5_informative,
)

CPU = Env(torch.device("cpu"), amp=False, rank=0, world=1)


def test_label_subset_keeps_the_share_of_each_class_and_is_seeded():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 3 + [-1] * 5)
    keep = label_subset(labels, 0.3, seed=7)
    counts = torch.bincount(labels[keep], minlength=3).tolist()
    assert counts == [3, 6, 1]  # round(0.3 * n_c), at least 1
    assert torch.equal(keep, torch.sort(keep).values) and keep.dtype == torch.int64
    assert (labels[keep] >= 0).all()  # unlabelled images are never kept
    assert torch.equal(keep, label_subset(labels, 0.3, seed=7))
    assert not torch.equal(keep, label_subset(labels, 0.3, seed=8))
    assert torch.equal(label_subset(labels, 1.0, seed=3), torch.arange(33))
    assert len(label_subset(torch.full((4,), -1), 0.5, seed=0)) == 0
    with pytest.raises(ConfigError, match="data.label_fraction"):
        label_subset(labels, 0.0, seed=0)


def test_top5_informative_only_above_five_classes():
    assert [top5_informative(n) for n in (2, 5, 6, None)] == [False, False, True, True]


class FixedLogits(nn.Module):
    """Returns row i of ``logits`` for an image whose pixels all hold the value i."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = (denormalize(x)[:, 0, 0, 0] * 255).round().long()
        return self.logits[idx]


def test_classification_metrics_on_known_logits():
    logits = torch.tensor(
        [
            [5.0, 1, 0, 0, 0, 0, 0],  # label 0: top-1
            [0.0, 5, 4, 3, 2, 1, -1],  # label 2: top-5, not top-1
            [0.0, 6, 5, 4, 3, 2, 1],  # label 0: neither
            [0.0, 0, 0, 0, 0, 0, 9],  # label 6: top-1
        ]
    )
    labels = torch.tensor([0, 2, 0, 6])
    images = torch.arange(4, dtype=torch.uint8)[:, None, None, None].expand(-1, 3, 4, 4).clone()
    data = ImageSet(images, labels, [str(i) for i in range(7)], [str(i) for i in range(7)], "x")
    got = classification_metrics(FixedLogits(logits), data, torch.device("cpu"), batch=3)
    assert got["val_top1"] == pytest.approx(50.0)
    assert got["val_top5"] == pytest.approx(75.0)
    assert got["val_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


@pytest.fixture(scope="module")
def tiny(tin2):
    overrides = [f"{k}={v}" for k, v in tin2.overrides.items()]
    cfg = load_config([preset_file("smoke")], [*overrides, f"data.path={tin2.path}"])
    cfg.model.embed_dim, cfg.model.depth, cfg.model.decoder_dim = 32, 1, 32
    train_set, val_set = load_splits(cfg.data, cfg.model.img_size, progress=False)
    return cfg, train_set, val_set


def test_finetune_task_subsets_labels_and_evaluates_the_logged_keys(tiny):
    cfg, train_set, val_set = tiny
    cfg = copy.deepcopy(cfg)
    cfg.data.label_fraction = 0.5
    task = FinetuneTask(train_set, val_set, cfg, CPU)
    keep = label_subset(train_set.labels, 0.5, cfg.finetune.seed)
    assert task.n_train == len(keep) and torch.equal(task.labels, train_set.labels[keep])
    torch.manual_seed(0)
    model = build_classifier(cfg.model, len(train_set.classes))
    got = task.evaluate(model, 1)
    assert set(got) == {"val_top1", "val_top5", "val_loss"}
    assert got == classification_metrics(model, val_set, torch.device("cpu"))
    assert FinetuneTask(train_set, None, cfg, CPU).evaluate(model, 1) == {}


def test_pretrain_task_evaluates_with_fixed_masks_and_saves_a_grid(tiny, tmp_path):
    cfg, train_set, val_set = tiny
    task = PretrainTask(train_set, val_set, cfg, CPU, tmp_path)
    again = PretrainTask(train_set, val_set, cfg, CPU, tmp_path)
    assert torch.equal(task.val_mask, again.val_mask)  # the same masks in every run
    assert len(task.val_x) == len(val_set)
    torch.manual_seed(0)
    model = build_restorer(cfg.model, cfg.pretrain).eval()
    got = task.evaluate(model, 3)
    assert {"val_pixel_l1", "val_psnr", "val_loss"} <= set(got)
    assert got == task.evaluate(model, 3)
    grid = tmp_path / "images" / "recon_epoch003.png"
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
