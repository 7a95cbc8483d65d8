"""Masked-pixel restoration, the pre-training objective, as named steps (after MAE's models_mae.py).

Mask convention for every step below: ``mask`` is (B, 1, H, W) float, ``1 = masked`` (hidden from
the model, to be restored), ``0 = visible``.

A training step runs, in this order:

1. :func:`random_masking` hides ``mask_ratio`` of the ``mask_patch`` px cells of each image;
2. :meth:`Restorer.forward_encoder` encodes only what the model may see;
3. :meth:`Restorer.forward_decoder` predicts the pixels of every patch (:func:`patchify` order);
4. :func:`forward_loss` compares them with the true pixels (or per-patch normalised ones).

:meth:`Restorer.forward` composes 2 and 3 (what the engine calls); :func:`restored_image`,
:func:`shown_restoration` and :func:`restoration_metrics` turn a prediction back into an image,
paste it into the masked cells and score that image in pixel space, from the visible pixels alone:
a restoration figure never uses the true values or statistics of masked pixels.

Two paths give the same encoder (the part that is transferred):

* full path (SimMIM): the encoder sees every token; masked pixels are filled with 0 (the data-set
  mean after normalisation), or, when the mask cell is a multiple of the patch, masked tokens are
  replaced by a learned ``mask_token``. A linear head predicts each patch's pixels.
* fast path (MAE): when the mask cell is a multiple of the patch, the encoder sees only the visible
  tokens and a light transformer decoder fills in the rest. Fewer tokens -> faster pre-training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitmim.augment import denormalize
from vitmim.config import TOKEN_ARCHS, Config, ModelConfig, PretrainConfig
from vitmim.masking import apply_fill, num_masked, pixel_to_token_mask, random_mask
from vitmim.models.vit import Block, TokenBackbone, init_weights, sincos_pos_embed


def random_masking(
    n: int,
    img_size: int,
    pcfg: PretrainConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``n`` masks, each hiding exactly ``round(mask_ratio * cells)`` random ``mask_patch`` px
    cells of an ``img_size`` px square image. -> (n, 1, H, W)."""
    return random_mask(n, img_size, pcfg.mask_patch, pcfg.mask_ratio, generator, device)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def visible_ids(masked: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the visible tokens, in row-major order: (B, N) bool, True = masked ->
    (B, n_keep) long. Every row must show exactly ``n_keep`` tokens, as :func:`random_masking`'s
    masks do; a count fixed ahead keeps the shapes static, so neither the host waits on the device
    nor torch.compile breaks its graph, as indexing by a boolean mask would make them."""
    # a stable sort puts the visible (0) tokens first, each group in its original order
    return torch.argsort(masked.to(torch.uint8), dim=1, stable=True)[:, :n_keep]


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, N, D) tokens, (B, n) indices -> (B, n, D) the tokens at ``ids``."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def unpatchify(x: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); inverse of :func:`patchify` for square images."""
    b, n, _ = x.shape
    g = int(n**0.5)
    x = x.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, g * p, g * p)


class FastDecoder(nn.Module):
    """MAE decoder: visible encoder tokens + mask tokens -> pixels of every patch."""

    pos_embed: torch.Tensor  # (1, N, dim), fixed sine-cosine
    mask_token: torch.Tensor  # (1, 1, dim)

    def __init__(self, enc_dim: int, dim: int, depth: int, num_heads: int, grid: int, patch: int):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid), persistent=False)
        heads = max(1, dim // 32)  # 32-wide heads whatever the encoder uses
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch * patch * 3)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, visible: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """visible: (B, n, D) encoded visible tokens; ids: (B, n) their token indices
        (:func:`visible_ids`) -> (B, N, p*p*3)."""
        v = self.embed(visible)  # (B, n, d)
        b, n_all = v.shape[0], self.pos_embed.shape[1]
        x = self.mask_token.to(v.dtype).expand(b, n_all, -1)
        x = x.scatter(1, ids.unsqueeze(-1).expand_as(v), v)  # visible tokens back in their places
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))


def uses_fast_path(model: ModelConfig, pretrain: PretrainConfig) -> bool:
    """Whether pre-training encodes only the visible tokens (MAE's path): asked for, on a plain
    token transformer (convolutions need the whole image), with mask cells that cover whole
    patches."""
    return (
        pretrain.fast and model.arch in TOKEN_ARCHS and pretrain.mask_patch % model.patch_size == 0
    )


def keep_visible(tokens: torch.Tensor, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, prefix + N, D) positioned tokens -> (B, prefix + n, D): the prefix tokens (a class
    token, registers), then the patch tokens at ``ids`` (B, n)."""
    visible = gather_tokens(tokens[:, prefix:], ids)
    return torch.cat([tokens[:, :prefix], visible], dim=1) if prefix else visible


class Restorer(nn.Module):
    """ViT restorer: ``backbone`` (transferred) + ``decoder`` (dropped after pre-training).

    Args:
        backbone: the encoder built for ``cfg``, vitmim's ViT or timm's
            (:func:`vitmim.models.build_token_backbone`).
    """

    def __init__(self, backbone: TokenBackbone, cfg: ModelConfig, pcfg: PretrainConfig):
        super().__init__()
        self.backbone = backbone
        self.patch_size = p = cfg.patch_size
        self.token_masking = pcfg.mask_patch % p == 0  # every token wholly masked or visible
        self.fast = uses_fast_path(cfg, pcfg)
        if self.fast:
            cells = (cfg.img_size // pcfg.mask_patch) ** 2
            tokens_per_cell = (pcfg.mask_patch // p) ** 2
            # visible tokens per image: a Python int, so the fast path's shapes are static
            self.n_keep = (cells - num_masked(cells, pcfg.mask_ratio)) * tokens_per_cell
            self.decoder: nn.Module = FastDecoder(
                cfg.embed_dim,
                cfg.decoder_dim,
                cfg.decoder_depth,
                cfg.num_heads,
                self.backbone.grid,
                p,
            )
        else:
            if self.token_masking:
                self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
                nn.init.normal_(self.mask_token, std=0.02)
            self.decoder = nn.Linear(cfg.embed_dim, p * p * 3)
            init_weights(self.decoder)

    def no_weight_decay(self) -> set[str]:
        own = {f"backbone.{n}" for n in self.backbone.no_weight_decay()}
        return own | {"mask_token", "decoder.mask_token"}

    def forward_encoder(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode what the model may see of ``x`` (B, 3, H, W), normalised.

        Returns:
            latent: (B, N, D) every token, or on the fast path (B, n, D) the visible ones only,
                in row-major order;
            ids: on the fast path (B, n) long, the token index of each row of ``latent``;
                else None.

        On the fast path ``mask`` must hide exactly ``round(mask_ratio * cells)`` cells of each
        image, as :func:`random_masking` does: ``n`` is fixed by the config. Prefix tokens (a
        timm encoder's class token) pass through the encoder and are left out of ``latent``.
        """
        bb, p, prefix = self.backbone, self.patch_size, self.backbone.num_prefix_tokens
        if not self.token_masking:
            return bb.forward_features(apply_fill(x, mask))[:, prefix:], None
        masked = pixel_to_token_mask(mask, p)  # (B, N) bool
        # blank masked pixels first: a conv stem's receptive field crosses patch borders
        tokens = bb.embed(apply_fill(x, mask))  # (B, N, D)
        if self.fast:
            ids = visible_ids(masked, self.n_keep)
            kept = keep_visible(bb.add_positions(tokens), ids, prefix)  # (B, prefix + n, D)
            return bb.forward_tokens(kept)[:, prefix:], ids
        m = masked.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1 - m) + self.mask_token.to(tokens.dtype) * m
        return bb.forward_tokens(bb.add_positions(tokens))[:, prefix:], None

    def forward_decoder(self, latent: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward_encoder`'s output -> (B, N, p*p*3) predicted pixels of every patch."""
        return self.decoder(latent, ids) if self.fast else self.decoder(latent)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised -> (B, 3, H, W) prediction in the loss's target space."""
        return unpatchify(self.forward_decoder(*self.forward_encoder(x, mask)), self.patch_size)


def normalize_patches(x: torch.Tensor, p: int, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch, per-image standardisation of pixels (MAE ``norm_pix_loss`` targets)."""
    t = patchify(x, p)  # (B, N, p*p*3)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + eps).sqrt()
    return unpatchify(t, p, x.shape[1])


def loss_target(x: torch.Tensor, pcfg: PretrainConfig, patch_size: int) -> torch.Tensor:
    """What the model learns to predict: ``x`` itself, or with ``norm_pix`` ``x`` standardised per
    ``patch_size`` px patch. (B, 3, H, W) -> (B, 3, H, W)."""
    return normalize_patches(x, patch_size) if pcfg.norm_pix else x


def forward_loss(
    pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, pcfg: PretrainConfig, patch_size: int
) -> torch.Tensor:
    """L1 (or L2) between prediction and :func:`loss_target`, on masked pixels only by default.

    Args:
        pred: (B, 3, H, W) the restorer's output.
        x: (B, 3, H, W) the true images, normalised.
        mask: (B, 1, H, W).
    """
    target = loss_target(x, pcfg, patch_size)
    err = (pred - target).abs() if pcfg.loss == "l1" else (pred - target) ** 2
    if pcfg.loss_on == "all":
        return err.mean()
    m = mask.expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


STATS_WINDOW = 3  # side, in patches, of the neighbourhood whose visible pixels stand in for a patch


def visible_patch_stats(
    x: torch.Tensor, mask: torch.Tensor, p: int, window: int = STATS_WINDOW
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each ``p`` px patch's pixel mean and variance, estimated from visible pixels only.

    The estimate pools the visible pixels of the ``window`` x ``window`` patches centred on the
    patch: their mean, and their within-patch variance (each patch's scatter about its own mean,
    so steps between neighbouring patches do not inflate it). Where that neighbourhood shows less
    than one patch's worth of pixels, the whole image's visible pixels are pooled instead. On an
    image whose patches all share one distribution the estimate is that distribution's.

    Args:
        x: (B, C, H, W) normalised; masked pixels are never read.
        mask: (B, 1, H, W).

    Returns:
        mean, var: (B, N, 1) each, per patch in :func:`patchify` order; var unbiased, as
        :func:`normalize_patches` uses.
    """
    vis = (1.0 - mask).expand_as(x)
    xv = x * vis  # masked pixels are 0 whatever they held

    def patch_sum(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, H/p, W/p)
        return F.avg_pool2d(t.sum(1, keepdim=True), p, divisor_override=1)

    n, s1 = patch_sum(vis), patch_sum(xv)
    ss = patch_sum(xv * xv) - s1**2 / n.clamp_min(1)  # sum of squares about the patch's mean
    sums = torch.cat([n, s1, ss, (n - 1).clamp_min(0)], 1)  # (B, 4, g, g)
    local = F.avg_pool2d(sums, window, 1, window // 2, divisor_override=1)
    enough = local[:, :1] >= p * p * x.shape[1]
    n, s1, ss, dof = torch.where(enough, local, sums.sum((2, 3), keepdim=True)).unbind(1)
    mean = s1 / n.clamp_min(1)  # nothing visible at all: the data-set mean, 0
    var = (ss / dof.clamp_min(1)).clamp_min(0)
    return mean.flatten(1).unsqueeze(-1), var.flatten(1).unsqueeze(-1)


def to_image(pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, cfg: Config) -> torch.Tensor:
    """A prediction in the loss's target space -> (B, 3, H, W) normalised image, using only what
    the model saw (the visible pixels of ``x``).

    With per-patch normalised targets the prediction of a patch is its standardised pixels; they
    are scaled back with :func:`visible_patch_stats`. The true statistics of a masked patch would
    hand the restoration its mean colour and contrast, which no model output carries; an estimate
    from visible neighbours costs two pooling passes and needs no extra output or loss, so
    training and checkpoints are those of the plain objective.
    """
    if not cfg.pretrain.norm_pix:
        return pred
    p = cfg.model.patch_size
    mean, var = visible_patch_stats(x, mask, p)
    return unpatchify(patchify(pred, p) * (var + 1e-6).sqrt() + mean, p)


def restored_image(
    model: nn.Module, x: torch.Tensor, mask: torch.Tensor, cfg: Config
) -> torch.Tensor:
    """The restorer's prediction as an image: (B, 3, H, W) normalised. Depends on the visible
    pixels of ``x`` only (:func:`to_image`); paste them over it to show a restoration."""
    return to_image(model(x, mask).float(), x, mask, cfg)


def shown_restoration(x: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """A restoration as a person sees it: (B, 3, H, W) in pixel space [0, 1], the visible pixels
    of ``x`` with ``pred`` pasted into the masked cells. Where every visible pixel of an image is
    grey, so is the paste: the model predicts three channels, whose small differences would tint
    a grey image. ``x``, ``pred``: (B, 3, H, W) normalised; ``mask``: (B, 1, H, W), 1 = masked.

    The restoration figures (:func:`restoration_metrics`) and the reconstruction PNGs both come
    from this image, so a figure moves with what the picture shows."""
    orig, guess = denormalize(x.float()), denormalize(pred.float())
    mask = mask.float()
    spread = (orig.amax(1) - orig.amin(1)) * (1 - mask[:, 0])  # (B, H, W), visible pixels only
    grey = spread.flatten(1).amax(1) < 1e-3  # (B,)
    guess = torch.where(
        grey[:, None, None, None], guess.mean(1, keepdim=True).expand_as(guess), guess
    )
    return orig * (1 - mask) + guess * mask


@torch.no_grad()
def restoration_metrics(
    model: nn.Module, x: torch.Tensor, mask: torch.Tensor, cfg: Config, batch: int = 256
) -> dict[str, float]:
    """Restoration figures of held-out images, one forward pass per ``batch`` images.

    Returns:
        val_psnr: dB, the headline figure: PSNR over the masked pixels between the true images
            and :func:`shown_restoration` (pixel space, [0, 1]), the image the reconstruction
            PNGs show. It uses only what the model saw, so it is comparable across runs, with
            and without ``norm_pix``.
        val_pixel_l1: mean absolute error over the same pixels, same space (0-1 per channel).
        val_loss: the training objective (:func:`forward_loss`) on these images, in the loss's
            target space (per-patch standardised pixels with ``norm_pix``): comparable with
            ``train_loss``, not with the restoration a person sees. With ``norm_pix`` it measures
            each patch's pattern, blind to its mean and contrast, which the restoration must
            estimate from visible neighbours; so it can fall while the restoration gets worse.
    """
    p = cfg.model.patch_size
    loss = l1 = se = count = 0.0
    for i in range(0, len(x), batch):
        xb, mb = x[i : i + batch], mask[i : i + batch]
        raw = model(xb, mb).float()
        # every image has the same number of masked pixels: batch means weighted by batch size
        # average to the mean over all images
        loss += forward_loss(raw, xb, mb, cfg.pretrain, p).item() * len(xb)
        err = shown_restoration(xb, mb, to_image(raw, xb, mb, cfg)) - denormalize(xb)
        m = mb.expand_as(xb)
        l1 += (err.abs() * m).sum().item()
        se += ((err**2) * m).sum().item()
        count += m.sum().item()
    mse = se / max(count, 1.0)
    return {
        "val_psnr": 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item(),
        "val_pixel_l1": l1 / max(count, 1.0),
        "val_loss": loss / max(len(x), 1),
    }
