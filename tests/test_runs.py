"""The run folder: metrics records, the finished marker, reading final models."""

from __future__ import annotations

from pathlib import Path

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
