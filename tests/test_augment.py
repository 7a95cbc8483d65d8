"""Batched augmentation: windows of the padded image, flips, TrivialAugment ops and random erasing
against torchvision's definitions, determinism from the generator, kernels per batch."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from vitmim.augment import (
    TA_BINS,
    TA_OPS,
    augment,
    denormalize,
    draw_trivial_augment,
    mix,
    normalize,
    random_crop,
    random_erasing,
    random_flip,
    trivial_augment,
)
from vitmim.config import AugmentConfig


def images(n=6, seed=0):
    return torch.randint(
        0, 256, (n, 3, 64, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def test_crop_is_a_window_of_the_reflect_padded_image():
    x = images()
    out = random_crop(x, 4, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x.float(), (4,) * 4, mode="reflect")
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 64, dx : dx + 64] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i].float(), w) for w in windows)


def test_flip_mirrors_some_images_and_keeps_the_rest():
    x = images(32)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 4 < sum(flipped) < 28


def test_same_generator_same_batch():
    cfg = AugmentConfig()
    a = augment(images(), cfg, torch.Generator().manual_seed(5))
    b = augment(images(), cfg, torch.Generator().manual_seed(5))
    c = augment(images(), cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_round_trip():
    x = images()
    assert torch.allclose(denormalize(normalize(x)) * 255, x.float(), atol=1e-3)


def test_mix_gives_soft_targets_summing_to_one():
    x = normalize(images(8))
    y = torch.arange(8) % 4
    _, hard = mix(x, y, 4, AugmentConfig())
    assert torch.equal(hard.argmax(1), y)
    torch.manual_seed(0)
    xm, soft = mix(x, y, 4, AugmentConfig(mixup=0.8, cutmix=1.0))
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
    assert not torch.equal(xm, x)


def smooth_images(n=4, seed=0):
    """Photo-like uint8 images (smooth, full range) so every op has something to change."""
    small = torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed))
    return (
        F.interpolate(small.float(), size=64, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    )


def torchvision_op(img: torch.Tensor, name: str, m: float) -> torch.Tensor:
    """TrivialAugmentWide's definition of each op at magnitude ``m`` (torchvision v2)."""
    shear = math.degrees(math.atan(m))
    ops = {
        "identity": lambda: img,
        "shear_x": lambda: TF.affine(
            img, angle=0.0, translate=[0, 0], scale=1.0, shear=[shear, 0.0], center=[0, 0]
        ),
        "shear_y": lambda: TF.affine(
            img, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, shear], center=[0, 0]
        ),
        "translate_x": lambda: TF.affine(
            img, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0]
        ),
        "translate_y": lambda: TF.affine(
            img, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0]
        ),
        "rotate": lambda: TF.rotate(img, angle=m),
        "brightness": lambda: TF.adjust_brightness(img, 1.0 + m),
        "color": lambda: TF.adjust_saturation(img, 1.0 + m),
        "contrast": lambda: TF.adjust_contrast(img, 1.0 + m),
        "sharpness": lambda: TF.adjust_sharpness(img, 1.0 + m),
        "posterize": lambda: TF.posterize(img, int(m)),
        "solarize": lambda: TF.solarize(img, threshold=m),
        "autocontrast": lambda: TF.autocontrast(img),
        "equalize": lambda: TF.equalize(img),
    }
    return ops[name]()


# magnitudes of torchvision's bins 3 and 30 (posterize: bits; solarize: threshold in grey levels)
MAGNITUDES = {
    "shear_x": 0.99,
    "shear_y": -0.099,
    "translate_x": -32.0,
    "translate_y": 3.2,
    "rotate": 135.0,
    "brightness": -0.99,
    "color": 0.99,
    "contrast": -0.099,
    "sharpness": 0.99,
    "posterize": 2.0,
    "solarize": 110.5,
}


@pytest.mark.parametrize("name", TA_OPS)
def test_each_trivial_augment_op_matches_torchvision(name):
    x = smooth_images()
    for m in {
        MAGNITUDES.get(name, 0.0),
        -MAGNITUDES.get(name, 0.0)
        if name not in ("posterize", "solarize")
        else 6.0
        if name == "posterize"
        else 229.5,
    }:
        op = torch.full((len(x),), TA_OPS.index(name))
        out = trivial_augment(x, op, torch.full((len(x),), m, dtype=torch.float64))
        ref = torch.stack([torchvision_op(img, name, m) for img in x])
        assert out.dtype == torch.uint8 and out.shape == x.shape
        diff = (out.int() - ref.int()).abs()
        # within one grey level (float rounding before the uint8 truncation), on < 1 % of pixels
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, (name, m)
        if name != "identity":
            assert not torch.equal(out, x), (name, m)


def test_mixed_ops_in_one_batch_each_follow_their_own_definition():
    x = smooth_images(len(TA_OPS))
    op = torch.arange(len(TA_OPS))
    mags = [MAGNITUDES.get(n, 0.0) for n in TA_OPS]
    out = trivial_augment(x, op, torch.tensor(mags, dtype=torch.float64))
    for i, name in enumerate(TA_OPS):
        ref = torchvision_op(x[i], name, mags[i])
        assert (out[i].int() - ref.int()).abs().max() <= 1, name
    assert torch.equal(out[TA_OPS.index("identity")], x[TA_OPS.index("identity")])


def test_trivial_augment_draws_ops_uniformly_from_torchvision_bins():
    op, mag = draw_trivial_augment(14_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    counts = torch.bincount(op, minlength=len(TA_OPS))
    assert counts.min() > 800 and counts.max() < 1200  # 1000 expected per op
    rot = mag[op == TA_OPS.index("rotate")]
    bins = torch.linspace(0.0, 135.0, TA_BINS).double()
    assert torch.isin(rot.abs(), bins).all() and (rot < 0).any() and (rot > 0).any()
    bits = mag[op == TA_OPS.index("posterize")]
    assert set(bits.tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}
    assert (mag[op == TA_OPS.index("solarize")] >= 0).all()  # unsigned ops keep their sign


def test_random_erasing_boxes_follow_torchvision_ranges():
    x = torch.ones(400, 3, 64, 64)
    out = random_erasing(x, 1.0, torch.Generator().manual_seed(0))
    erased = (out == 0).all(1)  # (B, H, W): every channel set to the value 0
    assert torch.equal((out == 0).any(1), erased)
    frac = erased.float().mean((1, 2))
    # scale 0.02-0.33 of the area; box sides rounded to whole pixels
    assert frac.min() > 0.015 and frac.max() < 0.345
    for box in erased[:50]:  # one axis-aligned rectangle per image
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert box.sum() == h * w and 0.3 - 0.1 < h / w < 3.3 + 0.6
    assert torch.equal(random_erasing(x, 0.0, torch.Generator().manual_seed(0)), x)


def test_random_erasing_touches_a_share_p_of_images():
    out = random_erasing(torch.ones(2000, 3, 16, 16), 0.25, torch.Generator().manual_seed(1))
    share = (out == 0).flatten(1).any(1).float().mean()
    assert 0.21 < share < 0.29


def test_full_augmentation_is_a_function_of_the_generator():
    cfg = AugmentConfig(trivial_augment=True, erasing=0.5)
    a = augment(images(16), cfg, torch.Generator().manual_seed(5))
    b = augment(images(16), cfg, torch.Generator().manual_seed(5))
    c = augment(images(16), cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def kernels(batch: int) -> int:
    cfg = AugmentConfig(trivial_augment=True, erasing=0.25)
    x, g = images(batch), torch.Generator().manual_seed(0)
    augment(x, cfg, g)  # imports and caches first
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        augment(x, cfg, g)
    return len(prof.events())


def test_operators_per_batch_do_not_grow_with_the_batch():
    # a per-image loop would add hundreds; CPU kernels may pick a different internal path by size
    assert abs(kernels(128) - kernels(4)) <= 2
