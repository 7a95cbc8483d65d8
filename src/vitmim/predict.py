"""Using finished runs: evaluate, predict, reconstruct, export to timm."""

from __future__ import annotations

from pathlib import Path

import torch

from vitmim import checkpoint
from vitmim.augment import MEAN, STD, normalize
from vitmim.config import Config, load_config
from vitmim.data import load_images, load_splits
from vitmim.errors import UserError
from vitmim.masking import random_mask
from vitmim.models import build_classifier, build_restorer
from vitmim.models.classifier import timm_kwargs, to_timm_state
from vitmim.runs import check_output, read_model
from vitmim.stages import classification_metrics, restored_image
from vitmim.stages import save_reconstruction_grid as save_grid


def load_classifier(run: str | Path) -> tuple[torch.nn.Module, Config, dict]:
    """A fine-tuned classifier in eval mode, its config and its JSON description."""
    tensors, meta, _ = read_model(run)
    if meta.get("kind") != "classifier":
        raise UserError(f"{run}: holds a {meta.get('kind')}, not a fine-tuned classifier")
    cfg = load_config(base=meta["config"])
    model = build_classifier(cfg.model, len(meta["classes"]))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise UserError(f"{run}: weights do not fit the model it describes ({e})") from None
    return model.eval(), cfg, meta


def load_restorer(run: str | Path, overrides: list[str] = ()) -> tuple[torch.nn.Module, Config]:
    tensors, meta, _ = read_model(run)
    if meta.get("kind") != "restorer":
        raise UserError(f"{run}: holds a {meta.get('kind')}, not a pre-trained restorer")
    cfg = load_config(base=meta["config"], overrides=overrides)
    model = build_restorer(cfg.model, cfg.pretrain)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or [k for k in missing if not k.startswith("mask_token")]:
        raise UserError(f"{run}: the overrides change the model; keep pretrain.mask_patch a "
                        f"multiple of model.patch_size as it was trained")
    return model.eval(), cfg


def evaluate_run(run: str | Path, data: str | None = None) -> dict[str, float]:
    model, cfg, meta = load_classifier(run)
    if data:
        cfg.data.path = data
    cfg.data.classes = meta["classes"]  # the classes it was trained on, in its label order
    _, val = load_splits(cfg.data, cfg.model.img_size)
    if val is None:
        raise UserError(f"{cfg.data.path}: has no labelled validation split")
    return classification_metrics(model, val, torch.device("cpu"))


@torch.no_grad()
def predict(run: str | Path, images: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image."""
    model, cfg, meta = load_classifier(run)
    x = normalize(load_images(images, cfg.model.img_size))
    probs = model(x).softmax(-1)
    top = probs.topk(min(topk, probs.shape[1]), dim=1)
    names = meta["class_names"]
    return [[(names[j], p) for p, j in zip(ps.tolist(), js.tolist())]
            for ps, js in zip(top.values, top.indices)]


@torch.no_grad()
def reconstruct(run: str | Path, images: list[str], out: Path, overrides: list[str] = (),
                seed: int = 0) -> Path:
    """PNG grid of original | masked | restored for the given images."""
    check_output(out)
    model, cfg = load_restorer(run, overrides)
    x = normalize(load_images(images, cfg.model.img_size))
    g = torch.Generator().manual_seed(seed)
    p = cfg.pretrain
    mask = random_mask(len(x), cfg.model.img_size, p.mask_patch, p.mask_ratio, g)
    save_grid(out, x, mask, restored_image(model, x, mask, cfg))
    return out


def export(run: str | Path, out: Path) -> Path:
    """Weights + constructor arguments for ``timm.models.VisionTransformer`` (strict load):
    ``out`` (.safetensors) and the JSON beside it."""
    check_output(out)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: export writes safetensors weights and a .json beside them; "
                        f"name a .safetensors file")
    check_output(out.with_suffix(".json"))
    model, cfg, meta = load_classifier(run)
    kwargs = timm_kwargs(cfg.model, len(meta["classes"]))
    checkpoint.save_weights(out, to_timm_state(model, cfg.model), meta={
        "timm_class": "timm.models.vision_transformer.VisionTransformer", "kwargs": kwargs,
        "classes": meta["classes"], "class_names": meta["class_names"],
        "mean": list(MEAN), "std": list(STD)})
    return out
