"""The U-Net-ViT generator and the architecture switches (arch, skips, rezero, conv_stem)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cliproc
import pytest
import torch
from PIL import Image

from vitmim.config import Config, load_config
from vitmim.engine import param_groups
from vitmim.errors import UserError
from vitmim.inference import evaluate_run, reconstruct
from vitmim.masking import random_mask
from vitmim.models import build_classifier, build_restorer, transfer
from vitmim.models.restorer import forward_loss
from vitmim.models.unet_vit import ConvBlock, UNetViTEncoder
from vitmim.models.vit import Block

SMALL = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_dim=32",
    "model.decoder_depth=1",
    "model.unet_channels=[8,16,32]",
]
UNET = [
    {"arch": "unet-vit", "skips": s, "rezero": r}
    for s in ("all", "none", "no-finest")
    for r in (False, True)
]
VIT = [{"arch": "vit", "conv_stem": c, "rezero": r} for c in (False, True) for r in (False, True)]
SWITCHES = UNET + VIT
# the ViT restorer's other decoders: linear pixel head, with and without a mask token
VIT_FULL_PATH = [["pretrain.mask_patch=4"], ["pretrain.fast=false"]]


def small_config(extra: list[str] = (), **model) -> Config:
    """Config defaults with small widths, the given ``model.*`` switches and ``extra`` overrides."""
    sets = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in model.items()]
    return load_config(overrides=SMALL + sets + list(extra))


def switch_id(sw: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in sw.items())


def images(n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 64, 64) normalised-looking images and a default mask (8 px cells, 60 %)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 64, 64, generator=g), random_mask(n, 64, 8, 0.6, g)


@pytest.mark.parametrize("sw", SWITCHES, ids=switch_id)
def test_output_shapes(sw: dict) -> None:
    cfg = small_config(**sw)
    x, mask = images()
    restorer = build_restorer(cfg.model, cfg.pretrain)
    classifier = build_classifier(cfg.model, num_classes=7)
    assert restorer(x, mask).shape == (2, 3, 64, 64)
    assert classifier(x).shape == (2, 7)
    assert classifier.forward_features(x).shape == (2, 64, 32)  # 8x8 grid either way


@pytest.mark.parametrize(
    ("sw", "extra"),
    [(sw, []) for sw in SWITCHES] + [(VIT[-1], e) for e in VIT_FULL_PATH],
    ids=[switch_id(sw) for sw in SWITCHES] + [e[0] for e in VIT_FULL_PATH],
)
def test_transfer_reports_exact_key_sets(sw: dict, extra: list[str]) -> None:
    cfg = small_config(extra, **sw)
    restorer = build_restorer(cfg.model, cfg.pretrain)
    classifier = build_classifier(cfg.model, num_classes=5, drop_path=0.1)
    source = restorer.state_dict()
    report = transfer(source, classifier)
    own = classifier.state_dict()
    assert sorted(report.copied) == sorted(k for k in own if k.startswith("backbone."))
    assert sorted(report.new) == ["head.bias", "head.weight"]
    assert sorted(report.dropped) == sorted(k for k in source if not k.startswith("backbone."))
    assert report.dropped  # every restorer has a decoder to drop
    after = classifier.state_dict()
    assert all(torch.equal(after[k], source[k]) for k in report.copied)


def test_unet_vit_restorer_names_encoder_backbone_and_the_rest_decoder() -> None:
    cfg = small_config(arch="unet-vit")
    keys = build_restorer(cfg.model, cfg.pretrain).state_dict()
    assert {k.split(".")[0] for k in keys} == {"backbone", "decoder"}
    assert {k.split(".")[1] for k in keys if k.startswith("backbone.")} == {
        "stem",
        "levels",
        "downs",
        "pos_embed",
        "blocks",
        "norm",
    }


def test_rezero_gates_start_at_zero_so_blocks_are_the_identity() -> None:
    torch.manual_seed(0)
    feats, tokens = torch.randn(2, 8, 16, 16), torch.randn(2, 10, 32)
    conv, vit_block = ConvBlock(8, rezero=True), Block(32, 2, rezero=True)
    assert torch.equal(conv(feats), feats)
    assert torch.equal(vit_block(tokens), tokens)
    assert not torch.allclose(ConvBlock(8, rezero=False)(feats), feats)  # plain blocks are not
    restorer = build_restorer(small_config(arch="unet-vit", rezero=True).model, Config().pretrain)
    gates = {n: p for n, p in restorer.named_parameters() if n.endswith(("gate", "gate1", "gate2"))}
    assert len(gates) == 3 + 3 + 2 * 2  # encoder levels, decoder levels, 2 per ViT block
    assert all(torch.equal(p, torch.zeros(1)) for p in gates.values())


@pytest.mark.parametrize(
    ("skips", "used"), [("all", {0, 1, 2}), ("no-finest", {1, 2}), ("none", set())]
)
def test_skips_switch_removes_the_skip_path(skips: str, used: set[int]) -> None:
    cfg = small_config(arch="unet-vit", skips=skips)
    restorer = build_restorer(cfg.model, cfg.pretrain).eval()
    assert {int(k) for k in restorer.decoder.fuse} == used  # no modules for removed levels
    x, mask = images()
    with torch.no_grad():
        tokens, feats = restorer.backbone.forward_skips(x)
        base = restorer.decoder(tokens, feats)
        for level in range(3):  # the same bottleneck with one skip map replaced by noise
            noisy = list(feats)
            noisy[level] = torch.randn_like(feats[level])
            changed = not torch.allclose(restorer.decoder(tokens, noisy), base)
            assert changed == (level in used), f"level {level}"


def test_skip_maps_have_the_documented_shapes() -> None:
    encoder = UNetViTEncoder(small_config(arch="unet-vit").model)
    tokens, feats = encoder.forward_skips(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 64, 32)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 64, 64), (2, 16, 32, 32), (2, 32, 16, 16)]


def test_layer_ids_and_no_weight_decay_fit_the_engine() -> None:
    cfg = load_config(overrides=SMALL + ["model.arch=unet-vit", "finetune.layer_decay=0.5"])
    classifier = build_classifier(cfg.model, num_classes=3)
    names = dict(classifier.named_parameters())
    assert classifier.no_weight_decay() <= names.keys()
    ids = {n: classifier.layer_id(n) for n in names}
    assert ids["backbone.stem.0.weight"] == ids["backbone.levels.2.body.0.weight"] == 0
    assert ids["backbone.blocks.1.attn.qkv.weight"] == 2
    assert ids["backbone.norm.weight"] == ids["head.weight"] == 3
    scales = {g["lr_scale"] for g in param_groups(classifier, cfg.finetune)}
    assert scales == {0.5**3, 0.5**2, 0.5, 1.0}


def test_unet_vit_forward_loss_decreases() -> None:
    torch.manual_seed(0)
    cfg = load_config(
        overrides=SMALL + ["model.arch=unet-vit", "model.rezero=true", "model.img_size=32"]
    )  # 32 px keeps 20 CPU steps quick
    model = build_restorer(cfg.model, cfg.pretrain)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 4, 4, generator=g).repeat_interleave(8, 2).repeat_interleave(8, 3)
    mask = random_mask(4, 32, 8, 0.6, g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = forward_loss(model(x, mask), x, mask, cfg.pretrain, cfg.model.patch_size)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize(
    ("channels", "why"),
    [
        ("[]", "non-empty list"),
        ("[8,0,16]", "positive channel counts"),
        ("[8,8,8,8,8,8,8]", "2^len must divide"),
    ],
)
def test_bad_unet_channels_are_refused(channels: str, why: str) -> None:
    with pytest.raises(UserError, match=rf"model\.unet_channels: .*{re.escape(why)}"):
        load_config(overrides=["model.arch=unet-vit", f"model.unet_channels={channels}"])


def test_cli_run_with_unet_vit(tiny_tin: Path, tiny_tin_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        "run",
        "--preset",
        "smoke",
        "--data",
        str(tiny_tin),
        "--out",
        str(out),
        "--set",
        "model.arch=unet-vit",
        "--set",
        "data.classes=null",
        "--set",
        "pretrain.batch_size=16",
        "--set",
        "finetune.batch_size=16",
        "--set",
        "model.unet_channels=[8,16,32]",
    ]
    proc = cliproc.vitmim(*cmd, timeout=300, check=True)
    assert (out / "finetune" / "model.safetensors").exists()
    assert (out / "scratch" / "model.safetensors").exists()
    assert re.search(r"restorer: [\d.]+ M parameters, [\d.]+ GFLOPs per image", proc.stdout)
    assert re.search(r"classifier: [\d.]+ M parameters, [\d.]+ GFLOPs per image", proc.stdout)
    assert re.search(r"new: head\.weight, head\.bias; dropped: decoder\.\* \(\d+\)", proc.stdout)
    # the shipped models load back for evaluation (the numbers the run recorded for its last
    # epoch: the same weights) and reconstruction
    last = json.loads((out / "finetune" / "metrics.jsonl").read_text().splitlines()[-1])
    evaluated = evaluate_run(out / "finetune")
    assert evaluated["val_top1"] == last["val_top1"]
    assert evaluated["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    some = sorted((tiny_tin_dir / "val" / "images").glob("*.JPEG"))[:2]
    grid = reconstruct(out / "pretrain", [str(p) for p in some], tmp_path / "recon.png")
    with Image.open(grid) as im:
        assert im.size == (4 + 3 * 132, 24 + 2 * 132 + 4)  # a title row, 2 rows of 128 px


def test_unet_vit_forward_is_the_decoder_after_the_encoder() -> None:
    cfg = small_config(arch="unet-vit")
    restorer = build_restorer(cfg.model, cfg.pretrain).eval()
    x, mask = images()
    with torch.no_grad():
        tokens, feats = restorer.forward_encoder(x, mask)
        assert tokens.shape == (2, 64, 32) and len(feats) == 3
        # the encoder sees the filled image: what the masked pixels held does not reach it
        noisy_tokens, _ = restorer.forward_encoder(x + 10 * torch.randn_like(x) * mask, mask)
        assert torch.equal(tokens, noisy_tokens)
        assert torch.equal(restorer(x, mask), restorer.forward_decoder(tokens, feats))
