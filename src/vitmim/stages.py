"""The two stages as tasks for the engine, and the run folders they live in.

``pretrain``: restorer learns to fill masked cells of training images (no labels).
``finetune``: classifier, its backbone optionally initialised from a pre-trained restorer.
"""

from __future__ import annotations

import copy
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitmim import checkpoint
from vitmim.augment import augment, denormalize, mix, normalize
from vitmim.config import Config, dump, load_config, read_json_mapping, to_dict
from vitmim.data import ImageSet, label_subset, load_splits
from vitmim.engine import Env, Trainer, derive_seed, run_lock, train
from vitmim.errors import UserError
from vitmim.masking import random_mask
from vitmim.models import build_classifier, build_restorer, transfer
from vitmim.models.restorer import normalize_patches, patchify, restoration_loss, unpatchify

EVAL_IMAGES = 512  # validation images used for restoration metrics
GRID_IMAGES = 8  # images shown in reconstruction grids


class PretrainTask:
    """Masked-pixel restoration on training images."""

    def __init__(self, train_set: ImageSet, val_set: ImageSet | None, cfg: Config, env: Env,
                 run_dir: Path):
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.images = train_set.images.to(env.device)  # uint8, resident on the device
        self.n_train = len(train_set)
        held_out = val_set if val_set is not None and len(val_set) else train_set
        self.val_x = normalize(held_out.images[:EVAL_IMAGES].to(env.device))
        g = torch.Generator(device=env.device).manual_seed(derive_seed(cfg.pretrain.seed, 4))
        self.val_mask = self.mask(len(self.val_x), g)  # the same masks every epoch

    def mask(self, n: int, g: torch.Generator) -> torch.Tensor:
        p = self.cfg.pretrain
        return random_mask(n, self.cfg.model.img_size, p.mask_patch, p.mask_ratio, g,
                           self.env.device)

    def make_batch(self, idx: torch.Tensor, g: torch.Generator):
        x = augment(self.images[idx], self.cfg.pretrain.augment, g)
        return x, self.mask(len(idx), g)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, mask = batch
        return restoration_loss(model(x, mask), x, mask, self.cfg.pretrain,
                                self.cfg.model.patch_size)

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        metrics = restoration_metrics(model, self.val_x, self.val_mask, self.cfg)
        x, m = self.val_x[:GRID_IMAGES], self.val_mask[:GRID_IMAGES]
        save_reconstruction_grid(self.run_dir / "images" / f"recon_epoch{epoch:03d}.png",
                                 x, m, restored_image(model, x, m, self.cfg))
        return metrics


def restored_image(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, cfg: Config
                   ) -> torch.Tensor:
    """Prediction in image space: (B, 3, H, W) normalised. Undoes per-patch target normalisation
    with the true patch statistics (as MAE's visualisation does)."""
    pred = model(x, mask).float()
    if cfg.pretrain.norm_pix:
        p = cfg.model.patch_size
        t = patchify(x, p)
        pred = patchify(pred, p) * (t.var(-1, keepdim=True) + 1e-6).sqrt() + t.mean(-1, True)
        pred = unpatchify(pred, p)
    return pred


@torch.no_grad()
def restoration_metrics(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, cfg: Config,
                        batch: int = 256) -> dict[str, float]:
    """Masked-pixel L1 (normalised units) and PSNR (dB, pixels in [0, 1]) on masked pixels."""
    l1 = se = count = 0.0
    for i in range(0, len(x), batch):
        xb, mb = x[i:i + batch], mask[i:i + batch]
        pred = restored_image(model, xb, mb, cfg)
        target = normalize_patches(xb, cfg.model.patch_size) if cfg.pretrain.norm_pix else xb
        raw = model(xb, mb).float() if cfg.pretrain.norm_pix else pred
        m = mb.expand_as(xb)
        l1 += ((raw - target).abs() * m).sum().item()
        se += (((denormalize(pred) - denormalize(xb)) ** 2) * m).sum().item()
        count += m.sum().item()
    mse = se / max(count, 1.0)
    return {"val_l1": l1 / max(count, 1.0), "val_psnr": 10 * torch.log10(
        torch.tensor(1.0 / max(mse, 1e-12))).item()}


def save_reconstruction_grid(path: Path, x: torch.Tensor, mask: torch.Tensor,
                             pred: torch.Tensor) -> None:
    """PNG with one row per image: original | masked | restored (visible pixels pasted back)."""
    from torchvision.utils import save_image
    orig = denormalize(x.float())
    shown = orig * (1 - mask) + 0.5 * mask  # masked cells drawn grey
    restored = orig * (1 - mask) + denormalize(pred.float()) * mask
    rows = torch.stack([orig, shown, restored], dim=1).flatten(0, 1)  # (3B, 3, H, W)
    checkpoint.atomic_write(path, lambda p: save_image(rows.cpu(), p, nrow=3, padding=2,
                                                      format="png"))


class FinetuneTask:
    """Supervised classification with label smoothing (and optional mixup/cutmix)."""

    def __init__(self, train_set: ImageSet, val_set: ImageSet | None, cfg: Config, env: Env):
        self.cfg, self.env = cfg, env
        images, labels = train_set.images, train_set.labels
        if cfg.data.label_fraction < 1.0:  # index only when needed: a copy of 100k images is 1 GB
            keep = label_subset(labels, cfg.data.label_fraction, cfg.finetune.seed)
            images, labels = images[keep], labels[keep]
        self.images = images.to(env.device)
        self.labels = labels.to(env.device)
        self.n_train = len(labels)
        self.num_classes = len(train_set.classes)
        self.val = val_set

    def make_batch(self, idx: torch.Tensor, g: torch.Generator):
        x = augment(self.images[idx], self.cfg.finetune.augment, g)
        return mix(x, self.labels[idx], self.num_classes, self.cfg.finetune.augment)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x).float(), y,
                               label_smoothing=self.cfg.finetune.label_smoothing)

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if self.val is None:
            return {}
        return classification_metrics(model, self.val, self.env.device)


@torch.no_grad()
def classification_metrics(model: nn.Module, data: ImageSet, device: torch.device,
                           batch: int = 500) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over a labelled set."""
    model.eval()
    top1 = top5 = loss = 0.0
    for i in range(0, len(data), batch):
        x = normalize(data.images[i:i + batch].to(device))
        y = data.labels[i:i + batch].to(device)
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(1).sum().item()
    n = max(len(data), 1)
    return {"val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n, "val_loss": loss / n}


# ---------------------------------------------------------------------------------------------
# run folders


def forward_flops(model: nn.Module, example: tuple) -> float:
    """Forward FLOPs per image of ``model`` on ``example`` (torch's FLOP counter)."""
    counter = FlopCounterMode(display=False)
    model.eval()  # no batch-norm statistics updated by this probe
    with torch.no_grad(), counter:
        model(*example)
    model.train()
    return counter.get_total_flops() / example[0].shape[0]


def training_flops_per_image(cfg: Config, num_classes: int) -> tuple[float, float]:
    """Forward FLOPs per training image of the restorer (on a masked image, so the fast path
    counts only its visible tokens) and of the classifier. A backward pass costs about twice its
    forward in both, so their ratio is the ratio of training compute per image."""
    with torch.random.fork_rng(devices=[]):  # random weights and masks; the caller's RNG untouched
        torch.manual_seed(0)
        size = cfg.model.img_size
        x = torch.randn(2, 3, size, size)
        mask = random_mask(2, size, cfg.pretrain.mask_patch, cfg.pretrain.mask_ratio,
                           torch.Generator().manual_seed(0), torch.device("cpu"))
        restorer = forward_flops(build_restorer(cfg.model, cfg.pretrain), (x, mask))
        classifier = forward_flops(build_classifier(cfg.model, num_classes, 0.0), (x,))
    return restorer, classifier


def describe_model(model: nn.Module, example: tuple, name: str) -> dict:
    """Parameter count and forward FLOPs per image (torch's FLOP counter); printed at start-up."""
    params = sum(p.numel() for p in model.parameters())
    flops = forward_flops(model, example)
    print(f"{name}: {params / 1e6:.2f} M parameters, {flops / 1e9:.3f} GFLOPs per image",
          flush=True)
    return {"params": params, "flops_per_image": flops}


def manifest(cfg: Config, env: Env, data: ImageSet, extra: dict | None = None) -> dict:
    """Everything needed to reproduce a run."""
    import numpy
    import timm
    import torchvision
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = (torch.cuda.get_device_name(env.device) if env.device.type == "cuda"
              else platform.processor() or platform.machine())
    return {"command": sys.argv, "git_commit": commit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "python": platform.python_version(),
            "packages": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "timm": timm.__version__, "numpy": numpy.__version__},
            "device": str(env.device), "device_name": device, "world_size": env.world,
            "data_fingerprint": data.fingerprint, "classes": data.classes, **(extra or {})}


def open_run(run_dir: Path, cfg: Config, env: Env, data: ImageSet, extra: dict | None = None
             ) -> None:
    """Write config.yaml and manifest.json (main process); refuse an unwritable folder."""
    if not env.main:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(run_dir / "config.yaml", dump(cfg))
        checkpoint.write_json(run_dir / "manifest.json", manifest(cfg, env, data, extra))
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write the run folder ({e.strerror})") from None


def load_init(init: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """``--init``: a run folder (its model.safetensors) or a weights file."""
    p = Path(init)
    if p.is_dir():
        p = p / "model.safetensors"
    return checkpoint.load_weights(p), str(p)


def save_final(run_dir: Path, model: nn.Module, kind: str, cfg: Config, data: ImageSet,
               metrics: dict) -> None:
    checkpoint.save_weights(run_dir / "model.safetensors", model.state_dict(), meta={
        "kind": kind, "config": to_dict(cfg), "classes": data.classes,
        "class_names": data.class_names, "metrics": metrics})


def pretrain(cfg: Config, run_dir: Path, env: Env, resume: bool = False,
             progress: bool = True) -> dict:
    """Pre-train a restorer in ``run_dir``; returns the last epoch's metrics."""
    train_set, val_set = load_splits(cfg.data, cfg.model.img_size, progress=progress and env.main)
    torch.manual_seed(derive_seed(cfg.pretrain.seed, 0))  # same initial weights in every run
    model = build_restorer(cfg.model, cfg.pretrain)
    task = PretrainTask(train_set, val_set, cfg, env, run_dir)
    x = task.val_x[:2].cpu()
    info = describe_model(model, (x, task.val_mask[:2].cpu()), "restorer") if env.main else {}
    with run_lock(run_dir, env):
        trainer = Trainer(task, model, cfg.pretrain, run_dir, env, "pretrain",
                          cfg.checkpoint_every, cfg.compile, progress)
        metrics = train(trainer, resume, lambda: open_run(
            run_dir, cfg, env, train_set, {"stage": "pretrain", "model": info}))
        if env.main:
            save_final(run_dir, trainer.eval_model(), "restorer", cfg, train_set, metrics)
        env.barrier()  # under torchrun no process reads the final model before it is written
    return metrics


def scratch_recipe(cfg: Config) -> Config:
    """The fine-tune recipe for a randomly initialised classifier: layer-wise lr decay is off.

    Layer decay exists to keep pre-trained lower layers close to their weights; on random weights
    it only slows the lower layers down, which would handicap the scratch baseline and flatter
    pre-training."""
    if cfg.finetune.layer_decay >= 1.0:
        return cfg
    out = copy.deepcopy(cfg)
    out.finetune.layer_decay = 1.0
    return out


def finetune(cfg: Config, run_dir: Path, env: Env, init: str | Path | None = None,
             resume: bool = False, progress: bool = True) -> dict:
    """Fine-tune a classifier (from ``init`` or from scratch) in ``run_dir``."""
    train_set, val_set = load_splits(cfg.data, cfg.model.img_size, progress=progress and env.main)
    if (train_set.labels < 0).any():
        raise UserError(f"{cfg.data.path or 'data'}: fine-tuning needs labelled images "
                        f"(source {cfg.data.source} has none)")
    torch.manual_seed(derive_seed(cfg.finetune.seed, 0))  # same initial weights in every run
    model = build_classifier(cfg.model, len(train_set.classes), cfg.finetune.drop_path)
    extra: dict = {"stage": "finetune", "init": str(init) if init else None}
    if init:
        source, origin = load_init(init)
        report = transfer(source, model, origin)
        extra["transfer"] = {"new": report.new, "dropped": report.dropped,
                             "copied": len(report.copied)}
        if env.main:
            print(report.summary(), flush=True)
    if env.main:
        x = normalize(train_set.images[:2])
        extra["model"] = describe_model(model, (x,), "classifier")
    cfg = scratch_recipe(cfg) if not init else cfg
    task = FinetuneTask(train_set, val_set, cfg, env)
    with run_lock(run_dir, env):
        trainer = Trainer(task, model, cfg.finetune, run_dir, env, "finetune",
                          cfg.checkpoint_every, cfg.compile, progress)
        metrics = train(trainer, resume, lambda: open_run(run_dir, cfg, env, train_set, extra))
        if env.main:
            save_final(run_dir, trainer.eval_model(), "classifier", cfg, train_set, metrics)
        env.barrier()  # under torchrun no process reads the final model before it is written
    return metrics


def read_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A final model (run folder or model.safetensors) and its JSON description."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    tensors = checkpoint.load_weights(p)
    meta_path = p.with_suffix(".json")
    if not meta_path.exists():
        raise UserError(f"{meta_path}: missing; it describes the model in {p}")
    meta = read_json_mapping(meta_path, "model description", {
        "kind": str, "config": dict, "classes": list, "class_names": list})
    if len(meta["classes"]) != len(meta["class_names"]):
        raise UserError(f"{meta_path}: model description: {len(meta['classes'])} classes but "
                        f"{len(meta['class_names'])} class names")
    try:
        load_config(base=meta["config"])
    except UserError as e:
        raise UserError(f"{meta_path}: {e}") from None
    return tensors, meta
