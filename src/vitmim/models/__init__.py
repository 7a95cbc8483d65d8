"""Model builders: one place that maps ``model.arch`` to the modules of each stage."""

from __future__ import annotations

from torch import nn

from vitmim.config import ModelConfig, PretrainConfig
from vitmim.models.classifier import Classifier, TransferReport, transfer
from vitmim.models.restorer import Restorer
from vitmim.models.timm_vit import TimmViT
from vitmim.models.unet_vit import UNetViTEncoder, UNetViTRestorer
from vitmim.models.vit import Backbone, TokenBackbone, ViT

__all__ = [
    "Backbone",
    "Classifier",
    "Restorer",
    "TimmViT",
    "TokenBackbone",
    "TransferReport",
    "ViT",
    "build_backbone",
    "build_classifier",
    "build_restorer",
    "build_token_backbone",
    "transfer",
]


def build_backbone(cfg: ModelConfig, drop_path: float = 0.0) -> Backbone:
    """The encoder that both stages share; ``drop_path``: stochastic depth of the last block."""
    if cfg.arch == "unet-vit":
        return UNetViTEncoder(cfg, drop_path=drop_path)
    return build_token_backbone(cfg, drop_path)


def build_token_backbone(cfg: ModelConfig, drop_path: float = 0.0) -> TokenBackbone:
    """vitmim's ViT or timm's (``model.arch: timm``): the encoders whose tokens the restorer
    masks."""
    if cfg.arch == "timm":
        return TimmViT(cfg, drop_path=drop_path)
    return ViT(cfg, drop_path=drop_path)


def build_restorer(cfg: ModelConfig, pcfg: PretrainConfig) -> nn.Module:
    if cfg.arch == "unet-vit":
        return UNetViTRestorer(cfg, pcfg)
    return Restorer(build_token_backbone(cfg, pcfg.drop_path), cfg, pcfg)


def build_classifier(cfg: ModelConfig, num_classes: int, drop_path: float = 0.0) -> Classifier:
    return Classifier(build_backbone(cfg, drop_path), num_classes, cfg.global_pool)
