"""Operators launched by one training step, per stage and batch size, counted by torch.profiler.

Each stage runs the engine's ``Trainer.train_step`` with the real task (augmentation, masks,
forward, loss, backward, AdamW, EMA) on random uint8 images resident on the device. The recipe is
the default model with TrivialAugment and random erasing on in both stages and the fine-tuning
EMA of the ``tin200`` preset (change any of it with ``--set``). After untimed steps (caches,
lazy imports), ``--steps`` steps are profiled; the table gives operators per step:

- ``top-level ops``: ATen operators called from Python or the autograd engine (each is at least
  one kernel launch on a GPU, or one CPU kernel);
- ``all ops``: every ATen operator, nested ones included;
- ``CUDA kernels``: kernels the GPU ran (``--device cuda`` only).

Point ``PYTHONPATH`` at another checkout's ``src`` to count that version of vitmim the same way:

    python bench/step_profile.py [--device cpu|cuda] [--batches 64 256] [--steps 2]
    PYTHONPATH=/path/to/other/src python bench/step_profile.py
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from _common import add_common_args, setup, temp_dir
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import vitmim
from vitmim.config import Config
from vitmim.data import ImageSet
from vitmim.engine import Trainer
from vitmim.env import Env
from vitmim.models import build_classifier, build_restorer
from vitmim.tasks import FinetuneTask, PretrainTask

RECIPE = [
    "pretrain.augment.trivial_augment=true",
    "pretrain.augment.erasing=0.25",
    "finetune.augment.trivial_augment=true",
    "finetune.augment.erasing=0.25",
    "finetune.ema=0.9998",
]


def random_images(n: int, size: int, classes: int) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    names = [f"c{i}" for i in range(classes)]
    return ImageSet(images, torch.arange(n) % classes, names, names, "random")


def make_trainer(cfg: Config, env: Env, stage: str, batch: int, run_dir: Path) -> Trainer:
    """A trainer of ``stage`` at ``batch`` images per step on random images (4 steps/epoch)."""
    cfg = copy.deepcopy(cfg)
    st = getattr(cfg, stage)
    st.batch_size, st.epochs = batch, 1000  # a long schedule: any step count is valid
    data = random_images(4 * batch, cfg.model.img_size, 200)
    if stage == "pretrain":
        task = PretrainTask(data, None, cfg, env, run_dir)
        model = build_restorer(cfg.model, cfg.pretrain)
    else:
        task = FinetuneTask(data, None, cfg, env)
        model = build_classifier(cfg.model, 200, cfg.finetune.drop_path)
    return Trainer(
        task, model, st, run_dir=run_dir, env=env, stage=stage, compile=cfg.compile, progress=False
    )


def count_step_ops(t: Trainer, steps: int, warmup: int) -> dict[str, float]:
    """Operators per step of ``t.train_step``, averaged over ``steps`` profiled steps."""
    b = t.st.batch_size
    order = torch.randperm(t.task.n_train).to(t.env.device)

    def step() -> None:
        i = t.step % t.spe
        t.train_step(order[i * b : (i + 1) * b])
        t.step += 1

    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU]
    if t.env.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if t.env.device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]

    def nested(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return True
            p = p.cpu_parent
        return False

    out = {"top": sum(not nested(e) for e in aten) / steps, "all": len(aten) / steps}
    if t.env.device.type == "cuda":
        out["kernels"] = sum(e.device_type == DeviceType.CUDA for e in events) / steps
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--steps", type=int, default=2, help="profiled steps per measurement")
    args = p.parse_args()
    args.overrides = RECIPE + list(args.overrides)
    cfg, env = setup(args)
    print(f"vitmim from {Path(vitmim.__file__).parent}; torch {torch.__version__}", flush=True)
    rows = []
    with temp_dir("vitmim-profile-") as tmp:
        for stage in ("pretrain", "finetune"):
            for b in args.batches:
                t = make_trainer(cfg, env, stage, b, Path(tmp) / f"{stage}{b}")
                rows.append((stage, b, count_step_ops(t, args.steps, max(args.warmup, 1))))
                print(f"  {stage} batch {b}: {rows[-1][2]}", flush=True)
    cuda = env.device.type == "cuda"
    print(
        f"\n{'stage':<9} {'batch':>6} {'top-level ops':>14} {'all ops':>9}"
        + (f" {'CUDA kernels':>13}" if cuda else "")
    )
    for stage, b, c in rows:
        print(
            f"{stage:<9} {b:>6} {c['top']:>14.0f} {c['all']:>9.0f}"
            + (f" {c['kernels']:>13.0f}" if cuda else "")
        )


if __name__ == "__main__":
    main()
