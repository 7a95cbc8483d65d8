"""One training loop for both stages.

What differs between pre-training and fine-tuning (how a batch is made, the loss, the evaluation)
comes in through a :class:`Task`. The loop owns everything else: AdamW with warm-up + cosine,
layer-wise lr decay, bf16 autocast, EMA, DDP, checkpoints, exact resumption, divergence handling.

Exact resumption rests on one rule: every random draw of step ``t`` comes from generators seeded by
(seed, epoch) for the data order and (seed, t) for augmentation, masks and dropout. A checkpoint
therefore needs only weights, optimiser state and the step number.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm  # a widget in notebooks, text in a terminal

from vitmim import tracking
from vitmim.checkpoint import (
    flatten_optimizer,
    latest_checkpoint,
    save_checkpoint,
    unflatten_optimizer,
)
from vitmim.config import FinetuneConfig, StageConfig
from vitmim.env import Env, derive_seed
from vitmim.errors import CheckpointError, ConfigError, TrainingError, one_line
from vitmim.runs import BestKeeper, append_metrics, last_metrics, truncate_metrics

Batch = tuple[torch.Tensor, ...]


class Task(Protocol):
    """The stage-specific part of training."""

    n_train: int  # training examples per epoch

    def make_batch(self, idx: torch.Tensor, g: torch.Generator) -> Batch:
        """Global batch for example indices ``idx`` (augmented, masked...), on the device."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Scalar loss of ``model`` on (this process's share of) a batch."""

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Validation metrics after an epoch."""


def lr_at(step: int, total: int, warmup: int, st: StageConfig) -> float:
    """Linear warm-up to ``st.lr`` then cosine decay to ``st.min_lr``."""
    if step < warmup:
        return st.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return st.min_lr + (st.lr - st.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, st: StageConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and ``model.no_weight_decay()`` (position
    embeddings, mask tokens). A fine-tune stage with ``layer_decay`` < 1 trains a classifier, a
    :class:`~vitmim.models.vit.Backbone`: the lr of layer ``i`` is scaled by
    ``layer_decay ** (depth + 1 - i)``."""
    net: Any = model  # a Backbone when layer decay is on; any model with no_weight_decay()
    no_wd = net.no_weight_decay()
    layer_decay = st.layer_decay if isinstance(st, FinetuneConfig) else 1.0
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.ndim <= 1 or name in no_wd else st.weight_decay
        scale = 1.0
        if layer_decay < 1.0:
            scale = layer_decay ** (net.depth + 1 - net.layer_id(name))
        g = groups.setdefault((wd, scale), {"params": [], "weight_decay": wd, "lr_scale": scale})
        g["params"].append(p)
    return list(groups.values())


class EMA:
    """Exponential moving average of a model's floating-point state (other entries copied).

    The update is one multi-tensor lerp over every float tensor. It reads the live tensors of the
    model's ``state_dict``, captured once: ``load_state_dict`` copies into them in place."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.source = model.state_dict()  # detached views of the model's own tensors
        self.load({k: v.detach().clone() for k, v in self.source.items()})

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Take ``state`` (same keys as the model's state_dict) as the average."""
        self.state = state
        floats = [k for k, v in self.source.items() if v.is_floating_point()]
        others = [k for k in self.source if k not in set(floats)]
        self._floats = ([state[k] for k in floats], [self.source[k] for k in floats])
        self._others = ([state[k] for k in others], [self.source[k] for k in others])

    @torch.no_grad()
    def update(self) -> None:
        if self._floats[0]:
            torch._foreach_lerp_(*self._floats, 1.0 - self.decay)
        if self._others[0]:
            torch._foreach_copy_(*self._others)


def make_optimizer(
    model: nn.Module, st: StageConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`: the fused kernel on a GPU, multi-tensor ops elsewhere."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, st), lr=st.lr, betas=(0.9, 0.95), **fast)


class CompiledStep(NamedTuple):
    """The two halves of a training step as torch.compile made them (see
    :meth:`Trainer.compile_step`)."""

    make_batch: Callable[[torch.Tensor, torch.Generator], Batch]
    forward_backward: Callable[[Batch], torch.Tensor]


class Trainer:
    """Runs a :class:`Task` for ``st.epochs`` epochs in ``run_dir``, checkpointing as it goes.

    Args:
        task, model, st: what is trained (the stage's part, the module, the stage's config).
        run_dir: the run folder; checkpoints go to ``run_dir/checkpoints``.
        env: device, precision and place among the processes.
        stage: the stage's name (``pretrain``, ``finetune``): the config section named in
            errors, the checkpoint's owner, the label of every record.
        checkpoint_every: save every this many steps within an epoch too (0: at epoch ends only).
        compile: torch.compile the step; training falls back to eager when compiling fails.
        progress: a progress bar and one line per epoch.
        keep_best: keeps the epoch with the best validation metric beside the last (None: the
            last only).
    """

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        st: StageConfig,
        *,
        run_dir: Path,
        env: Env,
        stage: str,
        checkpoint_every: int = 0,
        compile: bool = False,
        progress: bool = True,
        keep_best: BestKeeper | None = None,
    ):
        self.task, self.model, self.st, self.env = task, model.to(env.device), st, env
        self.keep_best = keep_best
        self.run_dir, self.stage, self.progress = Path(run_dir), stage, progress
        self.spe = task.n_train // st.batch_size  # steps per epoch (last partial batch dropped)
        if self.spe == 0:
            raise ConfigError(
                f"config key {stage}.batch_size: {st.batch_size} is larger than the "
                f"{task.n_train} training images"
            )
        if st.batch_size % env.world:  # equal shares keep the averaged gradient exact
            raise ConfigError(
                f"config key {stage}.batch_size: {st.batch_size} does not split "
                f"evenly over {env.world} processes"
            )
        self.total = self.spe * st.epochs
        self.warmup = int(st.warmup_epochs * self.spe)
        self.checkpoint_every = checkpoint_every
        self.opt = make_optimizer(self.model, st, env.device)
        self.ema = EMA(self.model, st.ema) if st.ema > 0 else None
        self.step, self.lr_factor = 0, 1.0
        self.loss_sum = torch.zeros((), device=env.device)  # this epoch's summed step losses
        net = self.model
        if env.world > 1:
            dev_ids = [env.device.index] if env.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=dev_ids)
        self.net = net
        # None: eager. Dropped for good when its first step fails to compile.
        self.compiled = self.compile_step() if compile else None
        self.compiling = compile  # until a first compiled step has run

    def compile_step(self) -> CompiledStep:
        """torch.compile the step: the batch (each draw from the generator splits it into
        graphs, whose element-wise ops fuse) and the forward + loss + backward (on one GPU
        replayed as CUDA graphs: one launch each). The optimiser is the fused AdamW kernel
        already."""
        # the batch code's cached constants are pure functions of their arguments
        warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools")
        # CUDA graphs cannot hold DDP's gradient all-reduce, which runs inside the backward
        graphs = self.env.device.type == "cuda" and self.env.world == 1
        mode = "reduce-overhead" if graphs else None
        return CompiledStep(
            torch.compile(self.task.make_batch),
            torch.compile(self.eager_forward_backward, mode=mode),
        )

    # -- state ---------------------------------------------------------------------------------
    def save(self) -> None:
        """Checkpoint (main process only): model, EMA and optimiser tensors, and the step, the
        lr factor and the epoch's summed loss, from which training continues bit-exactly."""
        if not self.env.main:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state.items()})
        opt_tensors, opt_meta = flatten_optimizer(self.opt)
        meta = {
            "stage": self.stage,
            "step": self.step,
            "epoch": self.step / self.spe,
            "lr_factor": self.lr_factor,
            "loss_sum": self.loss_sum.item(),
            "optimizer": opt_meta,
        }
        save_checkpoint(self.run_dir, self.step, {**tensors, **opt_tensors}, meta)

    def restore(self) -> bool:
        """Load the newest good checkpoint; False when there is none."""
        found = latest_checkpoint(self.run_dir)
        if found is None:
            return False
        tensors, meta = found
        if meta.get("stage") != self.stage:
            raise CheckpointError(
                f"{self.run_dir}: holds a {meta.get('stage')} run, not {self.stage}"
            )
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_sd)
        except RuntimeError as e:
            raise CheckpointError(
                f"{self.run_dir}: checkpoint does not fit this model "
                f"({str(e).splitlines()[1].strip()})"
            ) from None
        if self.ema:
            self.ema.load(
                {k[4:]: v.to(self.env.device) for k, v in tensors.items() if k.startswith("ema.")}
            )
        self.opt.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        self.step, self.lr_factor = meta["step"], meta.get("lr_factor", 1.0)
        self.loss_sum = torch.tensor(meta.get("loss_sum", 0.0), device=self.env.device)
        truncate_metrics(self.run_dir, self.step)
        return True

    def eval_model(self) -> nn.Module:
        """The weights to evaluate and ship: the EMA when enabled."""
        if not self.ema:
            return self.model
        shadow = copy.deepcopy(self.model)
        shadow.load_state_dict(self.ema.state)
        return shadow

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train until step ``total``; returns the last epoch's metrics (empty when no epoch was
        left to train). A loss or weight that stops being finite is handled by
        :meth:`roll_back`."""
        last: dict[str, float] = {}
        while self.step < self.total:
            epoch, start = self.step // self.spe, self.step
            t0, cpu0 = time.time(), time.process_time()
            if self.train_epoch(epoch):
                last = self.end_epoch(epoch, self.loss_sum.item() / self.spe, t0, cpu0, start)
            else:
                self.roll_back()
        return last

    def train_epoch(self, epoch: int) -> bool:
        """The steps left in ``epoch``, a checkpoint every ``checkpoint_every`` steps; False, with
        nothing saved, when a check before a checkpoint or at the epoch's end finds a non-finite
        loss or weight."""
        st, env = self.st, self.env
        end = (epoch + 1) * self.spe
        order = torch.randperm(
            self.task.n_train,
            generator=torch.Generator().manual_seed(derive_seed(st.seed, 1, epoch)),
        ).to(env.device)  # one copy per epoch
        if self.step % self.spe == 0:  # else resumed mid-epoch: loss_sum came with the state
            self.loss_sum = torch.zeros((), device=env.device)
        with tqdm(
            total=self.spe,
            initial=self.step % self.spe,
            leave=False,
            desc=f"{self.stage} {epoch + 1}/{st.epochs}",
            disable=not (self.progress and env.main),
        ) as bar:  # cleared on errors too
            self.net.train()
            while self.step < end:
                i = self.step % self.spe
                loss = self.train_step(order[i * st.batch_size : (i + 1) * st.batch_size])
                self.loss_sum += loss.detach()
                self.step += 1
                bar.update()
                tracking.on_step(self, loss)
                due = self.checkpoint_every and self.step % self.checkpoint_every == 0
                if not (due or self.step == end):
                    continue
                # each process saw its share of every batch; the mean of (common sum + own
                # share) over processes is the global sum, so a sum restored from a checkpoint
                # stays exact
                self.loss_sum = env.mean(self.loss_sum)
                if not self.check_finite():
                    return False
                # at the epoch's end, end_epoch saves after writing the epoch's record, so no
                # checkpoint stands for an epoch whose record is missing
                if self.step < end:
                    self.save()
        return True

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimiser step on examples ``idx``; returns the loss as a device tensor (reading
        it would make the host wait for the device)."""
        if not self.compiling:
            return self.step_once(idx)
        try:
            loss = self.step_once(idx)
        except Exception as e:  # torch.compile compiles on the first call and fails there
            print(
                f"{self.stage}: torch.compile failed ({one_line(e)}); training without compile",
                file=sys.stderr,
                flush=True,
            )
            self.compiled = None
            loss = self.step_once(idx)  # redone from the same seeds: nothing was stepped
        self.compiling = False
        return loss

    def step_once(self, idx: torch.Tensor) -> torch.Tensor:
        """Seeds of step ``self.step``, batch, learning rate, forward + loss + backward, gradient
        clipping, AdamW, EMA; returns the loss as a device tensor."""
        env, st = self.env, self.st
        g = torch.Generator(device=env.device).manual_seed(derive_seed(st.seed, 2, self.step))
        torch.manual_seed(derive_seed(st.seed, 3, self.step))  # dropout, drop-path, mixup
        batch = self.make_batch(idx.to(env.device), g)
        if env.world > 1:  # every process builds the global batch, then takes its share
            batch = tuple(t[env.rank :: env.world] for t in batch)
        lr = lr_at(self.step, self.total, self.warmup, st) * self.lr_factor
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_backward(batch)
        if st.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), st.grad_clip)
        self.opt.step()
        if self.ema:
            self.ema.update()
        return loss

    def make_batch(self, idx: torch.Tensor, g: torch.Generator) -> Batch:
        """The task's batch of examples ``idx``, compiled where :attr:`compiled` is set."""
        if self.compiled is None:
            return self.task.make_batch(idx, g)
        return self.compiled.make_batch(idx, g)

    def forward_backward(self, batch: Batch) -> torch.Tensor:
        """Loss of ``batch`` and its gradients, compiled where :attr:`compiled` is set."""
        if self.compiled is None:
            return self.eager_forward_backward(batch)
        if self.env.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are free
        return self.compiled.forward_backward(batch)

    def eager_forward_backward(self, batch: Batch) -> torch.Tensor:
        """Loss of ``batch`` (bf16 autocast where enabled) and its gradients; what
        ``compile: true`` hands to torch.compile as one function."""
        with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.env.amp):
            loss = self.task.loss(self.net, batch)
        loss.backward()
        return loss.detach()

    def check_finite(self) -> bool:
        """Whether the epoch's losses and the weights to be saved are finite (an update can
        overflow the weights although the loss that led to it was finite)."""
        # the largest |weight| of each tensor is finite exactly when all of its weights are
        largest = torch._foreach_norm([p.detach() for p in self.model.parameters()], float("inf"))
        return bool(torch.stack([self.loss_sum.float(), *largest]).isfinite().all().item())

    def roll_back(self) -> None:
        """After a non-finite loss or weight: with ``nan_policy: rollback``, back to the newest
        checkpoint at half the learning rate; otherwise (or when no checkpoint is left, or the
        rate would fall below a thousandth) the run stops with an error, its last good checkpoint
        untouched."""
        factor = self.lr_factor * 0.5
        if self.st.nan_policy == "rollback" and factor >= 1e-3 and self.restore():
            self.lr_factor = min(factor, self.lr_factor)  # restore() brought back the saved one
            print(
                f"{self.stage}: non-finite loss; rolled back to step {self.step} and "
                f"halved the learning rate (x{self.lr_factor:g})",
                flush=True,
            )
            return
        raise TrainingError(
            f"{self.stage}: loss became non-finite at step {self.step}; the last good "
            f"checkpoint in {self.run_dir / 'checkpoints'} is untouched (lower "
            f"{self.stage}.lr, or set {self.stage}.nan_policy=rollback)"
        )

    def end_epoch(self, epoch: int, train_loss: float, t0: float, cpu0: float, start: int) -> dict:
        dt = time.time() - t0
        record = {
            "stage": self.stage,
            "epoch": epoch + 1,
            "step": self.step,
            "lr": lr_at(self.step - 1, self.total, self.warmup, self.st) * self.lr_factor,
            "train_loss": train_loss,
            "images_per_s": (self.step - start) * self.st.batch_size / max(dt, 1e-9),
        }
        if self.env.main:
            self.net.eval()
            with (
                torch.no_grad(),
                torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.env.amp),
            ):
                shipped = self.eval_model()
                record.update(self.task.evaluate(shipped, epoch + 1))
            record["time_s"] = time.time() - t0
            # CPU seconds of every thread of this process: what the epoch cost the machine,
            # which a busy machine does not inflate the way it inflates time_s
            record["cpu_s"] = time.process_time() - cpu0
            append_metrics(self.run_dir, record)
            if self.keep_best:
                self.keep_best.update(shipped, record)
            tracking.on_epoch(self, record)
            if self.progress:
                print(format_record(record), flush=True)
        self.save()
        self.env.barrier()
        return record


def train(trainer: Trainer, resume: bool, on_start=None) -> dict[str, float]:
    """Fit with resume handling; returns the last epoch's metrics.

    ``on_start()`` (writing the run's config, say) runs once the folder is known to fit: a
    refused run leaves the folder as it was.
    """
    if resume:
        trainer.restore()
    elif any((trainer.run_dir / "checkpoints").glob("step_*.json")):
        raise CheckpointError(
            f"{trainer.run_dir}: already holds a run; pass --resume to continue it "
            f"or choose another --out"
        )
    if on_start is not None:
        on_start()
    if trainer.keep_best and trainer.env.main:
        trainer.keep_best.start(trainer.step)
    trainer.env.barrier()  # every process has looked before the main one writes step 0
    if trainer.step == 0:
        if trainer.env.main:  # records of an earlier run whose checkpoints are gone
            truncate_metrics(trainer.run_dir, 0)
        trainer.save()  # step-0 checkpoint: a rollback target before the first epoch ends
    with tracking.stage_run(trainer):
        return trainer.fit() or last_metrics(trainer.run_dir)


def format_record(r: dict) -> str:
    skip = {"stage", "step"}
    parts = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in r.items()
        if k not in skip
    ]
    return f"[{r['stage']}] " + " ".join(parts)
