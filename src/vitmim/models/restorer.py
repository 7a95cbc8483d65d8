"""Masked-pixel restorer: ViT encoder + pixel decoder, and its loss.

Two paths give the same encoder (the part that is transferred):

* full path (SimMIM): the encoder sees every token; masked pixels are filled with 0 (the data-set
  mean after normalisation), or, when the mask cell is a multiple of the patch, masked tokens are
  replaced by a learned ``mask_token``. A linear head predicts each patch's pixels.
* fast path (MAE): when the mask cell is a multiple of the patch, the encoder sees only the visible
  tokens and a light transformer decoder fills in the rest. Fewer tokens -> faster pre-training.
"""

from __future__ import annotations

import torch
from torch import nn

from vitmim.config import ModelConfig, PretrainConfig
from vitmim.masking import apply_fill, pixel_to_token_mask
from vitmim.models.vit import Block, ViT, init_weights, sincos_pos_embed


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); inverse of :func:`patchify` for square images."""
    b, n, _ = x.shape
    g = int(n ** 0.5)
    x = x.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, g * p, g * p)


def restoration_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     cfg: PretrainConfig, patch_size: int) -> torch.Tensor:
    """L1 (or L2) between predicted and true pixels, on masked pixels only by default.

    Args:
        pred, target: (B, 3, H, W) in normalised pixel units.
        mask: (B, 1, H, W), 1 = masked.
    """
    if cfg.norm_pix:
        target = normalize_patches(target, patch_size)
    err = (pred - target).abs() if cfg.loss == "l1" else (pred - target) ** 2
    if cfg.loss_on == "all":
        return err.mean()
    m = mask.expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def normalize_patches(x: torch.Tensor, p: int, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch, per-image standardisation of pixels (MAE ``norm_pix_loss`` targets)."""
    t = patchify(x, p)  # (B, N, p*p*3)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + eps).sqrt()
    return unpatchify(t, p, x.shape[1])


class FastDecoder(nn.Module):
    """MAE decoder: visible encoder tokens + mask tokens -> pixels of every patch."""

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

    def forward(self, visible: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """visible: (B, n, D) encoded visible tokens; keep: (B, N) bool -> (B, N, p*p*3)."""
        v = self.embed(visible)  # (B, n, d)
        b, n_all = keep.shape
        x = self.mask_token.to(v.dtype).expand(b, n_all, -1).clone()
        x[keep] = v.reshape(-1, v.shape[-1])  # visible tokens back in their places
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))


class Restorer(nn.Module):
    """ViT restorer. ``forward(x, mask)`` -> predicted image (B, 3, H, W)."""

    def __init__(self, cfg: ModelConfig, pcfg: PretrainConfig):
        super().__init__()
        self.backbone = ViT(cfg, drop_path=pcfg.drop_path)
        self.patch_size = p = cfg.patch_size
        self.token_masking = pcfg.mask_patch % p == 0  # every token wholly masked or visible
        self.fast = pcfg.fast and self.token_masking
        if self.fast:
            self.decoder = FastDecoder(cfg.embed_dim, cfg.decoder_dim, cfg.decoder_depth,
                                       cfg.num_heads, self.backbone.grid, p)
        else:
            if self.token_masking:
                self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
                nn.init.normal_(self.mask_token, std=0.02)
            self.decoder = nn.Linear(cfg.embed_dim, p * p * 3)
            init_weights(self.decoder)

    def no_weight_decay(self) -> set[str]:
        return {"backbone.pos_embed", "mask_token", "decoder.mask_token"}

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised; mask: (B, 1, H, W), 1 = masked -> (B, 3, H, W)."""
        bb, p = self.backbone, self.patch_size
        if not self.token_masking:
            tokens = bb.forward_features(apply_fill(x, mask))
            return unpatchify(self.decoder(tokens), p)
        masked = pixel_to_token_mask(mask, p)  # (B, N) bool
        # blank masked pixels first: a conv stem's receptive field crosses patch borders
        tokens = bb.embed(apply_fill(x, mask))  # (B, N, D)
        if self.fast:
            keep = ~masked
            vis = (tokens + bb.pos_embed)[keep].reshape(x.shape[0], -1, tokens.shape[-1])
            return unpatchify(self.decoder(bb.forward_tokens(vis), keep), p)
        m = masked.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1 - m) + self.mask_token.to(tokens.dtype) * m
        return unpatchify(self.decoder(bb.forward_tokens(tokens + bb.pos_embed)), p)
