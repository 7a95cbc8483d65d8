"""Classifier (backbone + average-pooled linear head), weight transfer and timm export."""

from __future__ import annotations

from dataclasses import dataclass, field

import timm
import torch
from torch import nn

from vitmim.augment import MEAN, STD
from vitmim.config import ModelConfig
from vitmim.errors import ConfigError, UserError
from vitmim.models.vit import Backbone


class Classifier(nn.Module):
    """``backbone`` tokens -> mean over tokens -> linear ``head``. (B, 3, H, W) -> (B, classes).

    A :class:`~vitmim.models.vit.Backbone` itself: the head counts as the top layer.
    """

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # near-zero head: start at uniform logits
        nn.init.zeros_(self.head.bias)

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def depth(self) -> int:
        return self.backbone.depth

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)  # (B, N, D)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = tokens.mean(dim=1)  # (B, D)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.backbone.embed_dim, num_classes)

    def layer_id(self, name: str) -> int:
        if name.startswith("backbone."):
            return self.backbone.layer_id(name[len("backbone."):])
        return self.backbone.depth + 1

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}


@dataclass
class TransferReport:
    """What a weight transfer did, key by key."""

    copied: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # classifier keys the source had no value for
    dropped: list[str] = field(default_factory=list)  # source keys the classifier has no place for

    def summary(self) -> str:
        """One line; dropped keys grouped by their module (``decoder.* (19)``)."""
        groups: dict[str, int] = {}
        for k in self.dropped:
            prefix = k.split(".")[0]
            groups[prefix] = groups.get(prefix, 0) + 1
        dropped = ", ".join(f"{p}.* ({n})" if n > 1 or p not in self.dropped else p
                            for p, n in groups.items())
        return (f"transfer: {len(self.copied)} tensors copied; new: {', '.join(self.new) or '-'}; "
                f"dropped: {dropped or '-'}")


def transfer(source: dict[str, torch.Tensor], classifier: Classifier,
             origin: str = "checkpoint") -> TransferReport:
    """Copy every ``backbone.*`` tensor of a restorer (or classifier) into ``classifier``.

    Only the classification head may be new and only non-backbone keys (the restoration decoder,
    mask tokens, an old head) may be dropped; any other mismatch means the checkpoint belongs to
    another architecture or size and is refused.
    """
    own = classifier.state_dict()
    report = TransferReport()
    new_state = {}
    for key, value in own.items():
        if key in source and not key.startswith("head."):
            if source[key].shape != value.shape:
                raise UserError(f"{origin}: {key} has shape {tuple(source[key].shape)}, the model "
                                f"expects {tuple(value.shape)} (another model size?)")
            if value.is_floating_point() and not source[key].is_floating_point():
                # a cast would silently turn quantised or damaged weights into other numbers
                raise UserError(f"{origin}: {key} holds {source[key].dtype} values, not "
                                f"floating-point weights; pass the float weights of a run")
            if value.is_floating_point() and not source[key].isfinite().all():
                # refused here, not as a non-finite loss that would blame the learning rate
                raise UserError(f"{origin}: {key} holds NaN or infinite values; these weights "
                                f"cannot start a fine-tune (pass another --init)")
            new_state[key] = source[key].to(value.dtype)
            report.copied.append(key)
        elif key.startswith("head."):
            report.new.append(key)
        else:
            raise UserError(f"{origin}: no value for {key} (checkpoint of another architecture?)")
    for key in source:
        if key not in new_state:
            if key.startswith("backbone."):
                raise UserError(f"{origin}: {key} has no place in the model "
                                f"(checkpoint of another architecture?)")
            report.dropped.append(key)
    classifier.load_state_dict(new_state, strict=False)
    return report


def timm_kwargs(cfg: ModelConfig, num_classes: int) -> dict:
    """Arguments of timm's ``VisionTransformer`` with the same shape as our classifier."""
    kw = dict(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
              depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
              num_classes=num_classes, global_pool="avg", class_token=False, fc_norm=False)
    if cfg.rezero:
        kw["init_values"] = 1.0  # LayerScale; the scalar gate is broadcast into its gamma
    return kw


# (embed_dim, num_heads) of timm's named ViT sizes
TIMM_SIZES = {(192, 3): "tiny", (384, 6): "small", (768, 12): "base", (1024, 16): "large"}


def timm_architecture(cfg: ModelConfig) -> str:
    """A registered timm model name for a model folder's ``config.json``.

    Every such name builds timm's ``VisionTransformer`` and the folder's ``model_args`` set every
    shape, so the name only labels the family: the nearest size, with the model's patch size
    where timm registers one.
    """
    size = TIMM_SIZES.get((cfg.embed_dim, cfg.num_heads), "base")
    for name in (f"vit_{size}_patch{cfg.patch_size}_224", f"vit_base_patch{cfg.patch_size}_224"):
        if timm.is_model(name):
            return name
    return "vit_base_patch16_224"


def to_timm_state(classifier: Classifier, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Classifier weights renamed for timm's ``VisionTransformer(**timm_kwargs(...))``."""
    if cfg.arch != "vit" or cfg.conv_stem:
        raise ConfigError("export: timm export needs model.arch=vit and model.conv_stem=false")
    out = {}
    for key, value in classifier.state_dict().items():
        name = key.removeprefix("backbone.")
        if name.endswith((".gate1", ".gate2")):
            ls = "ls1" if name.endswith("gate1") else "ls2"
            name = name.rsplit(".", 1)[0] + f".{ls}.gamma"
            value = value.expand(cfg.embed_dim)
        out[name] = value.detach().clone().contiguous()
    return out


def timm_config(cfg: ModelConfig, kwargs: dict, classes: list[str], class_names: list[str]
                ) -> dict:
    """timm's ``config.json`` for a model folder (the layout ``timm.models.push_to_hf_hub``
    writes): the architecture, its ``model_args`` (``timm_kwargs``), the labels (none for an
    encoder) and the preprocessing. ``timm.create_model("local-dir:DIR", pretrained=True)``
    reads it."""
    size = cfg.img_size
    num_classes = kwargs["num_classes"]
    config = {
        "architecture": timm_architecture(cfg),
        "num_classes": num_classes,
        "num_features": cfg.embed_dim,
        "global_pool": kwargs["global_pool"],
        "model_args": kwargs,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "fixed_input_size": True,
            # vitmim trains and predicts on whole images at img_size: no crop margin, and other
            # sizes are scaled with bicubic resampling (vitmim.inference.load_images)
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(MEAN),
            "std": list(STD),
            "num_classes": num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }
    if num_classes:
        config["label_names"] = classes
        config["label_descriptions"] = dict(zip(classes, class_names))
    return config


def model_card(m: ModelConfig, num_classes: int, metrics: dict) -> str:
    """A short Hugging Face model card for a model folder: what it is, the run's validation
    metrics, how to load it."""
    what = (f"an image classifier over {num_classes} classes" if num_classes else
            "the backbone alone (pooled features, no head)")
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                        if k.startswith("val_") and isinstance(v, (int, float)))
    return f"""---
library_name: timm
tags: [image-classification, timm, vitmim]
---
# vitmim ViT ({m.embed_dim}-d, {m.depth} blocks, {m.patch_size} px patches, {m.img_size} px input)

Trained with vitmim (masked-pixel pre-training of vision transformers for small image data
sets); this is {what}. Validation metrics of the run: {metrics or 'none recorded'}.

```python
import timm
model = timm.create_model("hf-hub:USER/NAME", pretrained=True)  # or "local-dir:PATH"
cfg = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**cfg)
```
"""
