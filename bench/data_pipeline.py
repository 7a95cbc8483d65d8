"""Data pipeline: cache build and reopen times on the whole archive, and batched augmentation
images/s against the images/s the model consumes.

The cache goes to a fresh temporary folder (never your VITMIM_CACHE), so the build is timed from
scratch. Augmentation is timed as the engine calls it: ``task.make_batch`` on random indices of
the cached training set, on the compute device; the model's rate is one optimiser step of the
default ViT on pre-made batches of the same size.

    VITMIM_DATA=/path/tiny-imagenet-200.zip python bench/data_pipeline.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import add_common_args, images_per_s, setup, temp_dir
from throughput import PremadeTask, vitmim_model, vitmim_step

from vitmim.config import Config
from vitmim.data import ImageSet, load_splits
from vitmim.env import Env
from vitmim.tasks import FinetuneTask, PretrainTask


def timed_load(cfg: Config) -> tuple[float, tuple[ImageSet, ImageSet | None]]:
    t0 = time.perf_counter()
    sets = load_splits(cfg.data, cfg.model.img_size, progress=False)
    return time.perf_counter() - t0, sets


def augmentation_rate(task, batch: int, args, env: Env) -> float:
    """images/s of ``task.make_batch`` on random index batches, as the engine draws them."""
    g = torch.Generator(device=env.device).manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, task.n_train, (batch,), device=env.device)
        task.make_batch(idx, g)

    return images_per_s(step, batch, args.seconds, args.warmup, env.device)


def model_rate(task, cfg: Config, env: Env, pretrain: bool, args, run_dir: Path) -> float:
    """images/s of one optimiser step of the default model on a pre-made batch."""
    st = cfg.pretrain if pretrain else cfg.finetune
    g = torch.Generator(device=env.device).manual_seed(0)
    batch = task.make_batch(torch.arange(st.batch_size, device=env.device), g)
    model = vitmim_model(cfg, getattr(task, "num_classes", 0), pretrain)
    step = vitmim_step(PremadeTask(task, batch), model, st, cfg, env, run_dir)
    return images_per_s(step, st.batch_size, args.seconds, args.warmup, env.device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument(
        "--classes", type=int, default=0, help="classes to cache (default 0 = the whole archive)"
    )
    args = p.parse_args()
    cfg, env = setup(args)
    with temp_dir("vitmim-cache-bench-") as tmp:
        cfg.data.cache_dir, cfg.data.classes = tmp, args.classes or None
        build_s, _ = timed_load(cfg)
        reopen_s, (train_set, val_set) = timed_load(cfg)
        n_val = len(val_set) if val_set is not None else 0
        print(
            f"cache: {len(train_set)} train + {n_val} val images of "
            f"{len(train_set.classes)} classes; built in {build_s:.1f} s, "
            f"reopened in {reopen_s:.2f} s",
            flush=True,
        )
        rows = []
        for pretrain in (False, True):
            task = (
                PretrainTask(train_set, val_set, cfg, env, Path(tmp))
                if pretrain
                else FinetuneTask(train_set, val_set, cfg, env)
            )
            st = cfg.pretrain if pretrain else cfg.finetune
            aug = augmentation_rate(task, st.batch_size, args, env)
            model = model_rate(task, cfg, env, pretrain, args, Path(tmp))
            rows.append(("pretrain" if pretrain else "finetune", aug, model))
            del task
    print(f"\n{'images/s':<10} {'augmentation':>13} {'model step':>11} {'ratio':>8}")
    for name, aug, model in rows:
        print(f"{name:<10} {aug:>13.0f} {model:>11.1f} {aug / model:>7.1f}x")
    print(f"cache build {build_s:.1f} s (target <= 60), reopen {reopen_s:.2f} s (target <= 3)")


if __name__ == "__main__":
    main()
