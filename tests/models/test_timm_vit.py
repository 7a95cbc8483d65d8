"""A timm VisionTransformer as the encoder (model.arch=timm): the restorer's paths, the transfer,
the classifier against timm's own forward, layer ids and the errors a user sees."""

import os
import subprocess
import sys
import time

import pytest
import timm
import torch

from vitmim.config import Config, load_config, timm_vit_names
from vitmim.engine import param_groups
from vitmim.errors import ConfigError
from vitmim.masking import random_mask
from vitmim.models import build_classifier, build_restorer, transfer
from vitmim.models.classifier import timm_architecture, to_timm_state
from vitmim.models.timm_vit import TimmViT, timm_kwargs

SMALL = ["model.arch=timm", "model.embed_dim=64", "model.depth=2", "model.num_heads=2"]
# ViT-Tiny's design; a class token; four register tokens and positions only for the patches
DESIGNS = {
    "tiny-avg": [],
    "tiny-token": ["model.global_pool=token"],
    "reg4-token": ["model.timm_name=vit_little_patch16_reg4_gap_256", "model.global_pool=token"],
}


def small(*overrides: str) -> Config:
    return load_config(overrides=SMALL + ["model.decoder_dim=32", *overrides])


def batch(cfg: Config, n: int = 3):
    g = torch.Generator().manual_seed(0)
    p = cfg.pretrain
    return torch.randn(n, 3, 64, 64, generator=g), random_mask(n, 64, p.mask_patch, p.mask_ratio, g)


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("mask_patch,fast", [(4, False), (8, False), (8, True)])
def test_restorer_with_a_timm_encoder_never_sees_masked_pixels(design, mask_patch, fast):
    cfg = small(*DESIGNS[design], f"pretrain.mask_patch={mask_patch}", f"pretrain.fast={fast}")
    model = build_restorer(cfg.model, cfg.pretrain).eval()
    assert isinstance(model.backbone, TimmViT) and model.fast == (fast and mask_patch == 8)
    assert isinstance(model.backbone.vit, timm.models.vision_transformer.VisionTransformer)
    x, mask = batch(cfg)
    noisy = x + 10 * torch.randn_like(x) * mask  # change only the masked pixels
    with torch.no_grad():
        latent, ids = model.forward_encoder(x, mask)
        n = 16 if model.fast else 64  # 75 % of 64 tokens hidden; prefix tokens left out
        assert latent.shape == (3, n, 64) and (ids is not None) == model.fast
        out = model(x, mask)
        assert out.shape == (3, 3, 64, 64)
        torch.testing.assert_close(model(noisy, mask), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("design", DESIGNS)
def test_transferred_classifier_computes_what_timm_does(design):
    """Every encoder tensor (class and register tokens included) goes from the restorer to the
    classifier, and the classifier's logits are those of timm.create_model(timm_name) with the
    exported arguments and weights."""
    cfg = small(*DESIGNS[design])
    restorer = build_restorer(cfg.model, cfg.pretrain)
    for p in restorer.parameters():  # off their init, so that equal logits mean something
        p.data.add_(0.02 * torch.randn_like(p))
    clf = build_classifier(cfg.model, 7).eval()
    report = transfer(restorer.state_dict(), clf)
    assert report.new == ["head.weight", "head.bias"]
    assert set(report.copied) == {k for k in restorer.state_dict() if k.startswith("backbone.")}
    clf.head.weight.data.normal_()
    ref = timm.create_model(timm_architecture(cfg.model), **timm_kwargs(cfg.model, 7)).eval()
    ref.load_state_dict(to_timm_state(clf, cfg.model), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), ref(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(clf.forward_features(x), ref.forward_features(x))


def test_timm_encoder_has_vitmim_layer_ids_and_decay_exemptions():
    cfg = small("model.global_pool=token", "finetune.layer_decay=0.5")
    clf = build_classifier(cfg.model, 5)
    ids = {n: clf.layer_id(n) for n, _ in clf.named_parameters()}
    assert ids["backbone.vit.cls_token"] == ids["backbone.vit.pos_embed"] == 0
    assert ids["backbone.vit.patch_embed.proj.weight"] == 0
    assert ids["backbone.vit.blocks.1.mlp.fc2.weight"] == 2
    assert ids["backbone.vit.norm.weight"] == ids["head.weight"] == 3
    assert {"backbone.vit.pos_embed", "backbone.vit.cls_token"} <= clf.no_weight_decay()
    assert {g["lr_scale"] for g in param_groups(clf, cfg.finetune)} == {0.125, 0.25, 0.5, 1.0}


def test_positions_start_as_vitmim_says():
    """sincos: the patch positions are vitmim's sine-cosine table; learned: timm's random start."""
    sincos = build_classifier(small().model, 2).backbone.vit.pos_embed
    vit = build_classifier(load_config(overrides=SMALL[1:]).model, 2).backbone.pos_embed
    assert torch.equal(sincos, vit)
    learned = build_classifier(small("model.pos_embed=learned").model, 2).backbone.vit.pos_embed
    assert 0 < learned.std() < 0.05


@pytest.mark.parametrize(
    "name, near",
    [
        ("vit_tiny", "near: vit_tiny_patch16_224, vit_tiny_patch16_384"),
        ("resnet50", "e.g. vit_tiny_patch16_224"),  # a timm model, but not a ViT
    ],
)
def test_a_bad_timm_name_is_one_line_before_torch_loads(name, near, tmp_path):
    """A separate process, as a user runs it: refused from the config alone, in well under the
    seconds that importing torch (and timm) takes, before any data or output folder."""
    args = ["pretrain", "--out", str(tmp_path / "pre"), "--set", "model.arch=timm"]
    code = (
        "import sys; from vitmim import cli; rc = cli.main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules; sys.exit(rc)"
    )
    env = {**os.environ, "VITMIM_DATA": str(tmp_path / "absent.zip")}  # never opened
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--set", f"model.timm_name={name}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert time.perf_counter() - start < 5.0  # torch alone takes 5-10 s on the test machine
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert f"model.timm_name: {name} is not one of timm's VisionTransformer models" in proc.stderr
    assert near in proc.stderr and not (tmp_path / "pre").exists()


def test_the_names_read_without_timm_are_timms_own():
    assert timm_vit_names() == set(timm.list_models(module="vision_transformer"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.conv_stem=true", "model.conv_stem: applies to vitmim's own models"),
        ("model.rezero=true", "model.rezero: applies to vitmim's own models"),
        ("model.timm_name=vit_tiny_patch16_224.augreg_in21k", "without a weights tag"),
    ],
)
def test_keys_that_do_not_apply_to_a_timm_encoder_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        small(override)
