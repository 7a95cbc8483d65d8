"""Classifier (backbone + pooled linear head), weight transfer and timm export."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

import timm
import torch
from torch import nn

from vitmim.augment import MEAN, STD
from vitmim.config import TOKEN_ARCHS, ModelConfig
from vitmim.errors import CheckpointError, ConfigError
from vitmim.models.vit import Backbone, TokenBackbone


class Classifier(nn.Module):
    """``backbone`` tokens -> mean over patch tokens (or a class token) -> linear ``head``.
    (B, 3, H, W) -> (B, classes).

    A :class:`~vitmim.models.vit.Backbone` itself: the head counts as the top layer.
    ``global_pool="token"`` pools the backbone's own class token where it has one (a timm
    model's); else a learned token of the classifier's joins the patch tokens (without a
    position, as timm's ``no_embed_class``): that needs a
    :class:`~vitmim.models.vit.TokenBackbone` (the ViT).
    """

    def __init__(self, backbone: Backbone, num_classes: int, global_pool: str = "avg"):
        super().__init__()
        self.backbone = backbone
        self.global_pool = global_pool
        own_token = global_pool == "token" and not backbone.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim)) if own_token else None
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)  # timm's start
        # tokens before the patch tokens in forward_features' output, left out of the mean
        self.num_prefix_tokens = backbone.num_prefix_tokens + int(own_token)
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
        if self.cls_token is None:
            return self.backbone.forward_features(x)  # (B, N, D)
        bb = typing.cast(TokenBackbone, self.backbone)  # a class token needs the two halves
        tokens = bb.add_positions(bb.embed(x))  # (B, N, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return bb.forward_tokens(torch.cat([cls, tokens], dim=1))  # (B, 1 + N, D)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, P + N, D) -> (B, classes), or the pooled (B, D) with ``pre_logits``; timm's
        ``forward_head`` without ``fc_norm``."""
        if self.global_pool == "token":
            pooled = tokens[:, 0]  # (B, D)
        else:
            pooled = tokens[:, self.num_prefix_tokens :].mean(dim=1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.backbone.embed_dim, num_classes)

    def layer_id(self, name: str) -> int:
        if name.startswith("backbone."):
            return self.backbone.layer_id(name[len("backbone.") :])
        return 0 if name == "cls_token" else self.backbone.depth + 1

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()} | (
            {"cls_token"} if self.cls_token is not None else set()
        )


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
        dropped = ", ".join(
            f"{p}.* ({n})" if n > 1 or p not in self.dropped else p for p, n in groups.items()
        )
        return (
            f"transfer: {len(self.copied)} tensors copied; new: {', '.join(self.new) or '-'}; "
            f"dropped: {dropped or '-'}"
        )


def transfer(
    source: dict[str, torch.Tensor], classifier: Classifier, origin: str = "checkpoint"
) -> TransferReport:
    """Copy every ``backbone.*`` tensor of a restorer (or classifier) into ``classifier``.

    Only the classification head (and a class token) may be new and only non-backbone keys (the
    restoration decoder, mask tokens, an old head) may be dropped; any other mismatch means the
    checkpoint belongs to another architecture or size and is refused.
    """
    own = classifier.state_dict()
    report = TransferReport()
    new_state = {}
    for key, value in own.items():
        if key in source and not key.startswith("head."):
            if source[key].shape != value.shape:
                raise CheckpointError(
                    f"{origin}: {key} has shape {tuple(source[key].shape)}, "
                    f"the model expects {tuple(value.shape)} (another model "
                    f"size?)"
                )
            if value.is_floating_point() and not source[key].is_floating_point():
                # a cast would silently turn quantised or damaged weights into other numbers
                raise CheckpointError(
                    f"{origin}: {key} holds {source[key].dtype} values, not "
                    f"floating-point weights; pass the float weights of a run"
                )
            if value.is_floating_point() and not source[key].isfinite().all():
                # refused here, not as a non-finite loss that would blame the learning rate
                raise CheckpointError(
                    f"{origin}: {key} holds NaN or infinite values; these "
                    f"weights cannot start a fine-tune (pass another --init)"
                )
            new_state[key] = source[key].to(value.dtype)
            report.copied.append(key)
        elif key.startswith("head.") or key == "cls_token":  # a restorer has neither
            report.new.append(key)
        else:
            raise CheckpointError(
                f"{origin}: no value for {key} (checkpoint of another architecture?)"
            )
    for key in source:
        if key not in new_state:
            if key.startswith("backbone."):
                raise CheckpointError(
                    f"{origin}: {key} has no place in the model "
                    f"(checkpoint of another architecture?)"
                )
            report.dropped.append(key)
    classifier.load_state_dict(new_state, strict=False)
    return report


# timm's named ViT sizes by width, smallest first
TIMM_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large"}


def timm_architecture(cfg: ModelConfig) -> str:
    """The registered timm name for a model folder's ``config.json``: a timm encoder's own
    (``model.timm_name``), else the name nearest to vitmim's ViT.

    timm builds any of them as its ``VisionTransformer`` and the folder's ``model_args`` set
    every shape, so for vitmim's ViT the name picks the family only: the same patch size where
    timm registers one, then the size nearest in width (:func:`model_name` gives the model's own
    name)."""

    if cfg.arch == "timm":
        return cfg.timm_name  # the model it was built as

    def distance(name: str) -> tuple:
        size = name.split("_")[1]
        width = next(w for w, s in TIMM_SIZES.items() if s == size)
        return (f"patch{cfg.patch_size}_" not in name, abs(width - cfg.embed_dim))

    names = [f"vit_{size}_patch{p}_224" for size in TIMM_SIZES.values() for p in (8, 16)]
    return min((n for n in names if timm.is_model(n)), key=distance)


def model_name(cfg: ModelConfig) -> str:
    """The model's own name: ``vitmim-vit-d192-l6-h3-p8-64px`` (width, blocks, heads, patch px,
    input px); a timm encoder's has its timm name for ``vit``."""
    arch = cfg.timm_name if cfg.arch == "timm" else "vit"
    return (
        f"vitmim-{arch}-d{cfg.embed_dim}-l{cfg.depth}-h{cfg.num_heads}-p{cfg.patch_size}-"
        f"{cfg.img_size}px"
    )


# data.resize -> timm's eval crop_mode that brings an image to size the same way: fit squashes
# the whole image, crop scales the shorter side and cuts the centre, pad letterboxes (timm pads
# with the mean colour, vitmim with white: the card says so)
TIMM_CROP_MODES = {"fit": "squash", "crop": "center", "pad": "border"}


def to_timm_state(classifier: Classifier, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Classifier weights renamed for timm's ``VisionTransformer`` built with
    :func:`~vitmim.models.timm_vit.timm_kwargs`: a timm encoder's are timm's already."""
    if cfg.arch not in TOKEN_ARCHS or cfg.conv_stem:
        raise ConfigError(
            "export: timm export needs model.arch=vit (or timm) and model.conv_stem=false"
        )
    out = {}
    for key, value in classifier.state_dict().items():
        name = key.removeprefix("backbone.vit." if cfg.arch == "timm" else "backbone.")
        if name.endswith((".gate1", ".gate2")):
            ls = "ls1" if name.endswith("gate1") else "ls2"
            name = name.rsplit(".", 1)[0] + f".{ls}.gamma"
            value = value.expand(cfg.embed_dim)
        out[name] = value.detach().clone().contiguous()
    return out


def timm_config(
    cfg: ModelConfig, kwargs: dict, classes: list[str], class_names: list[str], resize: str = "crop"
) -> dict:
    """timm's ``config.json`` for a model folder (the layout ``timm.models.push_to_hf_hub``
    writes): the architecture, its ``model_args`` (``timm_kwargs``), the labels (none for an
    encoder) and the preprocessing, ``resize`` being how the run brought images to size
    (:data:`TIMM_CROP_MODES`). ``timm.create_model("local-dir:DIR", pretrained=True)`` reads
    it."""
    size = cfg.img_size
    num_classes = kwargs["num_classes"]
    config = {
        "architecture": timm_architecture(cfg),
        "model_name": model_name(cfg),
        "num_classes": num_classes,
        "num_features": cfg.embed_dim,
        "global_pool": kwargs["global_pool"],
        "model_args": kwargs,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "fixed_input_size": True,
            # vitmim trains and predicts on whole images at img_size: no crop margin, and other
            # sizes are scaled with bicubic resampling (vitmim.data.images)
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": TIMM_CROP_MODES[resize],
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


def model_card(m: ModelConfig, num_classes: int, metrics: dict, data: dict) -> str:
    """A Hugging Face model card for a model folder: what the model is, the data it was trained
    on, the preprocessing that reproduces its inputs, the run's validation metrics, the licence
    question, how to load it. ``data``: ``path``, ``images`` (training count), ``resize``."""
    what = (
        f"an image classifier over {num_classes} classes"
        if num_classes
        else "the backbone alone (pooled features, no head)"
    )
    scores = ", ".join(
        f"{k} {v:.4g}"
        for k, v in metrics.items()
        if k.startswith("val_") and isinstance(v, (int, float))
    )
    resize = data.get("resize", "crop")
    how = {
        "fit": "scaled to {s}x{s} whole (aspect not kept)",
        "crop": "shorter side scaled to {s}, centre {s}x{s} cut out",
        "pad": "scaled to fit inside {s}x{s}, aspect kept, bars in white",
    }[resize]
    built = (
        f"timm builds it as `{m.timm_name}` with `config.json`'s `model_args` (the size)."
        if m.arch == "timm"
        else "timm builds it as `VisionTransformer` from `config.json`'s `model_args` (its "
        "`architecture` names the nearest registered family only)."
    )
    pad_note = (
        "\ntimm's `border` mode pads with the mean colour, not white: for the inputs "
        "vitmim saw, letterbox first with\n`img = ImageOps.pad(img, ({s}, {s}), "
        'Image.Resampling.BICUBIC, color="white")`.\n'
        if resize == "pad"
        else ""
    )
    return f"""---
library_name: timm
license: other
tags: [image-classification, timm, vitmim]
---
# {model_name(m)}

A ViT ({m.embed_dim}-d, {m.depth} blocks, {m.num_heads} heads, {m.patch_size} px patches,
{m.img_size} px input) trained with vitmim (masked-pixel pre-training of vision transformers for
small image data sets); this is {what}. {built}

- Data: `{data.get("path")}`, {data.get("images", "?")} training images. Validation metrics of
  the run: {scores or "none recorded"}.
- Preprocessing: RGB, transparency composited on white; {how.format(s=m.img_size)}
  (bicubic); mean {list(MEAN)}, std {list(STD)}. `config.json` gives timm these (crop_mode
  `{TIMM_CROP_MODES[resize]}`, crop_pct 1.0).{pad_note.format(s=m.img_size)}
- Licence: `other`: the weights follow the terms of their training data (Tiny ImageNet: the
  ImageNet terms, non-commercial research); set the licence before you publish.

```python
import timm
from PIL import Image
model = timm.create_model("hf-hub:USER/NAME", pretrained=True).eval()  # or "local-dir:PATH"
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
img = Image.open("cat.png")
if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:  # on white, as in training
    img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
probs = model(transform(img.convert("RGB"))[None]).softmax(-1)
```
"""
