"""Frozen-backbone probes: k-NN and linear accuracy on known features, and on a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitmim import cli
from vitmim.config import load_config
from vitmim.env import Env
from vitmim.errors import UserError
from vitmim.probes import knn_accuracy, linear_probe, probe_random_init, probe_run
from vitmim.stages import pretrain

TINY = [
    "data.classes=null",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_dim=32",
    "pretrain.epochs=1",
    "pretrain.batch_size=16",
]


def clusters(
    n_per: int, centres: torch.Tensor, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around ``centres`` (C, D): features (C*n_per, D), labels (C*n_per,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(centres)).repeat_interleave(n_per)
    return centres[y] + noise * torch.randn(len(y), centres.shape[1], generator=g), y


def test_knn_and_linear_separate_clean_clusters():
    centres = 5 * torch.eye(4, 16)
    xt, yt = clusters(30, centres, 0.5, 0)
    xv, yv = clusters(10, centres, 0.5, 1)
    assert knn_accuracy(xt, yt, xv, yv, 4) == 100.0
    result = linear_probe(xt, yt, xv, yv, 4)
    assert result["linear_top1"] == pytest.approx(100.0)
    assert result["linear_train_top1"] == pytest.approx(100.0)


def test_knn_votes_by_similarity_not_count():
    """Two near neighbours of class 1 outvote five far ones of class 0."""
    train = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 5)
    labels = torch.tensor([1, 1, 0, 0, 0, 0, 0])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_accuracy(train, labels, query, torch.tensor([1]), 2, k=7) == 100.0


def test_linear_probe_uses_training_statistics_only():
    """Shifting validation features by a constant must not be undone by re-standardising."""
    centres = 3 * torch.eye(2, 4)
    xt, yt = clusters(20, centres, 0.3, 0)
    xv, yv = clusters(20, centres, 0.3, 1)
    shifted = linear_probe(xt, yt, xv + torch.tensor([-100.0, 100.0, 0, 0]), yv, 2)
    assert shifted["linear_top1"] == pytest.approx(50.0)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_tin) -> Path:
    run = tmp_path_factory.mktemp("probe") / "pretrain"
    cfg = load_config(overrides=TINY + [f"data.path={tiny_tin}"])
    pretrain(cfg, run, Env(torch.device("cpu")), progress=False)
    return run


def test_probe_command_writes_probe_json(pretrained, capsys):
    assert cli.main(["probe", str(pretrained)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((pretrained / "probe.json").read_text())
    assert printed == saved
    assert saved["n_train"] == 48 and saved["n_val"] == 12 and saved["feature_dim"] == 32
    assert saved["knn_k"] == 20
    # 48 images in 32 dimensions: a probe that ran on features that vary fits most of them;
    # chance (4 classes) is 25 %
    assert saved["linear_train_top1"] > 50
    again = probe_run(pretrained, device="cpu")  # the same backbone and images: the same numbers
    assert {k: v for k, v in again.items() if k != "time_s"} == {
        k: v for k, v in saved.items() if k != "time_s"
    }


def test_random_init_reference(tmp_path, tiny_tin):
    cfg = load_config(overrides=TINY + [f"data.path={tiny_tin}", "finetune.seed=3"])
    out = tmp_path / "probe_random_init.json"
    result = probe_random_init(cfg, out)
    assert json.loads(out.read_text()) == {**result, "init": "random", "seed": 3}


def test_probe_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(UserError, match="weights file not found"):
        probe_run(tmp_path)
