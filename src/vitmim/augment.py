"""Batched augmentation on the compute device, driven by an explicit generator.

All random draws come from the ``torch.Generator`` passed in (or, for mixup/cutmix, from the global
RNG, which the engine reseeds every step), so a batch is a pure function of (seed, epoch, step):
this is what makes resumption after a kill bit-exact without saving any data-loader state.

Every transform works on the whole batch at once with per-image parameters drawn as tensors:
the kernels launched per step do not grow with the batch size.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from vitmim.config import AugmentConfig

# ImageNet statistics (Tiny ImageNet is drawn from ImageNet); 0 after normalisation = mean colour
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@functools.cache
def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 1, 1) mean and std on ``device``, made once rather than copied every step."""
    return (
        torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
        torch.tensor(STD, device=device).view(1, 3, 1, 1),
    )


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 normalised."""
    mean, std = _stats(x.device)
    return (x.float() / 255.0 - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Normalised (B, 3, H, W) -> float in [0, 1] for display."""
    mean, std = _stats(x.device)
    return (x * std + mean).clamp(0, 1)


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Reflect-pad by ``pad`` px and cut a random H x W window per image. (B, C, H, W)."""
    b, _, h, w = x.shape
    xp = F.pad(x.float() if not x.is_floating_point() else x, (pad,) * 4, mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g, device=g.device).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=g, device=g.device).to(x.device)
    rows = oy + torch.arange(h, device=x.device)  # (B, H)
    cols = ox + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).to(x.dtype).contiguous()


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g, device=g.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


# ---------------------------------------------------------------------------------------------
# TrivialAugment: torchvision's TrivialAugmentWide (its 14 ops, 31 magnitude bins, random signs,
# nearest interpolation, fill 0), one op and one bin drawn per image. Where it differs: the draws
# come from the passed generator (torchvision uses the global RNG), and a colour op may land one
# grey level away from torchvision's uint8 result (float rounding before the truncation).

TA_OPS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)
TA_SIGNED = (
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
)  # magnitude negated with probability 1/2
TA_BINS = 31
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
BLENDS = ("brightness", "color", "contrast", "sharpness")  # x * f + degenerate * (1 - f)


@functools.cache
def _ta_table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitudes (ops, bins) float64 (torchvision's float32 bins, widened as torchvision does
    with ``float()``) and (ops,) bool: whether the op's magnitude takes a random sign."""

    def lin(hi: float) -> torch.Tensor:
        return torch.linspace(0.0, hi, TA_BINS).double()

    zero = torch.zeros(TA_BINS, dtype=torch.float64)
    bits = (8 - (torch.arange(TA_BINS) / ((TA_BINS - 1) / 6))).round().double()  # 8 .. 2
    rows = {
        "identity": zero,
        "shear_x": lin(0.99),
        "shear_y": lin(0.99),
        "translate_x": lin(32.0),
        "translate_y": lin(32.0),
        "rotate": lin(135.0),
        "brightness": lin(0.99),
        "color": lin(0.99),
        "contrast": lin(0.99),
        "sharpness": lin(0.99),
        "posterize": bits,
        "solarize": 255.0 * torch.linspace(1.0, 0.0, TA_BINS).double(),  # threshold
        "autocontrast": zero,
        "equalize": zero,
    }
    table = torch.stack([rows[op] for op in TA_OPS]).to(device)
    signed = torch.tensor([op in TA_SIGNED for op in TA_OPS], device=device)
    return table, signed


def draw_trivial_augment(
    b: int, g: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One op index (B,) int64 into :data:`TA_OPS` and its signed magnitude (B,) float64 per
    image, uniform over ops and bins as in TrivialAugmentWide."""
    table, signed = _ta_table(g.device)
    op = torch.randint(len(TA_OPS), (b,), generator=g, device=g.device)
    bin_ = torch.randint(TA_BINS, (b,), generator=g, device=g.device)
    flip = (torch.rand(b, generator=g, device=g.device) <= 0.5) & signed[op]
    mag = table[op, bin_] * torch.where(flip, -1.0, 1.0).double()
    return op.to(device), mag.to(device)


def _is(op: torch.Tensor, *names: str) -> torch.Tensor:
    """(B,) bool: the image's op is one of ``names``, which must be neighbours in
    :data:`TA_OPS` (a range test needs no index tensor copied to the device)."""
    ks = sorted(TA_OPS.index(n) for n in names)
    assert ks == list(range(ks[0], ks[-1] + 1)), names
    return op == ks[0] if len(ks) == 1 else (op >= ks[0]) & (op <= ks[-1])


@functools.cache
def _base_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, H*W, 3) pixel-centre coordinates about the image centre, plus a 1, and the (2,)
    half-size that maps them to grid_sample's [-1, 1] (torchvision's ``_affine_grid``)."""
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=device)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=device)
    grid = torch.stack(
        [xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=device)], dim=-1
    )
    return grid.view(1, h * w, 3), torch.tensor([0.5 * w, 0.5 * h], device=device)


def _inverse_affine(op: torch.Tensor, mag: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 2, 3) float32 output -> input pixel maps of the geometric ops (identity for the rest),
    computed in float64 as torchvision's ``_get_inverse_affine_matrix`` does in Python."""
    zero = torch.zeros_like(mag)
    rot = torch.deg2rad(torch.where(_is(op, "rotate"), -mag, zero))  # F.rotate passes -angle
    # shear by atan(m) degrees, about the top-left corner (torchvision passes center=[0, 0])
    sx = torch.where(_is(op, "shear_x"), torch.atan(mag), zero)
    sy = torch.where(_is(op, "shear_y"), torch.atan(mag), zero)
    shear = _is(op, "shear_x", "shear_y")
    cx, cy = torch.where(shear, -0.5 * w, 0.0).double(), torch.where(shear, -0.5 * h, 0.0).double()
    tx = torch.where(_is(op, "translate_x"), mag.trunc(), zero)  # int(magnitude) px
    ty = torch.where(_is(op, "translate_y"), mag.trunc(), zero)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m2 = cx - d * (cx + tx) + b * (cy + ty)
    m5 = cy + c * (cx + tx) - a * (cy + ty)
    return torch.stack([d, -b, m2, -c, a, m5], dim=1).view(-1, 2, 3).float()


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of (B, C, H, W) float by per-image inverse maps, 0 outside."""
    b, _, h, w = x.shape
    base, half = _base_grid(h, w, x.device)
    grid = base.expand(b, -1, -1).bmm(theta.transpose(1, 2) / half)
    return F.grid_sample(
        x, grid.view(b, h, w, 2), mode="nearest", padding_mode="zeros", align_corners=False
    )


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 255] -> (B, 1, H, W) luma, floored as for uint8 images."""
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add(g, alpha=0.587).add(b, alpha=0.114).floor().unsqueeze(1)


@functools.cache
def _smooth_kernel(device: torch.device) -> torch.Tensor:
    """(3, 1, 3, 3) PIL's SMOOTH filter, which torchvision's sharpness blends against."""
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=device) / 13.0
    return k.expand(3, 1, 3, 3)


def _blend(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Brightness, colour, contrast and sharpness as one blend of x and ``degenerate``
    with ``f = 1 + magnitude`` and a per-image degenerate image: black, grey, the grey mean, or
    the smoothed image (borders kept)."""
    gray = _gray(x)
    smooth = F.conv2d(x, _smooth_kernel(x.device), groups=3).round()
    smooth = F.pad(smooth - x[..., 1:-1, 1:-1], (1, 1, 1, 1)) + x  # border: the image itself

    def where(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(_is(op, name)[:, None, None, None], a, b)

    degenerate = where("color", gray, torch.zeros_like(x))
    degenerate = where("contrast", gray.mean((1, 2, 3), keepdim=True), degenerate)
    degenerate = where("sharpness", smooth, degenerate)
    ratio = 1.0 + mag  # float64, then both weights in float32 as torchvision's Python floats
    f, f_rest = ratio.float()[:, None, None, None], (1.0 - ratio).float()[:, None, None, None]
    # sharpness is written x + (1 - f) * (smooth - x) in torchvision: the same order here keeps
    # the truncation to uint8 identical
    out = where("sharpness", x + f_rest * (degenerate - x), x * f + degenerate * f_rest)
    return out.clamp(0, 255).floor()


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` (B,) bits of each 8-bit value."""
    q = torch.exp2(8.0 - bits.float())[:, None, None, None]
    return (x / q).floor() * q


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to [0, 255] (torchvision's autocontrast; a flat channel is kept),
    without its boolean-mask assignment, which waits for the device."""
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    flat = hi == lo
    lo = torch.where(flat, 0.0, lo)
    inv_scale = torch.where(flat, 1.0, (hi - lo) * (1.0 / 255))
    return ((x - lo) / inv_scale).clamp(0, 255).floor()


def trivial_augment(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Apply op ``op[i]`` at magnitude ``mag[i]`` (from :func:`draw_trivial_augment`) to image i.

    Args:
        x: (B, 3, H, W) uint8.
    Returns:
        (B, 3, H, W) uint8, each op as torchvision's functional op on a uint8 image (within
        one grey level: float rounding before truncation can differ).
    """
    from torchvision.transforms.v2.functional import equalize  # imported on use: ~3 s

    h, w = x.shape[-2:]
    xf = x.float()
    cond = lambda *names: _is(op, *names)[:, None, None, None]  # noqa: E731
    out = torch.where(cond(*GEOMETRIC), _warp(xf, _inverse_affine(op, mag, h, w)), xf)
    out = torch.where(cond(*BLENDS), _blend(xf, op, mag), out)
    out = torch.where(cond("posterize"), _posterize(xf, mag), out)
    thr = mag.float()[:, None, None, None]
    out = torch.where(cond("solarize") & (xf >= thr), 255.0 - xf, out)
    out = torch.where(cond("autocontrast"), _autocontrast(xf), out)
    out = torch.where(cond("equalize"), equalize(x).float(), out)
    return out.to(torch.uint8)


def random_erasing(
    x: torch.Tensor,
    p: float,
    g: torch.Generator,
    scale=(0.02, 0.33),
    ratio=(0.3, 3.3),
    attempts: int = 10,
) -> torch.Tensor:
    """torchvision's RandomErasing (value 0) per image, as one masked fill over the batch.

    With probability ``p`` an image gets a box of ``scale`` of its area and aspect ratio
    (log-uniform) in ``ratio``; as in torchvision, up to ``attempts`` boxes are drawn and the first
    that fits is used (none fits: the image is kept). x: (B, C, H, W) float."""
    b, _, h, w = x.shape
    dev = g.device
    erase = torch.rand(b, generator=g, device=dev) < p
    area = h * w * torch.empty(b, attempts, device=dev).uniform_(*scale, generator=g)
    aspect = (
        torch.empty(b, attempts, device=dev)
        .uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
        .exp()
    )
    bh, bw = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (bh < h) & (bw < w)
    first = fits.int().argmax(1, keepdim=True)  # first attempt that fits
    bh, bw = bh.gather(1, first), bw.gather(1, first)  # (B, 1)
    top = (torch.rand(b, 1, generator=g, device=dev) * (h - bh + 1)).floor()
    left = (torch.rand(b, 1, generator=g, device=dev) * (w - bw + 1)).floor()
    rows = torch.arange(h, device=dev)[None, :]  # (1, H)
    cols = torch.arange(w, device=dev)[None, :]
    in_rows = (rows >= top) & (rows < top + bh)  # (B, H)
    in_cols = (cols >= left) & (cols < left + bw)  # (B, W)
    box = in_rows[:, :, None] & in_cols[:, None, :] & (erase & fits.any(1))[:, None, None]
    return x.masked_fill(box[:, None].to(x.device), 0.0)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Training augmentation of a uint8 batch. (B, 3, H, W) uint8 -> (B, 3, H, W) normalised."""
    if cfg.trivial_augment:
        x = trivial_augment(x, *draw_trivial_augment(len(x), g, x.device))
    if cfg.crop_pad:
        x = random_crop(x, cfg.crop_pad, g)
    if cfg.flip:
        x = random_flip(x, g)
    x = normalize(x)
    if cfg.erasing > 0:
        x = random_erasing(x, cfg.erasing, g)
    return x


def mix(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp / CutMix (torchvision's, one of them per batch) when enabled.

    Args:
        y: (B,) int64 labels.
    Returns:
        images and (B, classes) soft targets, so every batch has the same target type.
    """
    from torchvision.transforms import v2

    ops = []
    if cfg.mixup > 0:
        ops.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        ops.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    if not ops:
        return x, F.one_hot(y, num_classes).float()
    return v2.RandomChoice(ops)(x, y)
