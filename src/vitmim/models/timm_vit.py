"""A timm ``VisionTransformer`` as the encoder: ``model.arch: timm``.

``timm.create_model(model.timm_name, pretrained=False, **timm_kwargs(model, 0))`` builds it:
the name picks timm's design (qkv bias, LayerScale, register tokens, norms), vitmim's model keys
set its size (image and patch size, width, depth, heads, MLP ratio) and pooling, as the name
picks the family of vitmim's own exported ViT. :class:`TimmViT` holds the timm model as ``vit``
and gives it the interface of vitmim's ViT (:class:`~vitmim.models.vit.TokenBackbone`), so the
restorer (fast path included), the classifier, the weight transfer and layer-wise lr decay treat
it as their own, and the export's ``config.json`` rebuilds it with ``timm.create_model``.
Weights are never downloaded: the method starts from random weights.

A class token (``model.global_pool: token``) is timm's own, with its position: it passes through
the encoder in pre-training too (and is dropped before the decoder), so a fine-tune starts from
a trained one. With ``avg`` the model is built without one (``class_token=False``).

Example::

    cfg = load_config(overrides=["model.arch=timm", "model.timm_name=vit_small_patch16_224"])
    restorer = build_restorer(cfg.model, cfg.pretrain)
    restorer.backbone.vit  # the timm VisionTransformer, no head
"""

from __future__ import annotations

import timm
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitmim.config import ModelConfig
from vitmim.errors import ConfigError
from vitmim.models.vit import layer_id, sincos_pos_embed


def timm_kwargs(cfg: ModelConfig, num_classes: int) -> dict:
    """Arguments of timm's ``VisionTransformer`` with the shape of vitmim's classifier: for
    vitmim's ViT all it takes (``VisionTransformer(**kwargs)`` builds it), for a timm encoder
    those on top of what ``model.timm_name`` registers. The final norm stays on the tokens
    before pooling (``fc_norm=False``), where the restorer's decoder reads them."""
    kw = dict(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        num_classes=num_classes,
        global_pool=cfg.global_pool,
        class_token=cfg.global_pool == "token",
        fc_norm=False,
    )
    if cfg.arch == "timm":
        kw["dynamic_img_size"] = False  # tokens as (B, N, D) at img_size, never another size
        return kw
    if cfg.global_pool == "token":
        kw["no_embed_class"] = True  # the class token has no position, as in Classifier
    if cfg.rezero:
        kw["init_values"] = 1.0  # LayerScale; the scalar gate is broadcast into its gamma
    return kw


def create_timm_vit(cfg: ModelConfig, drop_path: float = 0.0) -> VisionTransformer:
    """``timm.create_model(cfg.timm_name)`` at vitmim's size, without a head or downloaded
    weights, its patch positions started as ``model.pos_embed`` says; ``drop_path``: the
    stochastic depth rate of the last block. The name is one of timm's VisionTransformer
    models (checked with the config: :func:`vitmim.config.timm_vit_names`)."""
    vit = timm.create_model(
        cfg.timm_name, pretrained=False, drop_path_rate=drop_path, **timm_kwargs(cfg, 0)
    )
    if type(vit) is not VisionTransformer or type(vit.patch_embed) is not PatchEmbed:
        raise ConfigError(
            f"config key model.timm_name: {cfg.timm_name} builds a {type(vit).__name__} with "
            f"a {type(vit.patch_embed).__name__}; expected a plain VisionTransformer with "
            f"patch tokens (e.g. vit_tiny_patch16_224)"
        )
    if vit.pos_embed is None:
        raise ConfigError(
            f"config key model.timm_name: {cfg.timm_name} has no position table; expected a "
            f"ViT with learned positions (e.g. vit_tiny_patch16_224)"
        )
    if cfg.pos_embed == "sincos":  # as vitmim's ViT starts; prefix tokens' positions keep timm's
        grid = cfg.img_size // cfg.patch_size
        with torch.no_grad():
            vit.pos_embed[:, -(grid**2) :] = sincos_pos_embed(cfg.embed_dim, grid)
    return vit


class TimmViT(nn.Module):
    """timm's ``VisionTransformer`` (``vit``, no head) as a
    :class:`~vitmim.models.vit.TokenBackbone`: its weights are ``vit.*``, named as in timm."""

    def __init__(self, cfg: ModelConfig, drop_path: float = 0.0):
        super().__init__()
        self.vit = create_timm_vit(cfg, drop_path)
        self.embed_dim = cfg.embed_dim
        self.depth = cfg.depth
        self.patch_size = cfg.patch_size
        self.grid = cfg.img_size // cfg.patch_size
        self.num_prefix_tokens: int = self.vit.num_prefix_tokens

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, D) patch tokens (no position yet)."""
        return self.vit.patch_embed(x)

    def add_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, P + N, D). timm's own step (its one private method used here): class
        and register tokens and where their positions go are then timm's, so the exported model
        computes what was trained; tests/models/test_timm_vit.py checks it against timm."""
        return self.vit._pos_embed(tokens)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n, D) positioned tokens -> (B, n, D) after timm's blocks and final norm."""
        return self.vit.norm(self.vit.blocks(self.vit.norm_pre(tokens)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, P + N, D), timm's ``forward_features``."""
        return self.forward_tokens(self.add_positions(self.embed(x)))

    def layer_id(self, name: str) -> int:
        """Depth index for layer-wise lr decay, as in vitmim's ViT (prefix tokens: 0)."""
        return layer_id(name.removeprefix("vit."), self.depth)

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{n}" for n in self.vit.no_weight_decay()}
