"""``vitmim run``: pre-train -> fine-tune, the scratch baseline, and a summary table."""

from __future__ import annotations

import copy
import time
from pathlib import Path

from vitmim import checkpoint
from vitmim.config import Config
from vitmim.engine import Env, last_record
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


def equal_compute_config(cfg: Config, pretrain_steps: int, finetune_steps_per_epoch: int
                         ) -> Config:
    """Scratch trained for as many optimisation steps as pre-train + fine-tune together."""
    long = copy.deepcopy(cfg)
    extra = -(-pretrain_steps // finetune_steps_per_epoch)  # ceil
    long.finetune.epochs = cfg.finetune.epochs + extra
    return long


def run_all(cfg: Config, out: Path, env: Env, resume: bool = False,
            equal_compute: bool = False) -> dict[str, dict]:
    """The main job. Folders: out/pretrain, out/finetune, out/scratch[, out/scratch_long]."""
    results = {
        "pretrain": run_stage("pretrain", out / "pretrain", pretrain, resume, cfg=cfg, env=env),
        "finetune": run_stage("finetune (pre-trained)", out / "finetune", finetune, resume,
                              cfg=cfg, env=env, init=out / "pretrain"),
        "scratch": run_stage("scratch baseline (equal fine-tune epochs)", out / "scratch",
                             finetune, resume, cfg=cfg, env=env),
    }
    if equal_compute:
        pre_steps = results["pretrain"]["step"]
        ft = results["finetune"]
        long = equal_compute_config(cfg, pre_steps, ft["step"] // cfg.finetune.epochs)
        results["scratch_long"] = run_stage(
            f"scratch baseline (equal compute: {long.finetune.epochs} epochs)",
            out / "scratch_long", finetune, resume, cfg=long, env=env)
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
