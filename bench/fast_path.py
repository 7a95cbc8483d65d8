"""Pre-training fast path (encoder sees visible tokens only, MAE style) against the full-token
path (SimMIM style): training images/s, and optionally TIN-10 fine-tune top-1 after each.

Defaults: mask ratio 0.6, mask cell 8 px = ViT patch 8 px. Speed is the engine's step with the
real pre-training task (batches from the cache). ``--accuracy`` then pre-trains and fine-tunes
one model per path (``vitmim run``'s first two stages) and prints both top-1 figures.

    VITMIM_DATA=/path/tiny-imagenet-200.zip python bench/fast_path.py [--accuracy \\
        --pretrain-epochs 2 --finetune-epochs 2 --out runs/fastpath]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from _common import add_common_args, compare, setup, temp_dir
from throughput import vitmim_model, vitmim_step

from vitmim.config import Config
from vitmim.data import load_splits
from vitmim.env import Env
from vitmim.stages import finetune, pretrain
from vitmim.tasks import PretrainTask


def path_config(cfg: Config, fast: bool) -> Config:
    out = copy.deepcopy(cfg)
    out.pretrain.fast = fast
    return out


def speed_step(cfg: Config, env: Env, sets, run_dir: Path):
    """One pre-training step of the engine with the real task (augment + mask + model)."""
    task = PretrainTask(*sets, cfg, env, run_dir)
    return vitmim_step(task, vitmim_model(cfg, 0, True), cfg.pretrain, cfg, env, run_dir)


def accuracy(cfg: Config, env: Env, out: Path) -> dict[str, float]:
    """Pre-train in out/pretrain, fine-tune from it in out/finetune; the final metrics."""
    pre = pretrain(cfg, out / "pretrain", env, progress=False)
    ft = finetune(cfg, out / "finetune", env, init=out / "pretrain", progress=False)
    return {"val_loss": pre.get("val_loss", float("nan")), "val_top1": ft.get("val_top1", 0.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="also pre-train + fine-tune once per path and report TIN-10 top-1",
    )
    p.add_argument("--pretrain-epochs", type=int, help="with --accuracy (default: the config's)")
    p.add_argument("--finetune-epochs", type=int, help="with --accuracy (default: the config's)")
    p.add_argument("--out", help="with --accuracy: folder for the runs (default: a temp folder)")
    args = p.parse_args()
    args.overrides = [
        "pretrain.mask_ratio=0.6",
        "pretrain.mask_patch=8",
        "model.patch_size=8",
        *args.overrides,
    ]
    cfg, env = setup(args)
    if cfg.pretrain.mask_patch % cfg.model.patch_size:
        raise SystemExit("the fast path needs pretrain.mask_patch % model.patch_size == 0")
    sets = load_splits(cfg.data, cfg.model.img_size, progress=False)
    with temp_dir("vitmim-fastpath-") as tmp:
        steps = {
            fast: speed_step(path_config(cfg, fast), env, sets, Path(tmp)) for fast in (False, True)
        }
        rates = compare(steps, cfg.pretrain.batch_size, 2 * args.seconds, args.warmup, env.device)
    print(
        f"pre-training images/s at mask_ratio {cfg.pretrain.mask_ratio}, mask_patch "
        f"{cfg.pretrain.mask_patch}, patch {cfg.model.patch_size}: full path "
        f"{rates[False]:.1f}, fast path {rates[True]:.1f}, ratio "
        f"{rates[True] / rates[False]:.2f}x (target >= 1.8x)",
        flush=True,
    )
    if not args.accuracy:
        return
    if args.pretrain_epochs:
        cfg.pretrain.epochs = args.pretrain_epochs
    if args.finetune_epochs:
        cfg.finetune.epochs = args.finetune_epochs
    with temp_dir("vitmim-fastpath-runs-") as tmp:
        out = Path(args.out or tmp)
        acc = {
            fast: accuracy(path_config(cfg, fast), env, out / ("fast" if fast else "full"))
            for fast in (False, True)
        }
    print(
        f"TIN-{len(sets[0].classes)} after {cfg.pretrain.epochs} pre-train + "
        f"{cfg.finetune.epochs} fine-tune epochs: val top-1 full path "
        f"{acc[False]['val_top1']:.2f} %, fast path {acc[True]['val_top1']:.2f} % "
        f"(difference {acc[True]['val_top1'] - acc[False]['val_top1']:+.2f} points; "
        f"target within 1)"
    )


if __name__ == "__main__":
    main()
