"""ViT backbone: patch embedding (or conv stem), position embedding, transformer blocks, norm.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``pos_embed``,
``blocks.N.{norm1,attn,norm2,mlp}``, ``norm``) so a fine-tuned classifier exports to timm with a
plain rename. Attention and MLP are timm's layers (fused scaled-dot-product attention).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from timm.layers import Attention as TimmAttention
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from vitmim.config import ModelConfig


class Backbone(Protocol):
    """The encoder contract that the classifier, the weight transfer and the engine rely on.

    :class:`ViT` and :class:`~vitmim.models.unet_vit.UNetViTEncoder` implement it, and so does
    :class:`~vitmim.models.classifier.Classifier` (through its backbone), so layer-wise lr decay
    treats a classifier like the encoder it wraps.
    """

    embed_dim: int  # D, the token width
    depth: int  # transformer blocks: layer ids run from 0 (embedding) to depth + 1 (top)
    num_prefix_tokens: int  # P, tokens before the patch tokens (a class token, registers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, P + N, D) normalised tokens."""

    def layer_id(self, name: str) -> int:
        """Depth index of parameter ``name`` for layer-wise lr decay, in [0, depth + 1]."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names (besides biases and norms) kept free of weight decay."""


class TokenBackbone(Backbone, Protocol):
    """A plain token transformer, cut in the halves that token masking needs: the restorer
    replaces or drops masked patch tokens between them (and the classifier adds its own class
    token). :class:`ViT` and :class:`~vitmim.models.timm_vit.TimmViT` implement it."""

    patch_size: int  # px
    grid: int  # patches per side: N = grid * grid

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, D) patch tokens, no position yet."""

    def add_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) patch tokens -> (B, P + N, D): positions added, prefix tokens in front."""

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n, D) tokens from :meth:`add_positions` (or a subset) -> (B, n, D) after the
        blocks and the final norm."""


def layer_id(name: str, depth: int) -> int:
    """Depth index of a ViT parameter for layer-wise lr decay: 0 = embedding (``patch_embed``,
    ``pos_embed``, and in timm's ViT the prefix tokens and the norm before the blocks),
    i + 1 = ``blocks.i``, depth + 1 = the rest (the final norm)."""
    if name.startswith(("patch_embed", "pos_embed", "cls_token", "reg_token", "norm_pre")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """2-D sine-cosine position embedding (MAE), (1, grid*grid, dim); rows then columns."""
    if dim % 4:
        raise ValueError(f"sincos embedding needs dim % 4 == 0, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for pos in (ys.flatten(), xs.flatten()):
        angles = pos[:, None] * omega[None]  # (N, dim/4)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float().unsqueeze(0)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens. (B, 3, H, W) -> (B, N, D)."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class ConvStem(nn.Module):
    """Early Convolutions (Xiao et al. 2021): stride-2 3x3 convs down to the patch grid, then a
    1x1 projection. (B, 3, H, W) -> (B, N, D)."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        n_down = int(math.log2(patch_size))
        if 2**n_down != patch_size:
            raise ValueError(f"conv_stem needs a power-of-two patch_size, got {patch_size}")
        layers, ch = [], 3
        for i in range(n_down):
            out = embed_dim // 2 ** (n_down - i)
            layers += [nn.Conv2d(ch, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
            ch = out
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(ch, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # (B, N, D)


class Block(nn.Module):
    """Pre-norm transformer block. With ``rezero`` each residual branch is scaled by a learnable
    scalar that starts at 0 (ReZero), so every block starts as the identity."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        rezero: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TimmAttention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.rezero = rezero
        if rezero:
            self.gate1 = nn.Parameter(torch.zeros(1))
            self.gate2 = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        a = self.attn(self.norm1(x))
        x = x + self.drop_path(self.gate1 * a if self.rezero else a)
        m = self.mlp(self.norm2(x))
        return x + self.drop_path(self.gate2 * m if self.rezero else m)


class ViT(nn.Module):
    """The encoder shared by the restorer and the classifier.

    ``forward_features`` maps images to normalised tokens; the restorer also uses the two halves
    (``embed`` and ``forward_tokens``) to drop or replace masked tokens in between.
    """

    num_prefix_tokens = 0  # a class token, where there is one, is the classifier's

    def __init__(self, cfg: ModelConfig, drop_path: float = 0.0):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.grid = cfg.img_size // cfg.patch_size
        self.num_tokens = self.grid**2
        self.embed_dim = cfg.embed_dim
        self.depth = cfg.depth
        stem = ConvStem if cfg.conv_stem else PatchEmbed
        self.patch_embed = stem(cfg.patch_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(sincos_pos_embed(cfg.embed_dim, self.grid))
        if cfg.pos_embed == "learned":  # timm's start: small random values
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        # stochastic depth grows linearly with depth
        rates = torch.linspace(0, drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, r, cfg.rezero) for r in rates
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.apply(init_weights)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, D) patch tokens (no position yet)."""
        return self.patch_embed(x)

    def add_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D) with the position table added."""
        return tokens + self.pos_embed

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n, D) tokens with position already added -> (B, n, D) after blocks and norm."""
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, D)."""
        return self.forward_tokens(self.add_positions(self.embed(x)))

    def layer_id(self, name: str) -> int:
        """Depth index of a parameter for layer-wise lr decay: 0 = embedding, depth+1 = top."""
        return layer_id(name, self.depth)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def init_weights(m: nn.Module) -> None:
    """timm / MAE style: truncated normal linears, unit LayerNorm, xavier patch projection."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, PatchEmbed):
        nn.init.xavier_uniform_(m.proj.weight.view(m.proj.weight.shape[0], -1))
