"""Batched augmentation: windows of the padded image, flips, determinism from the generator."""

import torch
import torch.nn.functional as F

from vitmim.augment import augment, denormalize, mix, normalize, random_crop, random_flip
from vitmim.config import AugmentConfig


def images(n=6, seed=0):
    return torch.randint(0, 256, (n, 3, 64, 64), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_crop_is_a_window_of_the_reflect_padded_image():
    x = images()
    out = random_crop(x, 4, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x.float(), (4,) * 4, mode="reflect")
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 64, dx:dx + 64] for dy in range(9) for dx in range(9)]
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
