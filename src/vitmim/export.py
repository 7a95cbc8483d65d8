"""Export a run for the timm ecosystem.

Two formats:

- ``file``: one ``.safetensors`` file of timm ``VisionTransformer`` weights, its constructor
  arguments in a ``.json`` beside it (``VisionTransformer(**kwargs)`` loads it strictly).
- ``timm``: a model folder as timm and the Hugging Face Hub lay them out, ``model.safetensors`` +
  ``config.json`` (architecture, ``model_args``, label names, ``pretrained_cfg`` with the input
  size and normalisation). ``timm.create_model("local-dir:DIR", pretrained=True)`` loads it, and
  ``huggingface-cli upload USER/NAME DIR`` publishes it for ``hf-hub:USER/NAME``.

``encoder=True`` exports the backbone alone (timm's ``num_classes=0``: the model returns pooled
features), from a pre-training or a fine-tuned run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vitmim import checkpoint
from vitmim.augment import MEAN, STD
from vitmim.config import Config, load_config
from vitmim.errors import ConfigError
from vitmim.models import build_classifier, transfer
from vitmim.models.classifier import timm_architecture, timm_kwargs, to_timm_state
from vitmim.predict import load_classifier
from vitmim.stages import read_model

FORMATS = ("file", "timm")


def timm_weights(run: str | Path, encoder: bool = False
                 ) -> tuple[dict[str, torch.Tensor], dict, Config, dict]:
    """(timm state dict, timm constructor kwargs, the run's config, its JSON description).

    A classifier is exported whole; with ``encoder`` the head is left out and any run that holds
    a backbone (restorer or classifier) will do, checked as strictly as fine-tuning's transfer.
    """
    if not encoder:
        model, cfg, meta = load_classifier(run)
        return (to_timm_state(model, cfg.model), timm_kwargs(cfg.model, len(meta["classes"])),
                cfg, meta)
    tensors, meta = read_model(run)
    cfg = load_config(base=meta["config"])
    model = build_classifier(cfg.model, 1)
    transfer(tensors, model, str(run))
    state = {k: v for k, v in to_timm_state(model, cfg.model).items()
             if not k.startswith("head.")}
    return state, timm_kwargs(cfg.model, 0), cfg, meta


def export(run: str | Path, out: str | Path, fmt: str = "file", encoder: bool = False) -> Path:
    """Write ``run``'s model for timm as ``fmt`` (see the module docstring); returns ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: unknown (known: {', '.join(FORMATS)})")
    out = Path(out)
    state, kwargs, cfg, meta = timm_weights(run, encoder)
    if fmt == "file":
        checkpoint.save_weights(out, state, meta={
            "timm_class": "timm.models.vision_transformer.VisionTransformer", "kwargs": kwargs,
            "classes": [] if encoder else meta["classes"],
            "class_names": [] if encoder else meta["class_names"],
            "mean": list(MEAN), "std": list(STD)})
        return out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; --format timm writes a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    checkpoint.save_weights(out / "model.safetensors", state)
    checkpoint.write_text(out / "config.json",
                          json.dumps(timm_config(cfg, kwargs, meta, encoder), indent=2) + "\n")
    checkpoint.write_text(out / "README.md", model_card(cfg, meta, encoder))
    return out


def timm_config(cfg: Config, kwargs: dict, meta: dict, encoder: bool) -> dict:
    """timm's ``config.json`` for a model folder (the layout ``timm.models.push_to_hf_hub``
    writes): the architecture, its ``model_args``, the labels and the preprocessing."""
    size = cfg.model.img_size
    num_classes = kwargs["num_classes"]
    config = {
        "architecture": timm_architecture(cfg.model),
        "num_classes": num_classes,
        "num_features": cfg.model.embed_dim,
        "global_pool": kwargs["global_pool"],
        "model_args": kwargs,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "fixed_input_size": True,
            # vitmim trains and predicts on whole images at img_size: no crop margin, and other
            # sizes are scaled with bicubic resampling (vitmim.data.load_images)
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
    if not encoder:
        config["label_names"] = meta["classes"]
        config["label_descriptions"] = dict(zip(meta["classes"], meta["class_names"]))
    return config


def model_card(cfg: Config, meta: dict, encoder: bool) -> str:
    """A short Hugging Face model card: what the model is, its metrics, how to load it."""
    m = cfg.model
    what = ("the pre-trained backbone alone (pooled features, no head)" if encoder else
            f"an image classifier over {len(meta['classes'])} classes")
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in (meta.get("metrics") or {}).items()
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
