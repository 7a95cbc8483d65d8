"""vitmim.stages: the scratch recipe, the model description and a refused second fine-tune."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from vitmim.checkpoint import sha256
from vitmim.config import load_config, preset_file, to_dict
from vitmim.env import Env
from vitmim.errors import CheckpointError
from vitmim.stages import describe_model, finetune, forward_flops, scratch_recipe


def test_scratch_recipe_turns_layer_decay_off_and_leaves_the_rest():
    cfg = load_config([preset_file("smoke")], ["finetune.layer_decay=0.65", "finetune.lr=0.003"])
    out = scratch_recipe(cfg)
    assert out.finetune.layer_decay == 1.0
    assert cfg.finetune.layer_decay == 0.65  # the caller's config is left as it was
    before, after = to_dict(cfg), to_dict(out)
    before["finetune"].pop("layer_decay"), after["finetune"].pop("layer_decay")
    assert after == before
    plain = load_config([preset_file("smoke")])
    assert scratch_recipe(plain) is plain  # nothing to turn off


def test_forward_flops_and_description_of_a_linear_layer(capsys):
    torch.manual_seed(0)
    layer = nn.Linear(8, 3)
    x = torch.randn(4, 8)
    assert forward_flops(layer, (x,)) == 2 * 8 * 3  # one multiply-add per weight and image
    assert layer.training  # the probe puts the model back in training mode
    info = describe_model(layer, (x,), "probe")
    assert info == {"params": 8 * 3 + 3, "flops_per_image": 48.0}
    assert "probe: 0.00 M parameters" in capsys.readouterr().out


def test_a_second_finetune_into_a_finished_folder_is_refused(tin2, tin2_runs, tmp_path):
    done = tmp_path / "ft"
    shutil.copytree(tin2_runs.ft.run_dir, done)
    model = done / "model.safetensors"
    digest = sha256(model)
    overrides = [f"{k}={v}" for k, v in tin2.overrides.items()]
    cfg = load_config(
        [preset_file("smoke")], [*overrides, f"data.path={tin2.path}", "finetune.epochs=2"]
    )
    env = Env(torch.device("cpu"), amp=False, rank=0, world=1)
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        finetune(cfg, done, env, init=tin2_runs.pre.run_dir, progress=False)
    assert sha256(model) == digest  # the finished run is left as it was
