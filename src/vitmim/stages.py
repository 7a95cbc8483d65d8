"""The two training stages, each trained into its own run folder.

:func:`pretrain`: a restorer, from random weights. :func:`finetune`: a classifier, from a
pre-trained restorer's encoder or, as the scratch baseline, from random weights
(:func:`scratch_recipe`). Each checks that the folder fits (same stage, config, data, starting
weights), builds the model and its task (:mod:`vitmim.tasks`), trains it with the engine and
saves the final model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitmim import checkpoint
from vitmim.augment import normalize
from vitmim.config import Config, pretrain_data
from vitmim.data import load_splits
from vitmim.engine import Trainer, train
from vitmim.env import Env, derive_seed
from vitmim.errors import DataError
from vitmim.models import build_classifier, build_restorer, transfer
from vitmim.outputs import claim_run
from vitmim.runs import (
    absolute_data,
    best_keeper,
    check_same_config,
    check_same_data,
    check_same_init,
    check_same_stage,
    classifier_keys,
    open_run,
    read_model,
    restorer_keys,
    run_keys,
    run_lock,
    save_final,
)
from vitmim.tasks import FinetuneTask, PretrainTask


def forward_flops(model: nn.Module, example: tuple) -> float:
    """Forward FLOPs per image of ``model`` on ``example`` (torch's FLOP counter)."""
    counter = FlopCounterMode(display=False)
    model.eval()  # no batch-norm statistics updated by this probe
    with torch.no_grad(), counter:
        model(*example)
    model.train()
    return counter.get_total_flops() / example[0].shape[0]


def describe_model(model: nn.Module, example: tuple, name: str) -> dict:
    """Parameter count and forward FLOPs per image (torch's FLOP counter); printed at start-up."""
    params = sum(p.numel() for p in model.parameters())
    flops = forward_flops(model, example)
    print(
        f"{name}: {params / 1e6:.2f} M parameters, {flops / 1e9:.3f} GFLOPs per image", flush=True
    )
    return {"params": params, "flops_per_image": flops}


def pretrain(
    cfg: Config, run_dir: Path, env: Env, resume: bool = False, progress: bool = True
) -> dict:
    """Pre-train a restorer in ``run_dir``; returns the last epoch's metrics."""
    cfg = absolute_data(cfg)
    pool = pretrain_data(cfg)
    claim_run(run_dir, inputs=[pool.path])
    check_same_stage(run_dir, "pretrain")
    check_same_config(run_dir, cfg, restorer_keys)
    train_set, val_set = load_splits(pool, cfg.model.img_size, progress=progress and env.main)
    check_same_data(run_dir, train_set.fingerprint)
    torch.manual_seed(derive_seed(cfg.pretrain.seed, 0))  # same initial weights in every run
    model = build_restorer(cfg.model, cfg.pretrain)
    task = PretrainTask(train_set, val_set, cfg, env, run_dir)
    x = task.val_x[:2].cpu()
    info = describe_model(model, (x, task.val_mask[:2].cpu()), "restorer") if env.main else {}
    with run_lock(run_dir, env):
        trainer = Trainer(
            task,
            model,
            cfg.pretrain,
            run_dir=run_dir,
            env=env,
            stage="pretrain",
            checkpoint_every=cfg.checkpoint_every,
            compile=cfg.compile,
            progress=progress,
            keep_best=best_keeper(run_dir, "pretrain", "restorer", cfg, train_set),
        )
        metrics = train(
            trainer,
            resume,
            lambda: open_run(
                run_dir,
                cfg,
                env,
                train_set,
                # the images it read: the pool's, not those of fine-tuning (data.path)
                {
                    "stage": "pretrain",
                    "model": info,
                    "data": {"path": pool.path, "fingerprint": train_set.fingerprint},
                },
            ),
        )
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


def finetune(
    cfg: Config,
    run_dir: Path,
    env: Env,
    init: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune a classifier (from ``init`` or from scratch) in ``run_dir``."""
    cfg = absolute_data(cfg if init else scratch_recipe(cfg))
    claim_run(run_dir, inputs=[cfg.data.path, *([init] if init else [])])
    check_same_stage(run_dir, "finetune")
    check_same_config(run_dir, cfg, run_keys if init else classifier_keys)
    train_set, val_set = load_splits(
        cfg.data, cfg.model.img_size, progress=progress and env.main, labelled="fine-tuning"
    )
    if (train_set.labels < 0).any():
        raise DataError(
            f"{cfg.data.path or 'data'}: fine-tuning needs labelled images "
            f"(source {cfg.data.source} has none)"
        )
    if len(train_set.classes) < 2:
        raise DataError(
            f"{cfg.data.path}: {len(train_set.classes)} class; a classifier needs at "
            f"least 2 (its accuracy would be 100 % by construction)"
        )
    check_same_data(run_dir, train_set.fingerprint)
    source, _, origin = read_model(init, described=False) if init else ({}, {}, None)
    init_sha256 = checkpoint.sha256(origin) if origin else None
    check_same_init(run_dir, init_sha256)
    torch.manual_seed(derive_seed(cfg.finetune.seed, 0))  # same initial weights in every run
    model = build_classifier(cfg.model, len(train_set.classes), cfg.finetune.drop_path)
    extra: dict = {
        "stage": "finetune",
        "init": str(init) if init else None,
        "init_sha256": init_sha256,
    }
    if init:
        report = transfer(source, model, str(origin))
        extra["transfer"] = {
            "new": report.new,
            "dropped": report.dropped,
            "copied": len(report.copied),
        }
        if env.main:
            print(report.summary(), flush=True)
    if env.main:
        x = normalize(train_set.images[:2])
        extra["model"] = describe_model(model, (x,), "classifier")
    task = FinetuneTask(train_set, val_set, cfg, env)
    extra["labelled_images"] = task.n_train  # the share of train_images it learns from
    with run_lock(run_dir, env):
        trainer = Trainer(
            task,
            model,
            cfg.finetune,
            run_dir=run_dir,
            env=env,
            stage="finetune",
            checkpoint_every=cfg.checkpoint_every,
            compile=cfg.compile,
            progress=progress,
            keep_best=best_keeper(run_dir, "finetune", "classifier", cfg, train_set),
        )
        metrics = train(trainer, resume, lambda: open_run(run_dir, cfg, env, train_set, extra))
        if env.main:
            save_final(run_dir, trainer.eval_model(), "classifier", cfg, train_set, metrics)
        env.barrier()  # under torchrun no process reads the final model before it is written
    return metrics
