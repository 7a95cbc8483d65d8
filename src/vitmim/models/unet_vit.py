"""U-Net with a ViT bottleneck (UVCGAN v2 style): ``model.arch: unet-vit``.

A conv encoder halves the image once per entry of ``model.unet_channels`` (64 px -> 8x8 with the
default three), a ViT runs on the tokens of that small grid, and a conv decoder climbs back to
full resolution, joined to the encoder's feature maps by skip connections (``model.skips``).

* :class:`UNetViTEncoder` (conv encoder + ViT bottleneck) is the backbone: it has the interface of
  :class:`vitmim.models.vit.ViT` that the classifier and the engine use.
* :class:`UNetViTRestorer` keeps it as ``backbone`` and everything else as ``decoder``, so a weight
  transfer copies ``backbone.*`` and drops ``decoder.*``.

With ``model.rezero`` the conv blocks are residual with a learnable gate that starts at 0 (as the
transformer blocks are), so each starts as the identity; without it they are plain U-Net double
convolutions.
"""

from __future__ import annotations

import torch
from torch import nn

from vitmim.config import ModelConfig, PretrainConfig
from vitmim.masking import apply_fill
from vitmim.models.vit import Block, init_weights, layer_id, sincos_pos_embed


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)  # bias is redundant before a norm


class ConvBlock(nn.Module):
    """Two 3x3 conv-norm-GELU layers at constant width. (B, C, H, W) -> (B, C, H, W).

    With ``rezero`` the pair is a residual branch scaled by a scalar gate initialised at 0.
    """

    def __init__(self, ch: int, rezero: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(ch, ch),
            nn.BatchNorm2d(ch),
            nn.GELU(),
            conv3x3(ch, ch),
            nn.BatchNorm2d(ch),
            nn.GELU(),
        )
        self.rezero = rezero
        if rezero:
            self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gate * self.body(x) if self.rezero else self.body(x)


def down(c_in: int, c_out: int) -> nn.Sequential:
    """Stride-2 conv: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    return nn.Sequential(conv3x3(c_in, c_out, stride=2), nn.BatchNorm2d(c_out), nn.GELU())


def up(c_in: int, c_out: int) -> nn.Sequential:
    """Nearest 2x upsampling then a 3x3 conv: (B, c_in, H, W) -> (B, c_out, 2H, 2W)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        conv3x3(c_in, c_out),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


class UNetViTEncoder(nn.Module):
    """Conv encoder + ViT bottleneck; the backbone shared by the restorer and the classifier.

    Level ``i`` works at ``img_size / 2**i`` px with ``unet_channels[i]`` channels; its block's
    output is the skip feature map of that level; a stride-2 conv then leads to the next level
    (the last one to ``embed_dim`` channels on the token grid).
    """

    num_prefix_tokens = 0

    def __init__(self, cfg: ModelConfig, drop_path: float = 0.0):
        super().__init__()
        chans = list(cfg.unet_channels)
        self.embed_dim, self.depth = cfg.embed_dim, cfg.depth
        self.grid = cfg.img_size // 2 ** len(chans)
        self.num_tokens = self.grid**2
        self.stem = nn.Sequential(conv3x3(3, chans[0]), nn.BatchNorm2d(chans[0]), nn.GELU())
        self.levels = nn.ModuleList(ConvBlock(c, cfg.rezero) for c in chans)
        self.downs = nn.ModuleList(down(c, n) for c, n in zip(chans, chans[1:] + [cfg.embed_dim]))
        self.pos_embed = nn.Parameter(sincos_pos_embed(cfg.embed_dim, self.grid))
        rates = torch.linspace(0, drop_path, cfg.depth).tolist()  # drop-path rate rises with depth
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, r, cfg.rezero) for r in rates
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.apply(init_weights)

    def forward_skips(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 3, H, W) -> tokens (B, N, D) and the skip maps, finest first:
        [(B, unet_channels[i], H / 2**i, W / 2**i) for each level i]."""
        h, feats = self.stem(x), []
        for block, step_down in zip(self.levels, self.downs):
            h = block(h)
            feats.append(h)
            h = step_down(h)
        tokens = h.flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens), feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, D) normalised bottleneck tokens."""
        return self.forward_skips(x)[0]

    def layer_id(self, name: str) -> int:
        """Depth index for layer-wise lr decay: the conv encoder counts as the embedding (0)."""
        if name.startswith(("stem", "levels", "downs")):
            return 0
        return layer_id(name, self.depth)  # pos_embed, blocks.N and norm are named as in the ViT

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


class UNetDecoder(nn.Module):
    """Bottleneck tokens + skip maps -> pixels. Climbs one level per 2x upsampling; a level whose
    skip is switched off has no fusion module at all (``fuse`` holds only the used levels)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        chans = list(cfg.unet_channels)
        self.grid = cfg.img_size // 2 ** len(chans)
        used = {"all": range(len(chans)), "none": range(0), "no-finest": range(1, len(chans))}[
            cfg.skips
        ]
        ins = chans[1:] + [cfg.embed_dim]
        self.ups = nn.ModuleList(up(i, c) for i, c in zip(ins, chans))  # level i: ins[i] -> c_i
        # concatenated (upsampled, skip) -> c_i; 1x1 since the block after it mixes space
        self.fuse = nn.ModuleDict({str(i): nn.Conv2d(2 * chans[i], chans[i], 1) for i in used})
        self.blocks = nn.ModuleList(ConvBlock(c, cfg.rezero) for c in chans)
        self.pred = nn.Conv2d(chans[0], 3, 1)

    def forward(self, tokens: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """tokens: (B, N, D); feats: the encoder's skip maps, finest first -> (B, 3, H, W)."""
        b, n, d = tokens.shape
        h = tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid)  # (B, D, g, g)
        for i in reversed(range(len(self.ups))):
            h = self.ups[i](h)  # (B, c_i, H / 2**i, W / 2**i)
            if str(i) in self.fuse:
                h = self.fuse[str(i)](torch.cat([h, feats[i]], dim=1))
            h = self.blocks[i](h)
        return self.pred(h)


class UNetViTRestorer(nn.Module):
    """U-Net-ViT restorer, with the steps of :class:`vitmim.models.restorer.Restorer`.

    Masked pixels are filled with 0 (the data-set mean); every pixel is predicted, the loss picks
    the masked ones. ``pretrain.fast`` does not apply: convolutions need the whole image.
    """

    def __init__(self, cfg: ModelConfig, pcfg: PretrainConfig):
        super().__init__()
        self.backbone = UNetViTEncoder(cfg, drop_path=pcfg.drop_path)
        self.decoder = UNetDecoder(cfg)

    def no_weight_decay(self) -> set[str]:
        return {"backbone.pos_embed"}

    def forward_encoder(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, 3, H, W) normalised; mask: (B, 1, H, W), 1 = masked -> bottleneck tokens
        (B, N, D) and skip maps, finest first (:meth:`UNetViTEncoder.forward_skips`)."""
        return self.backbone.forward_skips(apply_fill(x, mask))

    def forward_decoder(self, tokens: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward_encoder`'s output -> (B, 3, H, W) predicted pixels."""
        return self.decoder(tokens, feats)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised -> (B, 3, H, W) prediction in the loss's target space."""
        return self.forward_decoder(*self.forward_encoder(x, mask))
