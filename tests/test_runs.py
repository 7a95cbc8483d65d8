"""The run folder: metrics records, the finished marker, reading final models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cliproc
import pytest
import torch

from vitmim import checkpoint, runs
from vitmim.config import load_config
from vitmim.data import load_splits
from vitmim.errors import UserError
from vitmim.models import build_classifier


def test_metrics_append_truncate_and_read(tmp_path: Path) -> None:
    assert runs.read_metrics(tmp_path) == [] and runs.last_metrics(tmp_path) == {}
    for step in (10, 20, 30):
        runs.append_metrics(tmp_path, {"stage": "finetune", "step": step, "loss": step / 10})
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [10, 20, 30]
    runs.truncate_metrics(tmp_path, 20)  # a resume from step 20 recomputes what came after
    assert runs.read_metrics(tmp_path) == [
        {"stage": "finetune", "step": 10, "loss": 1.0},
        {"stage": "finetune", "step": 20, "loss": 2.0},
    ]
    assert runs.last_metrics(tmp_path)["step"] == 20


def save_classifier(run_dir: Path, tiny_tin: Path) -> tuple[torch.nn.Module, list[str]]:
    cfg = load_config(
        overrides=[
            "model.embed_dim=32",
            "model.depth=1",
            "model.num_heads=2",
            f"data.path={tiny_tin}",
            "data.classes=null",
        ]
    )
    train, _ = load_splits(cfg.data, cfg.model.img_size, progress=False)
    model = build_classifier(cfg.model, len(train.classes))
    runs.save_final(run_dir, model, "classifier", cfg, train, {"val_top1": 50.0})
    return model, train.classes


def test_final_model_marks_the_run_finished_and_reads_back(tmp_path: Path, tiny_tin: Path) -> None:
    assert not runs.finished(tmp_path)
    model, classes = save_classifier(tmp_path, tiny_tin)
    assert runs.finished(tmp_path)
    for where in (tmp_path, tmp_path / "model.safetensors"):
        tensors, meta, path = runs.read_model(where)
        assert path == tmp_path / "model.safetensors"
        assert meta["kind"] == "classifier" and meta["classes"] == classes
        assert meta["metrics"] == {"val_top1": 50.0}
        assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())


def test_bare_weights_read_only_when_no_description_is_needed(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    checkpoint.save_weights(path, {"w": torch.ones(3)})  # no model.json beside it
    tensors, meta, found = runs.read_model(path, described=False)
    assert meta == {} and found == path and torch.equal(tensors["w"], torch.ones(3))
    with pytest.raises(UserError, match="weights.json: missing"):
        runs.read_model(path)
    (tmp_path / "weights.json").write_text("{not json")
    with pytest.raises(UserError, match="weights.json: not valid JSON"):
        runs.read_model(path)


def test_weights_must_match_their_recorded_sha256(tmp_path: Path, tiny_tin: Path) -> None:
    save_classifier(tmp_path, tiny_tin)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # the file still parses; only the checksum tells
    weights.write_bytes(bytes(data))
    for described in (True, False):  # --init reads the description too when there is one
        with pytest.raises(UserError, match="sha256 differs from the one recorded in model.json"):
            runs.read_model(tmp_path, described)


def vitmim_cli(*args: object, check: bool = True):
    return cliproc.vitmim(*args, check=check, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_best_epoch_is_kept_beside_the_last_and_commands_pick_it(tin2, tmp_path):
    """Real processes on two Tiny ImageNet classes: pre-training keeps its best val_psnr epoch
    and fine-tuning its best val_top1 epoch (the defaults), each recorded with its epoch and
    value; `--checkpoint best` makes eval measure that value again, and predict, export and
    vitmim.load read those weights; fine-tuning starts from a kept best restorer too."""
    import vitmim

    sets = [f"--set={k}={v}" for k, v in tin2.overrides.items()]
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    vitmim_cli(
        "pretrain",
        "--data",
        tin2.path,
        "--out",
        pre,
        "--preset",
        "smoke",
        *sets,
        "--set=pretrain.epochs=2",
    )
    vitmim_cli(
        "finetune",
        "--init",
        pre / "best.safetensors",
        "--data",
        tin2.path,
        "--out",
        ft,
        *sets,
        "--set=finetune.epochs=4",
        "--set=finetune.lr=3e-3",
    )
    for run, metric in ((pre, "val_psnr"), (ft, "val_top1")):
        records = runs.read_metrics(run)
        top = max(records, key=lambda r: r[metric])  # the first of equal bests
        best = json.loads((run / "best.json").read_text())["best"]
        assert best == {
            "metric": metric,
            "value": top[metric],
            "epoch": top["epoch"],
            "step": top["step"],
        }
        weights = checkpoint.load_weights(run / "best.safetensors")
        last = checkpoint.load_weights(run / "model.safetensors")
        same = all(torch.equal(weights[k], last[k]) for k in last)
        assert same == (top["epoch"] == records[-1]["epoch"])
    ft_best = json.loads((ft / "best.json").read_text())["best"]
    measured = json.loads(vitmim_cli("eval", ft, "--checkpoint", "best").stdout)
    assert measured["val_top1"] == pytest.approx(ft_best["value"], abs=1e-6)
    proc = vitmim_cli("predict", ft, tin2.images[0], "--checkpoint", "best", "--topk", "1")
    assert proc.stdout.startswith(str(tin2.images[0]))
    model, transform = vitmim.load(ft, device="cpu", checkpoint="best")
    kept = checkpoint.load_weights(ft / "best.safetensors")
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    out = vitmim.export(ft, tmp_path / "best_export.safetensors", checkpoint="best")
    assert out.is_file()


def test_keep_best_none_keeps_the_last_only_and_best_is_then_refused(tin2, tmp_path):
    sets = [f"--set={k}={v}" for k, v in tin2.overrides.items()]
    ft = tmp_path / "ft"
    vitmim_cli(
        "finetune",
        "--data",
        tin2.path,
        "--out",
        ft,
        "--preset",
        "smoke",
        *sets,
        "--set=finetune.keep_best=none",
    )
    assert (ft / "model.safetensors").is_file() and not (ft / "best.safetensors").exists()
    proc = vitmim_cli("eval", ft, "--checkpoint", "best", check=False)
    assert proc.returncode != 0
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "no best model kept (best.safetensors is missing: the run was made with keep_best "
            "none, measured no validation metric, or by an older vitmim)"
        )
    )
    bad = vitmim_cli(
        "finetune",
        "--data",
        tin2.path,
        "--out",
        tmp_path / "x",
        "--set=finetune.keep_best=val_psnr",
        check=False,
    )
    assert "finetune.keep_best" in bad.stderr and "val_top1, val_top5 or val_loss" in bad.stderr


def test_a_kept_best_of_a_later_step_or_an_earlier_run_is_dropped(tmp_path):
    """A resumed run takes up the best kept up to its checkpoint's step; one from a later step
    (its epochs are redone) or from an earlier run in the folder is deleted."""
    model = torch.nn.Linear(2, 2)
    keeper = runs.BestKeeper(tmp_path, "finetune", "val_loss", lambda r: {"metrics": r})
    keeper.start(0)
    for epoch, loss in ((1, 0.9), (2, 0.5), (3, 0.7)):
        keeper.update(model, {"epoch": epoch, "step": 10 * epoch, "val_loss": loss})
    kept = json.loads((tmp_path / "best.json").read_text())["best"]
    assert (kept["epoch"], kept["value"]) == (2, 0.5)  # lower is better for a loss
    resumed = runs.BestKeeper(tmp_path, "finetune", "val_loss", lambda r: {"metrics": r})
    resumed.start(30)
    assert resumed.value == 0.5 and (tmp_path / "best.safetensors").exists()
    runs.BestKeeper(tmp_path, "finetune", "val_loss", lambda r: {}).start(10)
    assert not (tmp_path / "best.safetensors").exists()
    assert not (tmp_path / "best.json").exists()
