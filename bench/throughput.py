"""Training images/s of vitmim against a reference built the usual way, in one process.

Reference: timm's ``VisionTransformer`` of the same shape as vitmim's classifier, torchvision's
``ImageFolder`` on extracted TIN JPEGs with per-sample transforms and a ``DataLoader``, a plain
AdamW loop; for pre-training the same ViT used SimMIM-style (mask token + linear pixel head, L1
on masked patches). vitmim: the engine's ``Trainer.train_step`` with the real stage tasks.

Two views of each stage:
- "model alone": both sides train on pre-made tensors already on the device (no data loading);
- "end to end": the reference pulls from its DataLoader, vitmim builds batches from its cache.

Then, per stage, vitmim's end-to-end images/s as model FLOP utilisation: training FLOPs per
image (3x the forward FLOPs that torch's FlopCounterMode counts: the backward costs about twice
the forward) x images/s, over the card's dense bf16 peak (:data:`PEAK_BF16`). ``--no-reference``
measures only that (no JPEG extraction, no DataLoader).

    VITMIM_DATA=/path/tiny-imagenet-200.zip python bench/throughput.py [--seconds 6]
    python bench/throughput.py --device cuda --no-reference [--set model.depth=12]
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    add_common_args,
    compare,
    extract_class_folders,
    ratio_line,
    setup,
    temp_dir,
)
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from vitmim.augment import MEAN, STD
from vitmim.config import Config, StageConfig
from vitmim.data import load_splits
from vitmim.engine import Trainer
from vitmim.env import Env
from vitmim.models import build_classifier, build_restorer
from vitmim.models.restorer import uses_fast_path
from vitmim.models.timm_vit import timm_kwargs
from vitmim.pipeline import training_flops_per_image
from vitmim.tasks import FinetuneTask, PretrainTask

Step = Callable[[], None]

# dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, matched in
# order against torch.cuda.get_device_name (the first name fragment found wins)
PEAK_BF16 = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
)


# ---------------------------------------------------------------------------------------------
# the reference, written the usual way


class SimMIM(nn.Module):
    """timm ViT encoder; masked tokens replaced by a learned token; linear pixel head."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.vit = VisionTransformer(**timm_kwargs(cfg.model, num_classes=0))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.model.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(cfg.model.embed_dim, cfg.model.patch_size**2 * 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W); mask: (B, N) 1 = masked -> (B, N, p*p*3) predicted patches."""
        t = self.vit.patch_embed(x)  # (B, N, D)
        m = mask.unsqueeze(-1).to(t.dtype)
        t = t * (1 - m) + self.mask_token.to(t.dtype) * m
        t = self.vit.norm(self.vit.blocks(self.vit._pos_embed(t)))
        return self.head(t)


def simmim_loss(pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, p: int) -> torch.Tensor:
    """Mean L1 over the pixels of masked patches. pred: (B, N, p*p*3); x: (B, 3, H, W)."""
    b, c, h, w = x.shape
    target = (
        x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
    )
    err = (pred.float() - target).abs().mean(-1)  # (B, N)
    return (err * mask).sum() / mask.sum()


class MaskedView:
    """Per-sample transform for pre-training (SimMIM's way): augmented image + a random token
    mask with exactly round(ratio * cells) masked cells."""

    def __init__(self, cfg: Config, augment: Callable):
        p = cfg.pretrain
        if p.mask_patch % cfg.model.patch_size:
            raise SystemExit("the SimMIM reference needs pretrain.mask_patch % patch_size == 0")
        self.augment, self.cells = augment, cfg.model.img_size // p.mask_patch
        self.scale = p.mask_patch // cfg.model.patch_size
        self.k = round(p.mask_ratio * self.cells**2)

    def __call__(self, img) -> tuple[torch.Tensor, torch.Tensor]:
        mask = np.zeros(self.cells**2, dtype=np.float32)
        mask[np.random.permutation(self.cells**2)[: self.k]] = 1
        mask = mask.reshape(self.cells, self.cells).repeat(self.scale, 0).repeat(self.scale, 1)
        return self.augment(img), torch.from_numpy(mask.reshape(-1))


def reference_loader(
    folder: Path, cfg: Config, batch: int, workers: int, pretrain: bool, device: torch.device
) -> Iterator:
    """Endless batches from ImageFolder + per-sample torchvision transforms + DataLoader."""
    a = cfg.finetune.augment
    aug = transforms.Compose(
        [
            transforms.RandomCrop(cfg.model.img_size, padding=a.crop_pad, padding_mode="reflect"),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    ds = datasets.ImageFolder(str(folder), transform=MaskedView(cfg, aug) if pretrain else aug)
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    while True:
        for x, y in loader:
            yield x if pretrain else (x, y)  # pre-training: x is (images, masks)


def reference_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: Callable,
    cfg: Config,
    env: Env,
    pretrain: bool,
) -> Step:
    """One plain AdamW step per call on ``batch()`` (a fresh batch each time)."""

    def step() -> None:
        x, y = batch()
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=env.amp):
            if pretrain:
                loss = simmim_loss(model(x, y), x, y, cfg.model.patch_size)
            else:
                loss = F.cross_entropy(
                    model(x).float(), y, label_smoothing=cfg.finetune.label_smoothing
                )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def reference_model(cfg: Config, num_classes: int, pretrain: bool, env: Env) -> tuple:
    model = (
        SimMIM(cfg)
        if pretrain
        else VisionTransformer(
            **timm_kwargs(cfg.model, num_classes), drop_path_rate=cfg.finetune.drop_path
        )
    )
    model = model.to(env.device)
    st = cfg.pretrain if pretrain else cfg.finetune
    opt = torch.optim.AdamW(model.parameters(), lr=st.lr, weight_decay=st.weight_decay)
    return (torch.compile(model) if cfg.compile else model), opt


# ---------------------------------------------------------------------------------------------
# vitmim: the engine's step with the real tasks


class PremadeTask:
    """A task whose batch is always the same pre-made tensors (model-alone measurement)."""

    def __init__(self, task, batch: tuple[torch.Tensor, ...]):
        self.task, self.batch, self.n_train = task, batch, len(batch[0])

    def make_batch(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        return self.batch

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return self.task.loss(model, batch)


def vitmim_step(
    task, model: nn.Module, st: StageConfig, cfg: Config, env: Env, run_dir: Path
) -> Step:
    """The engine's ``train_step`` over a shuffled order of the task's images, as ``fit`` does."""
    st = copy.deepcopy(st)
    st.epochs = 10_000  # a long schedule: the lr stays sane however many steps we time
    trainer = Trainer(
        task,
        model,
        st,
        run_dir=run_dir,
        env=env,
        stage="bench",
        compile=cfg.compile,
        progress=False,
    )
    order = torch.randperm(task.n_train)

    def step() -> None:
        i = trainer.step % trainer.spe
        trainer.train_step(order[i * st.batch_size : (i + 1) * st.batch_size])
        trainer.step += 1

    return step


def vitmim_model(cfg: Config, num_classes: int, pretrain: bool) -> nn.Module:
    if pretrain:
        return build_restorer(cfg.model, cfg.pretrain)
    return build_classifier(cfg.model, num_classes, cfg.finetune.drop_path)


# ---------------------------------------------------------------------------------------------
# the measurements


def measure_stage(
    cfg: Config, env: Env, args, folder: Path, sets: tuple, pretrain: bool, run_dir: Path
) -> dict[str, float]:
    """images/s of reference and vitmim, model alone and end to end, for one stage."""
    train_set, val_set = sets
    st = cfg.pretrain if pretrain else cfg.finetune
    n_cls, b = len(train_set.classes), st.batch_size
    task = (
        PretrainTask(train_set, val_set, cfg, env, run_dir)
        if pretrain
        else FinetuneTask(train_set, val_set, cfg, env)
    )
    g = torch.Generator(device=env.device).manual_seed(0)
    ours_batch = task.make_batch(torch.arange(b, device=env.device), g)
    x = ours_batch[0]
    ref_target = (
        torch.nn.functional.avg_pool2d(ours_batch[1], cfg.model.patch_size).flatten(1)
        if pretrain
        else task.labels[:b]
    )
    out = {}
    for view in ("alone", "e2e"):
        model, opt = reference_model(cfg, n_cls, pretrain, env)
        it = (
            iter(lambda: (x, ref_target), None)
            if view == "alone"
            else reference_loader(folder, cfg, b, args.workers, pretrain, env.device)
        )
        t = PremadeTask(task, ours_batch) if view == "alone" else task
        rates = compare(
            {
                "ref": reference_step(model, opt, it.__next__, cfg, env, pretrain),
                "ours": vitmim_step(t, vitmim_model(cfg, n_cls, pretrain), st, cfg, env, run_dir),
            },
            b,
            2 * args.seconds,
            args.warmup,
            env.device,
        )
        if view == "e2e":
            it.close()  # stops the DataLoader workers
        out[f"ref_{view}"], out[f"ours_{view}"] = rates["ref"], rates["ours"]
        print(
            f"  {'pretrain' if pretrain else 'finetune'} {view}: reference "
            f"{out[f'ref_{view}']:.1f}, vitmim {out[f'ours_{view}']:.1f} images/s",
            flush=True,
        )
    return out


def peak_tflops(env: Env) -> tuple[str, float | None]:
    """The device's name and dense bf16 peak in TFLOP/s (None: not in :data:`PEAK_BF16`)."""
    if env.device.type != "cuda":
        return "CPU", None
    name = torch.cuda.get_device_name(env.device)
    return name, next((peak for key, peak in PEAK_BF16 if key in name), None)


def vitmim_rate(cfg: Config, env: Env, args, sets: tuple, pretrain: bool, run_dir: Path) -> float:
    """images/s of the engine's step with the real task, end to end (no reference beside it)."""
    train_set, val_set = sets
    st = cfg.pretrain if pretrain else cfg.finetune
    task = (
        PretrainTask(train_set, val_set, cfg, env, run_dir)
        if pretrain
        else FinetuneTask(train_set, val_set, cfg, env)
    )
    model = vitmim_model(cfg, len(train_set.classes), pretrain)
    step = vitmim_step(task, model, st, cfg, env, run_dir)
    return compare(
        {"ours": step}, st.batch_size, 2 * args.seconds, args.warmup, env.device, rounds=1
    )["ours"]


def print_mfu(rates: dict[str, tuple[Config, bool, float]], n_cls: int, env: Env) -> None:
    """images/s, training FLOPs per image (3x forward) and their share of the card's peak."""
    name, peak = peak_tflops(env)
    print(
        f"\ndevice {name}: dense bf16 peak "
        + (f"{peak:g} TFLOP/s" if peak else "not in the table (MFU omitted)")
        + "; training FLOPs = 3 x forward FLOPs (torch FlopCounterMode)"
    )
    print(f"{'stage':<24} {'images/s':>10} {'GFLOP/img':>10} {'TFLOP/s':>9} {'MFU':>7}")
    for stage, (cfg, pretrain, rate) in rates.items():
        restorer, classifier = training_flops_per_image(cfg, n_cls)
        flops = 3 * (restorer if pretrain else classifier)
        achieved = rate * flops / 1e12
        mfu = f"{100 * achieved / peak:6.1f}%" if peak else "    n/a"
        print(f"{stage:<24} {rate:>10.0f} {flops / 1e9:>10.3f} {achieved:>9.2f} {mfu:>7}")


def stage_configs(cfg: Config) -> dict[str, tuple[Config, bool]]:
    """The stages measured: fine-tuning, pre-training on the full path and, where the mask cell
    is a multiple of the patch, on the fast path."""
    full = copy.deepcopy(cfg)
    full.pretrain.fast = False  # the same computation as the SimMIM reference
    stages = {"finetune": (cfg, False), "pretrain (full path)": (full, True)}
    if uses_fast_path(cfg.model, cfg.pretrain):
        stages["pretrain (fast path)"] = (cfg, True)
    return stages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, len(os.sched_getaffinity(0))),
        help="reference DataLoader workers (default: one per core, at most 8)",
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="only vitmim's images/s and MFU per stage (no reference, no JPEGs)",
    )
    args = p.parse_args()
    cfg, env = setup(args)
    sets = load_splits(cfg.data, cfg.model.img_size, progress=False)
    rates = {}
    with temp_dir("vitmim-bench-") as tmp:
        if args.no_reference:
            for stage, (c, pretrain) in stage_configs(cfg).items():
                rates[stage] = (c, pretrain, vitmim_rate(c, env, args, sets, pretrain, Path(tmp)))
                print(f"  {stage}: vitmim {rates[stage][2]:.1f} images/s", flush=True)
        else:
            folder = extract_class_folders(cfg.data.path, sets[0].classes, Path(tmp) / "train")
            print(
                f"data: {len(sets[0])} training images of {len(sets[0].classes)} classes; "
                f"reference reads {folder} with {args.workers} DataLoader workers",
                flush=True,
            )
            results = {
                stage: measure_stage(c, env, args, folder, sets, pretrain, Path(tmp))
                for stage, (c, pretrain) in stage_configs(cfg).items()
            }
            print(f"\n{'training images/s':<34} {'reference':>10} {'vitmim':>10} {'ratio':>9}")
            for stage, r in results.items():
                print(ratio_line(f"{stage}, model alone", r["ours_alone"], r["ref_alone"]))
                print(ratio_line(f"{stage}, end to end", r["ours_e2e"], r["ref_e2e"]))
            rates = {
                stage: (*stage_configs(cfg)[stage], r["ours_e2e"]) for stage, r in results.items()
            }
    print_mfu(rates, len(sets[0].classes), env)


if __name__ == "__main__":
    main()
