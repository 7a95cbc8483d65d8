"""Using finished runs: evaluate, predict, reconstruct, export to timm."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from vitmim import checkpoint, outputs
from vitmim.augment import MEAN, STD, normalize
from vitmim.config import Config, flatten, load_config, to_dict
from vitmim.data import load_splits
from vitmim.data.images import decode_image, prepare_image
from vitmim.errors import CheckpointError, ConfigError, DataError, fold_lines
from vitmim.masking import random_mask
from vitmim.models import build_classifier, build_restorer, transfer
from vitmim.models.classifier import (
    Classifier,
    model_card,
    timm_architecture,
    timm_config,
    to_timm_state,
)
from vitmim.models.restorer import restored_image
from vitmim.models.timm_vit import timm_kwargs
from vitmim.probes import pick_device
from vitmim.runs import json_object, read_model
from vitmim.tasks import classification_metrics
from vitmim.tasks import save_reconstruction_grid as save_grid

# ---------------------------------------------------------------------------------------------
# single image files


def single_image_resize(cfg: Config) -> str:
    """How files of another size reach the model: as its training images did, where the run
    chose a way (``data.resize``); else (``auto``, ``error``) shorter side scaled, centre crop."""
    return cfg.data.resize if cfg.data.resize in ("fit", "pad", "crop") else "crop"


class Preprocess:
    """A run's input transform: an image file or PIL image -> (3, S, S) float tensor,
    normalised, exactly what ``vitmim predict`` feeds the model (upright, transparency on
    white, brought to S x S as the run's training images were)."""

    def __init__(self, img_size: int, resize: str):
        self.img_size, self.resize = img_size, resize

    def __call__(self, image: str | Path | Image.Image) -> torch.Tensor:
        if isinstance(image, Image.Image):
            arr = prepare_image(image, self.img_size, self.resize)[0]
            return normalize(torch.from_numpy(arr.copy())[None])[0]
        return normalize(load_images([image], self.img_size, self.resize))[0]

    def __repr__(self) -> str:
        return f"Preprocess(img_size={self.img_size}, resize={self.resize!r})"


def load_images(
    paths: Sequence[str | Path], img_size: int = 64, resize: str = "crop"
) -> torch.Tensor:
    """(N, 3, img_size, img_size) uint8 RGB from image files (for predict / reconstruct).

    Decoded like the cache (every mode to RGB, EXIF orientation); an image of another size is
    brought to img_size by ``resize`` (default: shorter side scaled, centre crop).
    """
    out = torch.empty((len(paths), 3, img_size, img_size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        p = Path(p).expanduser()
        if not p.is_file():
            raise DataError(f"{p}: image not found" + (" (a folder)" if p.is_dir() else ""))
        try:
            data = p.read_bytes()
        except OSError as e:
            raise DataError(f"{p}: cannot read ({fold_lines(e.strerror or e)})") from None
        out[i] = torch.from_numpy(decode_image(data, img_size, resize, str(p))[0].copy())
    return out


def load(run: str | Path, device: str = "auto") -> tuple[torch.nn.Module, Preprocess]:
    """(model in eval mode on ``device``, its input transform) of a finished run: a classifier
    (``model.class_names`` in logit order) or, for a pre-training run, its restorer."""
    kind = read_model(run)[1].get("kind")
    if kind == "restorer":
        model, cfg = load_restorer(run)
    else:
        model, cfg, meta = load_classifier(run)
        model.classes, model.class_names = meta["classes"], meta["class_names"]
    preprocess = Preprocess(cfg.model.img_size, single_image_resize(cfg))
    return model.to(pick_device(device)), preprocess


def load_classifier(run: str | Path) -> tuple[Classifier, Config, dict]:
    """A fine-tuned classifier in eval mode, its config and its JSON description."""
    tensors, meta, _ = read_model(run)
    if meta.get("kind") != "classifier":
        raise CheckpointError(f"{run}: holds a {meta.get('kind')}, not a fine-tuned classifier")
    cfg = load_config(base=meta["config"])
    model = build_classifier(cfg.model, len(meta["classes"]))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(
            f"{run}: weights do not fit the model it describes ({str(e).splitlines()[1].strip()})"
        ) from None
    return model.eval(), cfg, meta


def load_restorer(run: str | Path, overrides: Sequence[str] = ()) -> tuple[torch.nn.Module, Config]:
    tensors, meta, _ = read_model(run)
    if meta.get("kind") != "restorer":
        raise CheckpointError(f"{run}: holds a {meta.get('kind')}, not a pre-trained restorer")
    trained = load_config(base=meta["config"])
    cfg = load_config(base=meta["config"], overrides=overrides)
    old, new = flatten(to_dict(trained.model)), flatten(to_dict(cfg.model))
    changed = [k for k in old if old[k] != new[k]]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"--set model.{key}={new[key]!r}: {run} was trained with "
            f"model.{key}={old[key]!r}, and its weights fit only that; leave "
            f"model.* as trained (the masking, pretrain.*, may change)"
        )
    model = build_restorer(cfg.model, cfg.pretrain)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError:  # a tensor of another shape
        missing, unexpected = [], ["(another shape)"]
    if unexpected or [k for k in missing if not k.startswith("mask_token")]:
        raise ConfigError(
            f"{run}: the overrides change the model; keep pretrain.mask_patch a "
            f"multiple of model.patch_size as it was trained"
        )
    return model.eval(), cfg


def evaluate_run(
    run: str | Path, data: str | None = None, device: str = "auto"
) -> dict[str, float]:
    dev = pick_device(device)
    model, cfg, meta = load_classifier(run)
    if data:
        cfg.data.path = data
    cfg.data.classes = meta["classes"]  # the classes it was trained on, in its label order
    _, val = load_splits(cfg.data, cfg.model.img_size, labelled="evaluation")
    if val is None:
        raise DataError(
            f"{cfg.data.path}: has no labelled validation split (add val/<class>/ "
            f"or set data.val_fraction above 0)"
        )
    return classification_metrics(model.to(dev), val, dev)


@torch.no_grad()
def predict(
    run: str | Path, images: list[str], topk: int = 5, device: str = "auto"
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image."""
    if topk < 1:
        raise ConfigError(f"--topk {topk}: expected an integer >= 1")
    dev = pick_device(device)
    model, cfg, meta = load_classifier(run)
    x = normalize(load_images(images, cfg.model.img_size, single_image_resize(cfg)))
    probs = model.to(dev)(x.to(dev)).float().softmax(-1).cpu()
    top = probs.topk(min(topk, probs.shape[1]), dim=1)
    names = meta["class_names"]
    return [
        [(names[j], p) for p, j in zip(ps.tolist(), js.tolist())]
        for ps, js in zip(top.values, top.indices)
    ]


@torch.no_grad()
def reconstruct(
    run: str | Path,
    images: list[str],
    out: Path,
    overrides: Sequence[str] = (),
    seed: int = 0,
    device: str = "auto",
) -> Path:
    """PNG grid of original | masked | restored for the given images."""
    outputs.check_file(out, inputs=[run, *images])
    dev = pick_device(device)
    model, cfg = load_restorer(run, overrides)
    x = normalize(load_images(images, cfg.model.img_size, single_image_resize(cfg)))
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same masks on every device
    p = cfg.pretrain
    mask = random_mask(len(x), cfg.model.img_size, p.mask_patch, p.mask_ratio, g)
    save_grid(out, x, mask, restored_image(model.to(dev), x.to(dev), mask.to(dev), cfg).cpu())
    outputs.record(Path(out))
    return out


FORMATS = ("file", "timm")


def timm_weights(
    run: str | Path, encoder: bool = False
) -> tuple[dict[str, torch.Tensor], dict, Config, dict]:
    """(timm state dict, timm constructor kwargs, the run's config, its JSON description).

    A classifier is exported whole; with ``encoder`` the head is left out and any run that holds
    a backbone (restorer or classifier) will do, checked as strictly as fine-tuning's transfer.
    """
    if not encoder:
        model, cfg, meta = load_classifier(run)
        return (
            to_timm_state(model, cfg.model),
            timm_kwargs(cfg.model, len(meta["classes"])),
            cfg,
            meta,
        )
    tensors, meta, _ = read_model(run)
    cfg = load_config(base=meta["config"])
    model = build_classifier(cfg.model, 1)
    transfer(tensors, model, str(run))
    state = {k: v for k, v in to_timm_state(model, cfg.model).items() if not k.startswith("head.")}
    return state, timm_kwargs(cfg.model, 0), cfg, meta


EXPORT_FILES = ("model.safetensors", "config.json", "README.md")


def export(run: str | Path, out: str | Path, fmt: str = "file", encoder: bool = False) -> Path:
    """Write ``run``'s model for timm; returns ``out``.

    ``fmt="file"``: one ``.safetensors`` of timm ``VisionTransformer`` weights, the timm name and
    constructor arguments in a ``.json`` beside it (``timm.create_model(architecture,
    **kwargs)`` loads it strictly; for vitmim's own ViT ``VisionTransformer(**kwargs)`` too).
    ``fmt="timm"``: a model folder as timm and the Hugging Face Hub lay them out,
    ``model.safetensors`` + ``config.json`` + ``README.md``, which
    ``timm.create_model("local-dir:OUT", pretrained=True)`` loads and ``hf upload USER/NAME OUT``
    (huggingface_hub's CLI) publishes. ``encoder``: the backbone alone (timm ``num_classes=0``,
    pooled features), from a pre-training or a fine-tuned run.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: unknown (known: {', '.join(FORMATS)})")
    out = Path(out)
    state, kwargs, cfg, meta = timm_weights(run, encoder)
    classes, names = ([], []) if encoder else (meta["classes"], meta["class_names"])
    if fmt == "file":
        outputs.check_folder(out.parent, [out.name, out.with_suffix(".json").name], [run])
        if out.suffix != ".safetensors":
            raise ConfigError(
                f"{out}: export writes safetensors weights and a .json beside "
                f"them; name a .safetensors file"
            )
        checkpoint.save_weights(
            out,
            state,
            meta={
                "timm_class": "timm.models.vision_transformer.VisionTransformer",
                "architecture": timm_architecture(cfg.model),
                "kwargs": kwargs,
                "classes": classes,
                "class_names": names,
                "mean": list(MEAN),
                "std": list(STD),
            },
        )
        outputs.record(out)
        outputs.record(out.with_suffix(".json"))
        return out
    outputs.check_folder(out, EXPORT_FILES, [run])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    resize = single_image_resize(cfg)
    checkpoint.save_weights(out / "model.safetensors", state)
    outputs.record(out / "model.safetensors")
    outputs.write_text(
        out / "config.json",
        json.dumps(timm_config(cfg.model, kwargs, classes, names, resize), indent=2) + "\n",
        [run],
        out,
    )
    data = {
        "path": Path(cfg.data.path or "").name or cfg.data.path,
        "resize": resize,
        "images": training_images(run),
    }
    outputs.write_text(
        out / "README.md",
        model_card(cfg.model, len(classes), meta.get("metrics") or {}, data),
        [run],
        out,
    )
    return out


def training_images(run: str | Path) -> int | None:
    """How many training images the run saw, where its manifest says (runs of older vitmim
    versions do not)."""
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    records = json_object(folder / "manifest.json")
    return records.get("train_images")
