"""ViT restorer and classifier: shapes, loss on masked pixels only, transfer report, timm export."""

import cliproc
import numpy as np
import pytest
import timm
import torch

from vitmim.augment import denormalize
from vitmim.config import Config, load_config
from vitmim.errors import UserError
from vitmim.masking import apply_fill, pixel_to_token_mask, random_mask
from vitmim.models import build_classifier, build_restorer, transfer
from vitmim.models.classifier import to_timm_state
from vitmim.models.restorer import (
    forward_loss,
    normalize_patches,
    patchify,
    restoration_metrics,
    restored_image,
    shown_restoration,
    unpatchify,
    visible_patch_stats,
)
from vitmim.models.timm_vit import timm_kwargs

SMALL = [
    "model.embed_dim=64",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_dim=32",
    "model.decoder_depth=1",
]


def small(*overrides: str) -> Config:
    return load_config(overrides=SMALL + list(overrides))


def batch(cfg: Config, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 64, 64, generator=g)
    p = cfg.pretrain
    return x, random_mask(n, 64, p.mask_patch, p.mask_ratio, g)


@pytest.mark.parametrize(
    "mask_patch,fast", [(2, True), (4, False), (8, False), (8, True), (16, True)]
)
def test_restorer_predicts_a_full_image(mask_patch, fast):
    cfg = small(f"pretrain.mask_patch={mask_patch}", f"pretrain.fast={fast}")
    model = build_restorer(cfg.model, cfg.pretrain)
    assert model.fast == (fast and mask_patch % 8 == 0)
    x, mask = batch(cfg)
    assert model(x, mask).shape == (4, 3, 64, 64)


def test_patchify_round_trip():
    x = torch.randn(2, 3, 64, 64)
    assert patchify(x, 8).shape == (2, 64, 192)
    assert torch.equal(unpatchify(patchify(x, 8), 8), x)


def test_loss_counts_masked_pixels_only():
    cfg = small("pretrain.norm_pix=false")  # raw pixel targets: errors are what we add
    x, mask = batch(cfg)
    pred = x.clone()
    visible = (1 - mask).expand_as(x).bool()
    pred[visible] += 100.0  # huge errors where nothing is masked must not count
    assert forward_loss(pred, x, mask, cfg.pretrain, 8).item() == 0.0
    pred = x + mask * 0.5
    assert forward_loss(pred, x, mask, cfg.pretrain, 8).item() == pytest.approx(0.5)
    cfg.pretrain.loss_on = "all"
    assert forward_loss(pred, x, mask, cfg.pretrain, 8).item() == pytest.approx(
        0.5 * mask.mean().item(), rel=1e-5
    )


@pytest.mark.parametrize("conv_stem", [False, True])
@pytest.mark.parametrize("mask_patch,fast", [(4, False), (8, False), (8, True)])
def test_restorer_never_sees_masked_pixels(mask_patch, fast, conv_stem):
    """Restoration is not copying: changing only the masked pixels changes nothing. The conv stem's
    receptive field crosses patch borders, so it is checked on every path."""
    cfg = small(
        f"pretrain.mask_patch={mask_patch}", f"pretrain.fast={fast}", f"model.conv_stem={conv_stem}"
    )
    model = build_restorer(cfg.model, cfg.pretrain).eval()
    x, mask = batch(cfg)
    noisy = x + 10 * torch.randn_like(x) * mask  # change only the masked pixels
    with torch.no_grad():
        assert torch.allclose(model(x, mask), model(noisy, mask), atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_transfer_reports_exact_key_sets(fast):
    cfg = small(f"pretrain.fast={fast}")
    restorer = build_restorer(cfg.model, cfg.pretrain)
    clf = build_classifier(cfg.model, 10)
    report = transfer(restorer.state_dict(), clf)
    backbone = {k for k in clf.state_dict() if k.startswith("backbone.")}
    assert set(report.copied) == backbone
    assert report.new == ["head.weight", "head.bias"]
    assert set(report.dropped) == {
        k for k in restorer.state_dict() if not k.startswith("backbone.")
    }
    for k in backbone:
        assert torch.equal(clf.state_dict()[k], restorer.state_dict()[k])


def test_transfer_refuses_another_size_or_architecture():
    cfg = small()
    clf = build_classifier(cfg.model, 10)
    wider = build_restorer(small("model.embed_dim=96", "model.num_heads=3").model, cfg.pretrain)
    with pytest.raises(UserError, match="shape"):
        transfer(wider.state_dict(), clf)
    deeper = build_restorer(small("model.depth=3").model, cfg.pretrain)
    with pytest.raises(UserError, match="backbone.blocks.2"):
        transfer(deeper.state_dict(), clf)
    with pytest.raises(UserError, match="no value"):
        transfer({}, clf)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.rezero=false"],
        ["model.rezero=true"],
        ["model.global_pool=token", "model.pos_embed=learned"],
    ],
)
def test_classifier_exports_to_timm_strict(overrides):
    cfg = small(*overrides)
    clf = build_classifier(cfg.model, 7).eval()
    for p in clf.parameters():  # move gates and head off their init so the check means something
        p.data.add_(0.01 * torch.randn_like(p))
    ref = timm.models.vision_transformer.VisionTransformer(**timm_kwargs(cfg.model, 7)).eval()
    ref.load_state_dict(to_timm_state(clf, cfg.model), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ref(x), clf(x), atol=1e-5)


def test_classifier_and_features_shapes():
    cfg = small("model.conv_stem=true")
    clf = build_classifier(cfg.model, 10)
    x = torch.randn(3, 3, 64, 64)
    tokens = clf.forward_features(x)
    assert tokens.shape == (3, 64, 64)
    assert clf.forward_head(tokens, pre_logits=True).shape == (3, 64)
    assert clf(x).shape == (3, 10)


def test_norm_pix_targets_are_standardised_per_patch():
    cfg = small("pretrain.norm_pix=true")
    x, mask = batch(cfg)
    target = normalize_patches(x, 8)
    t = patchify(target, 8)
    assert torch.allclose(t.mean(-1), torch.zeros(4, 64), atol=1e-5)
    assert torch.allclose(t.std(-1), torch.ones(4, 64), atol=1e-3)  # unbiased, as MAE
    assert forward_loss(target, x, mask, cfg.pretrain, 8).item() == 0.0


@pytest.mark.parametrize("norm_pix", [True, False])
def test_restoration_metrics_take_one_forward_pass_per_batch(norm_pix):
    cfg = small(f"pretrain.norm_pix={norm_pix}")
    model = build_restorer(cfg.model, cfg.pretrain).eval()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    x, mask = batch(cfg, n=5)
    metrics = restoration_metrics(model, x, mask, cfg, batch=2)  # batches of 2, 2 and 1 images
    assert len(calls) == 3
    assert set(metrics) == {"val_psnr", "val_pixel_l1", "val_loss"}


@pytest.mark.parametrize("mask_patch,fast", [(4, False), (8, False), (8, True)])
def test_forward_is_the_decoder_after_the_encoder(mask_patch, fast):
    cfg = small(f"pretrain.mask_patch={mask_patch}", f"pretrain.fast={fast}")
    model = build_restorer(cfg.model, cfg.pretrain).eval()
    x, mask = batch(cfg)
    with torch.no_grad():
        latent, ids = model.forward_encoder(x, mask)
        assert (ids is not None) == model.fast
        visible = int((~pixel_to_token_mask(mask, 8)[0]).sum())
        n_tokens = visible if model.fast else 64  # fast: only the visible tokens
        assert latent.shape == (4, n_tokens, 64)
        patches = model.forward_decoder(latent, ids)
        assert patches.shape == (4, 64, 8 * 8 * 3)
        assert torch.equal(model(x, mask), unpatchify(patches, 8))


@pytest.mark.parametrize("arch", ["vit", "unet-vit"])
def test_backbones_and_the_classifier_share_the_backbone_contract(arch):
    from vitmim.engine import param_groups

    cfg = small(f"model.arch={arch}", "model.unet_channels=[8,16,32]", "finetune.layer_decay=0.5")
    classifier = build_classifier(cfg.model, 5)
    backbone = classifier.backbone
    assert (
        (classifier.depth, classifier.embed_dim) == (backbone.depth, backbone.embed_dim) == (2, 64)
    )
    assert classifier.no_weight_decay() == {f"backbone.{n}" for n in backbone.no_weight_decay()}
    assert classifier.layer_id("head.weight") == classifier.depth + 1
    assert classifier.forward_features(torch.randn(2, 3, 64, 64)).shape[-1] == 64
    # fine-tuning decays the lr per layer; pre-training a restorer has no layer decay
    assert {g["lr_scale"] for g in param_groups(classifier, cfg.finetune)} == {
        0.5**3,
        0.5**2,
        0.5,
        1.0,
    }
    restorer = build_restorer(cfg.model, cfg.pretrain)
    groups = param_groups(restorer, cfg.pretrain)
    assert {g["lr_scale"] for g in groups} == {1.0}
    no_decay = {
        n
        for n, p in restorer.named_parameters()
        if any(p is q for g in groups if g["weight_decay"] == 0 for q in g["params"])
    }
    assert "backbone.pos_embed" in no_decay


@pytest.mark.parametrize(
    "setup",
    [
        ["pretrain.fast=true"],
        ["pretrain.fast=false"],
        ["pretrain.mask_patch=4"],
        ["model.arch=unet-vit", "model.unet_channels=[8,16,32]"],
    ],
    ids=["vit-fast", "vit-full", "vit-pixel-fill", "unet-vit"],
)
def test_restored_image_never_reads_masked_pixels(setup):
    """With per-patch normalised targets the restored image and the PSNR use only what the model
    saw: whatever the masked pixels hold (zeros or loud noise), the restoration is the same."""
    cfg = small("pretrain.norm_pix=true", *setup)
    model = build_restorer(cfg.model, cfg.pretrain).eval()
    x, mask = batch(cfg)
    zeros = x * (1 - mask)
    noisy = zeros + 10 * torch.randn_like(x) * mask
    with torch.no_grad():
        blind = restored_image(model, zeros, mask, cfg)
        assert torch.equal(blind, restored_image(model, noisy, mask, cfg))
        # the PSNR scores that blind restoration against the true masked pixels
        m = mask.expand_as(x)
        mse = (((denormalize(blind) - denormalize(x)) ** 2) * m).sum() / m.sum()
        psnr = restoration_metrics(model, x, mask, cfg)["val_psnr"]
    assert psnr == pytest.approx(10 * torch.log10(1 / mse).item(), abs=1e-4)


def test_visible_patch_stats_recover_a_stationary_image():
    """One random 8x8 patch tiled over the image: every patch has its mean and variance, and so
    must the estimate, both near visible patches and (falling back to the whole image) far
    from them; the masked pixels themselves hold garbage."""
    tile = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = tile.repeat(2, 1, 8, 8)
    mask = torch.ones(2, 1, 64, 64)
    mask[0, :, :8, :8] = 0  # image 0: only the top-left patch is visible
    mask[1, :, 24:40, 24:40] = 0  # image 1: a 2x2 block of patches in the middle
    mean, var = visible_patch_stats(x + 100 * torch.randn_like(x) * mask, mask, 8)
    assert mean.shape == var.shape == (2, 64, 1)
    assert torch.allclose(mean, tile.mean().expand_as(mean), atol=1e-5)
    assert torch.allclose(var, tile.var().expand_as(var), atol=1e-4)


def test_visible_patch_stats_follow_the_neighbourhood():
    """Left half dark, right half bright: a masked patch takes its mean from its own side."""
    x = torch.cat([torch.full((1, 3, 64, 32), -1.0), torch.full((1, 3, 64, 32), 1.0)], dim=3)
    mask = random_mask(1, 64, 8, 0.25, torch.Generator().manual_seed(0))
    mean, _ = visible_patch_stats(x, mask, 8)
    side = torch.tensor([-1.0] * 3 + [1.0] * 3)  # the three columns of patches nearest each edge
    cols = mean.view(8, 8)[:, [0, 1, 2, 5, 6, 7]]
    assert torch.allclose(cols, side.expand_as(cols))


def boolean_index_forward(model, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The fast path written with boolean indexing (data-dependent shapes): the reference."""
    bb, dec = model.backbone, model.decoder
    keep = ~pixel_to_token_mask(mask, model.patch_size)
    tokens = bb.embed(apply_fill(x, mask)) + bb.pos_embed
    latent = bb.forward_tokens(tokens[keep].reshape(len(x), -1, tokens.shape[-1]))
    v = dec.embed(latent)
    full = dec.mask_token.expand(len(x), keep.shape[1], -1).clone()
    full[keep] = v.reshape(-1, v.shape[-1])
    full = full + dec.pos_embed
    for blk in dec.blocks:
        full = blk(full)
    return unpatchify(dec.pred(dec.norm(full)), model.patch_size)


@pytest.mark.parametrize("mask_patch,ratio", [(8, 0.75), (8, 0.3), (16, 0.5), (32, 0.25)])
def test_fast_path_gather_equals_boolean_indexing(mask_patch, ratio):
    """Visible tokens are gathered in row-major order: outputs and gradients are bit-identical to
    selecting them with a boolean mask."""
    cfg = small(f"pretrain.mask_patch={mask_patch}", f"pretrain.mask_ratio={ratio}")
    model = build_restorer(cfg.model, cfg.pretrain)
    assert model.fast
    for seed in range(3):
        x, mask = batch(cfg, n=6, seed=seed)
        out = model(x, mask)
        ref = boolean_index_forward(model, x, mask)
        assert torch.equal(out, ref)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        ref_grads = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_path_never_waits_for_the_device():
    cfg = small()
    model = build_restorer(cfg.model, cfg.pretrain).cuda()
    x, mask = (t.cuda() for t in batch(cfg, n=8))
    model(x, mask).sum().backward()  # first call: kernels load, caches fill
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(x, mask).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_fast_path_compiles_to_one_graph():
    """No data-dependent shape on the fast path: torch.compile needs no graph break."""
    cfg = small()
    model = build_restorer(cfg.model, cfg.pretrain).eval()
    x, mask = batch(cfg, n=2)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, mask), model(x, mask))


def test_class_token_classifier_pools_its_token_and_restorer_has_none():
    cfg = small("model.global_pool=token", "model.pos_embed=learned")
    clf = build_classifier(cfg.model, 10)
    x = torch.randn(3, 3, 64, 64)
    tokens = clf.forward_features(x)
    assert tokens.shape == (3, 1 + 64, 64)
    assert torch.equal(clf.forward_head(tokens, pre_logits=True), tokens[:, 0])
    assert clf.layer_id("cls_token") == 0 and "cls_token" in clf.no_weight_decay()
    restorer = build_restorer(cfg.model, cfg.pretrain)
    report = transfer(restorer.state_dict(), clf)  # the class token starts untrained
    assert set(report.new) == {"cls_token", "head.weight", "head.bias"}
    # the learned start is random and small, not the sine-cosine table
    default = build_classifier(small().model, 10).backbone.pos_embed
    assert not torch.allclose(clf.backbone.pos_embed, default)
    assert clf.backbone.pos_embed.std() < 0.05


def test_scratch_recipe_may_set_the_classifiers_own_model_keys():
    from vitmim.config import load_config, tuned_scratch

    cfg = load_config(overrides=["scratch={model.global_pool: token, finetune.lr: 0.002}"])
    tuned = tuned_scratch(cfg)
    assert tuned.model.global_pool == "token" and tuned.finetune.lr == 0.002
    assert cfg.model.global_pool == "avg"  # the pre-trained side keeps its model
    with pytest.raises(UserError, match="scratch.model.depth"):
        load_config(overrides=["scratch={model.depth: 2}"])


class FixedPrediction(torch.nn.Module):
    """A stand-in restorer whose output is fixed ahead: (B, 3, H, W), normalised."""

    def __init__(self, pred: torch.Tensor):
        super().__init__()
        self.pred = pred

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pred


def test_restoration_figures_score_the_restoration_the_png_shows(tin2, tmp_path):
    """Real Tiny ImageNet files, one made grey: predictions ever further from the truth score a
    lower PSNR and a higher pixel L1, every step; and the PSNR recomputed from the pixels of the
    reconstruction PNG is the reported one (a tinted prediction on the grey image included)."""
    from PIL import Image

    from vitmim.augment import normalize
    from vitmim.inference import load_images
    from vitmim.tasks import save_reconstruction_grid

    cfg = small("pretrain.norm_pix=false")  # the prediction is the image itself
    images = load_images(tin2.images, 64)
    images[0] = images[0].float().mean(0, keepdim=True).round().to(torch.uint8).expand(3, -1, -1)
    x = normalize(images)
    _, mask = batch(cfg, n=len(x))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    tint = torch.tensor([0.3, 0.0, -0.3]).view(1, 3, 1, 1)  # a tinted guess on the grey image
    figures = []
    for amount in (0.0, 0.1, 0.3, 0.6, 1.0):
        pred = x + amount * noise + tint
        metrics = restoration_metrics(FixedPrediction(pred), x, mask, cfg)
        figures.append((metrics["val_psnr"], metrics["val_pixel_l1"]))
        png = tmp_path / f"recon_{amount}.png"
        save_reconstruction_grid(png, x, mask, pred, tile=64)  # one PNG pixel per image pixel
        sheet = torch.from_numpy(np.asarray(Image.open(png).convert("RGB")).copy())
        shown = torch.stack(  # the "restored" column: 4 px margins, a 24 px title row
            [sheet[24 + r * 68 : 24 + r * 68 + 64, 140:204] for r in range(len(x))]
        ).permute(0, 3, 1, 2)
        # the PNG holds the scored image, to the rounding of its 8-bit pixels
        scored = shown_restoration(x, mask, pred)
        assert (shown.float() / 255 - scored).abs().max() <= 0.5 / 255 + 1e-6
        err = shown.float() / 255 - images.float() / 255
        m = mask.expand_as(err)
        psnr_png = 10 * torch.log10(m.sum() / ((err**2) * m).sum()).item()
        assert psnr_png == pytest.approx(metrics["val_psnr"], abs=0.2)
    psnrs, l1s = zip(*figures)
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert all(a < b for a, b in zip(l1s, l1s[1:])), l1s


@pytest.mark.real_data
def test_a_trained_restorer_scores_better_than_an_untrained_one(real2, tmp_path):
    """A pre-training process on two real Tiny ImageNet classes: its restorer beats the same
    model untrained on held-out images, in every figure (pixel-space PSNR and L1, and the loss),
    and each epoch's record carries them. On raw-pixel targets: with per-patch normalised ones an
    untrained model's flat guess, scaled back by the visible neighbours, is already a blur that
    a few steps barely beat in pixel space (docs/own-data.md)."""
    import json
    import os

    from vitmim.augment import normalize
    from vitmim.data import load_splits
    from vitmim.inference import load_restorer

    out = tmp_path / "pre"
    sets = [f"--set={k}={v}" for k, v in real2.overrides.items()]
    args = ["pretrain", "--data", str(real2.path), "--out", str(out), "--preset", "smoke", *sets]
    proc = cliproc.vitmim(
        *args,
        "--set=pretrain.epochs=3",
        "--set=pretrain.norm_pix=false",
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_psnr", "val_pixel_l1", "val_loss"} <= set(r) for r in records)
    trained, cfg = load_restorer(out)
    torch.manual_seed(0)
    untrained = build_restorer(cfg.model, cfg.pretrain).eval()
    _, val = load_splits(cfg.data, cfg.model.img_size, progress=False)
    assert val is not None
    x = normalize(val.images[:128])
    p = cfg.pretrain
    mask = random_mask(len(x), 64, p.mask_patch, p.mask_ratio, torch.Generator().manual_seed(0))
    before = restoration_metrics(untrained, x, mask, cfg)
    after = restoration_metrics(trained.eval(), x, mask, cfg)
    assert after["val_psnr"] > before["val_psnr"] + 0.5, (before, after)
    assert after["val_pixel_l1"] < before["val_pixel_l1"], (before, after)
    assert after["val_loss"] < before["val_loss"], (before, after)
