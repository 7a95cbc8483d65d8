"""Export to timm: a model folder that timm.create_model("local-dir:...") loads and that gives
vitmim's outputs on image files (generated, and real ones where the archive is at hand); the
backbone alone with --encoder; the errors a user sees."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from vitmim import cli
from vitmim.augment import normalize
from vitmim.config import load_config
from vitmim.inference import load_classifier, load_images
from vitmim.models import build_classifier, transfer
from vitmim.runs import read_model


def timm_inputs(model: torch.nn.Module, images) -> torch.Tensor:
    """Images preprocessed the timm way: the folder's pretrained_cfg -> timm's eval transform."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in images])


def test_timm_folder_loads_with_labels_and_gives_vitmim_logits(tin2_runs, tin2, tmp_path):
    out = tmp_path / "model"
    assert (
        cli.main(["export", str(tin2_runs.ft.run_dir), "--format", "timm", "--out", str(out)]) == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ours, _, meta = load_classifier(tin2_runs.ft.run_dir)
    assert model.pretrained_cfg["label_names"] == meta["classes"]
    assert model.pretrained_cfg["input_size"] == (3, 64, 64) and model.num_classes == 2
    x = timm_inputs(model, tin2.images)
    assert torch.equal(x, normalize(load_images(tin2.images)))  # same preprocessing
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), atol=1e-5, rtol=0)


def test_encoder_folder_gives_the_pretrained_backbone_features(tin2_runs, tin2, tmp_path):
    out = tmp_path / "encoder"
    assert (
        cli.main(
            [
                "export",
                str(tin2_runs.pre.run_dir),
                "--format",
                "timm",
                "--encoder",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 0 and "label_names" not in config
    tensors, meta, _ = read_model(tin2_runs.pre.run_dir)
    ours = build_classifier(load_config(base=meta["config"]).model, 1).eval()
    transfer(tensors, ours)
    x = timm_inputs(model, tin2.images)
    with torch.no_grad():
        tokens = ours.forward_features(x)
        torch.testing.assert_close(model.forward_features(x), tokens, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            model(x), ours.forward_head(tokens, pre_logits=True), atol=1e-5, rtol=0
        )


@pytest.mark.real_data
def test_timm_logits_on_real_images(real2_runs, real2, tmp_path):
    """The same checks on real Tiny ImageNet photos."""
    test_timm_folder_loads_with_labels_and_gives_vitmim_logits(real2_runs, real2, tmp_path)


@pytest.mark.real_data
def test_encoder_features_on_real_images(real2_runs, real2, tmp_path):
    test_encoder_folder_gives_the_pretrained_backbone_features(real2_runs, real2, tmp_path)


def test_file_format_stays_the_default(tin2_runs, tmp_path):
    out = tmp_path / "w.safetensors"
    assert cli.main(["export", str(tin2_runs.pre.run_dir), "--encoder", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    model = timm.models.vision_transformer.VisionTransformer(**meta["kwargs"])
    model.load_state_dict(load_file(out), strict=True)
    assert meta["kwargs"]["num_classes"] == 0 and meta["classes"] == []


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "not a fine-tuned classifier"),  # a pre-training run without --encoder
        (["--format", "timm"], "is a file"),  # --out names an existing file
    ],
)
def test_export_refusals_are_one_line_user_errors(tin2_runs, tmp_path, capsys, args, message):
    out = tmp_path / "taken"
    out.write_text("")
    assert (
        cli.main(
            [
                "export",
                str(tin2_runs.pre.run_dir),
                "--out",
                str(out),
                *args,
                *(["--encoder"] if "--format" in args else []),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_runs_of_the_wrong_kind_are_checkpoint_errors(tin2_runs, tin2, tmp_path):
    import vitmim

    with pytest.raises(vitmim.CheckpointError, match="not a fine-tuned classifier"):
        vitmim.export(tin2_runs.pre.run_dir, tmp_path / "x", format="timm")
    with pytest.raises(vitmim.CheckpointError, match="not a pre-trained restorer"):
        vitmim.reconstruct(tin2_runs.ft.run_dir, tin2.images[:1], tmp_path / "r.png")
    assert not (tmp_path / "x").exists()


def test_a_timm_encoder_is_pretrained_finetuned_and_exported_as_that_timm_model(tin2, tmp_path):
    """model.arch=timm end to end, as a user runs it: ViT-Tiny's design (at the smoke preset's
    size, with timm's class token) pre-trained; fine-tuned from the run without naming the
    architecture again; predicted; exported as vit_tiny_patch16_224, which timm rebuilds with the
    exported weights and the logits and probabilities vitmim gives."""
    import vitmim

    timm_encoder = {"model.arch": "timm", "model.global_pool": "token"}
    pre = vitmim.pretrain(
        data=tin2.path,
        out=tmp_path / "pre",
        preset="smoke",
        overrides={**tin2.overrides, **timm_encoder},
        progress=False,
    )
    ft = vitmim.finetune(
        init=pre.run_dir,
        data=tin2.path,
        out=tmp_path / "ft",
        preset="smoke",
        overrides=tin2.overrides,  # data and batch size: no model key
        progress=False,
    )
    _, meta, _ = read_model(ft.run_dir)
    assert meta["config"]["model"]["arch"] == "timm"  # built from the pre-training's model.json
    ours, _ = vitmim.load(ft.run_dir, device="cpu")
    assert isinstance(ours.backbone.vit, timm.models.vision_transformer.VisionTransformer)
    predicted = vitmim.predict(ft.run_dir, tin2.images, topk=1, device="cpu")

    out = tmp_path / "model"
    assert cli.main(["export", str(ft.run_dir), "--format", "timm", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["model_name"] == "vitmim-vit_tiny_patch16_224-d64-l2-h2-p8-64px"
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert (model.embed_dim, len(model.blocks), model.has_class_token) == (64, 2, True)
    x = timm_inputs(model, tin2.images)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, ours(x), atol=1e-5, rtol=0)
    top = logits.softmax(-1).max(-1)
    names = meta["class_names"]
    assert [(names[i], round(p, 4)) for p, i in zip(top.values.tolist(), top.indices.tolist())] == [
        (name, round(p, 4)) for [(name, p)] in predicted
    ]

    encoder = tmp_path / "encoder.safetensors"  # the restorer's encoder, in the file format
    assert cli.main(["export", str(pre.run_dir), "--encoder", "--out", str(encoder)]) == 0
    file_meta = json.loads(encoder.with_suffix(".json").read_text())
    backbone = timm.create_model(file_meta["architecture"], **file_meta["kwargs"]).eval()
    backbone.load_state_dict(load_file(encoder), strict=True)
    restorer, _ = vitmim.load(pre.run_dir, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(
            backbone.forward_features(x), restorer.backbone.forward_features(x), atol=1e-5, rtol=0
        )
