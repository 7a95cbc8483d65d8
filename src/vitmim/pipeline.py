"""``vitmim run``: pre-train -> fine-tune, the scratch baseline, and a summary table."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

from vitmim import checkpoint
from vitmim.config import Config
from vitmim.engine import Env, last_record
from vitmim.errors import UserError
from vitmim.stages import finetune, pretrain


def stage_done(run_dir: Path) -> bool:
    """A run is finished when its final model has been written."""
    return (run_dir / "model.safetensors").exists() and (run_dir / "model.json").exists()


def run_stage(name: str, run_dir: Path, fn, resume: bool, **kwargs) -> dict:
    """Run one stage unless finished; report its metrics and wall time."""
    if stage_done(run_dir):
        print(f"== {name}: already finished in {run_dir}", flush=True)
        return {**last_record(run_dir / "metrics.jsonl"), "wall_s": None}
    print(f"== {name} -> {run_dir}", flush=True)
    t0 = time.time()
    has_ckpt = any((run_dir / "checkpoints").glob("step_*.json"))  # interrupted: continue it
    metrics = fn(run_dir=run_dir, resume=resume or has_ckpt, **kwargs)
    return {**metrics, "wall_s": time.time() - t0}


# scratch baselines at equal total compute: their run folder under ``vitmim run --out`` per measure
EQUAL_COMPUTE_DIRS = {"steps": "scratch_long", "flops": "scratch_flops"}


def equal_compute(cfg: Config, by: str = "steps") -> Config:
    """``cfg`` with fine-tune epochs raised so that scratch trains as much as pre-train +
    fine-tune together, counted ``by`` optimisation steps or by training FLOPs.

    Steps flatter scratch when a pre-training step is cheaper than a fine-tuning step (the
    visible-token fast path encodes a quarter of the tokens at 75 % masking); FLOPs weigh each
    stage's images by its model's forward FLOPs per image (torch's FLOP counter)."""
    from vitmim.data import label_subset, load_splits
    from vitmim.stages import training_flops_per_image
    train, _ = load_splits(cfg.data, cfg.model.img_size, progress=False)
    pre_steps = (len(train) // cfg.pretrain.batch_size) * cfg.pretrain.epochs  # as the Trainer
    n_labelled = len(label_subset(train.labels, cfg.data.label_fraction, cfg.finetune.seed))
    per_epoch = n_labelled // cfg.finetune.batch_size
    if per_epoch == 0:
        raise UserError(f"config key finetune.batch_size: {cfg.finetune.batch_size} is larger "
                        f"than the {n_labelled} labelled training images")
    if by == "flops":  # pre-training expressed in fine-tune steps of equal FLOPs
        pre_flops, ft_flops = training_flops_per_image(cfg, len(train.classes))
        pre_steps = pre_steps * cfg.pretrain.batch_size * pre_flops / (
            cfg.finetune.batch_size * ft_flops)
    long = copy.deepcopy(cfg)
    long.finetune.epochs = cfg.finetune.epochs + math.ceil(round(pre_steps / per_epoch, 6))
    return long


def run_all(cfg: Config, out: Path, env: Env, resume: bool = False,
            equal_compute_by: str | None = None) -> dict[str, dict]:
    """The main job. Folders: out/pretrain, out/finetune, out/scratch, and with
    ``equal_compute_by`` out/scratch_long (steps) or out/scratch_flops (FLOPs)."""
    results = {
        "pretrain": run_stage("pretrain", out / "pretrain", pretrain, resume, cfg=cfg, env=env),
        "finetune": run_stage("finetune (pre-trained)", out / "finetune", finetune, resume,
                              cfg=cfg, env=env, init=out / "pretrain"),
        "scratch": run_stage("scratch baseline (equal fine-tune epochs)", out / "scratch",
                             finetune, resume, cfg=cfg, env=env),
    }
    if equal_compute_by:
        long = equal_compute(cfg, equal_compute_by)
        name = EQUAL_COMPUTE_DIRS[equal_compute_by]
        results[name] = run_stage(
            f"scratch baseline (equal {equal_compute_by}: {long.finetune.epochs} epochs)",
            out / name, finetune, resume, cfg=long, env=env)
    if env.main:
        table = summary_table(results)
        print("\n" + table, flush=True)
        checkpoint.write_text(out / "summary.md", table + "\n")
        checkpoint.write_json(out / "summary.json", results)
    return results


def summary_table(results: dict[str, dict]) -> str:
    rows = ["| run | val top-1 % | val top-5 % | restoration L1 | PSNR dB | steps | wall s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        def f(key, fmt="{:.2f}", r=r):
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        rows.append(f"| {name} | {f('val_top1')} | {f('val_top5')} | {f('val_l1', '{:.4f}')} "
                    f"| {f('val_psnr')} | {f('step', '{}')} | {f('wall_s', '{:.0f}')} |")
    return "\n".join(rows)
