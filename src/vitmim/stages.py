"""The two stages as tasks for the engine, and the run folders they live in.

``pretrain``: restorer learns to fill masked cells of training images (no labels).
``finetune``: classifier, its backbone optionally initialised from a pre-trained restorer.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitmim import checkpoint
from vitmim.augment import augment, denormalize, mix, normalize
from vitmim.baselines import BASELINES, is_tuned
from vitmim.config import Config, pretrain_data, tuned_scratch
from vitmim.data import ImageSet, load_splits, train_count, train_fingerprint
from vitmim.engine import Env, Trainer, derive_seed, train
from vitmim.errors import DataError, UserError
from vitmim.masking import random_mask
from vitmim.models import build_classifier, build_restorer, transfer
from vitmim.models.restorer import (
    forward_loss,
    random_masking,
    restoration_metrics,
    restored_image,
    shown_restoration,
)
from vitmim.outputs import claim_run
from vitmim.probes import probe_random_init, probe_run
from vitmim.runs import (
    absolute_data,
    best_keeper,
    check_same_config,
    check_same_data,
    check_same_init,
    check_same_stage,
    finished,
    last_metrics,
    open_run,
    read_model,
    restorer_keys,
    run_keys,
    run_lock,
    save_final,
)

EVAL_IMAGES = 512  # validation images used for restoration metrics
GRID_IMAGES = 8  # images shown in reconstruction grids


class PretrainTask:
    """Masked-pixel restoration on training images."""

    def __init__(
        self, train_set: ImageSet, val_set: ImageSet | None, cfg: Config, env: Env, run_dir: Path
    ):
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.images = train_set.images.to(env.device)  # uint8, resident on the device
        self.n_train = len(train_set)
        held_out = val_set if val_set is not None and len(val_set) else train_set
        self.val_x = normalize(held_out.images[:EVAL_IMAGES].to(env.device))
        g = torch.Generator(device=env.device).manual_seed(derive_seed(cfg.pretrain.seed, 4))
        self.val_mask = self.mask(len(self.val_x), g)  # the same masks every epoch

    def mask(self, n: int, g: torch.Generator) -> torch.Tensor:
        return random_masking(n, self.cfg.model.img_size, self.cfg.pretrain, g, self.env.device)

    def make_batch(self, idx: torch.Tensor, g: torch.Generator):
        x = augment(self.images[idx], self.cfg.pretrain.augment, g)
        return x, self.mask(len(idx), g)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, mask = batch
        return forward_loss(model(x, mask), x, mask, self.cfg.pretrain, self.cfg.model.patch_size)

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        metrics = restoration_metrics(model, self.val_x, self.val_mask, self.cfg)
        x, m = self.val_x[:GRID_IMAGES], self.val_mask[:GRID_IMAGES]
        save_reconstruction_grid(
            self.run_dir / "images" / f"recon_epoch{epoch:03d}.png",
            x,
            m,
            restored_image(model, x, m, self.cfg),
        )
        return metrics


RECON_TILE = 128  # px per shown image: 64 px tiles are too small to judge a restoration
RECON_COLUMNS = ("original", "masked", "restored")


def save_reconstruction_grid(
    path: Path, x: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, tile: int = RECON_TILE
) -> None:
    """PNG: a title row (original | masked | restored), then one row per image, each shown at
    ``tile`` px (nearest-neighbour: the pixels stay visible). Masked cells are drawn grey;
    restored ones are :func:`~vitmim.models.restorer.shown_restoration`, the image the
    restoration figures (``val_psnr``, ``val_pixel_l1``) score.
    ``x``, ``pred``: (B, 3, H, W) normalised; ``mask``: (B, 1, H, W), 1 = masked."""
    from PIL import Image, ImageDraw, ImageFont  # on use, like every image writer here

    x, mask, pred = x.float().cpu(), mask.float().cpu(), pred.float().cpu()
    orig = denormalize(x)
    cols = [orig, orig * (1 - mask) + 0.5 * mask, shown_restoration(x, mask, pred)]
    pad, title = 4, 24
    sheet = Image.new("RGB", (3 * tile + 4 * pad, title + len(x) * (tile + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for c, (name, images) in enumerate(zip(RECON_COLUMNS, cols)):
        left = pad + c * (tile + pad)
        draw.text((left + tile // 2, title // 2), name, fill="black", font=font, anchor="mm")
        for r, img in enumerate(images):
            arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            shown = Image.fromarray(arr).resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(shown, (left, title + r * (tile + pad)))
    checkpoint.atomic_write(path, lambda p: sheet.save(p, format="png"))


# ---------------------------------------------------------------------------------------------
# label fraction: which training labels the classifier sees (fine-tuning and its baselines)


def label_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted (M,) int64 indices keeping round(fraction * n_c) (>= 1) images of each class c.

    ``labels``: (N,) int; entries < 0 (unlabelled) are never kept. The choice depends only
    on ``seed`` and the labels.
    """
    if not 0.0 < fraction <= 1.0:
        raise UserError(
            f"config key data.label_fraction: expected a number in (0, 1], got {fraction}"
        )
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in torch.unique(labels).tolist():
        if c < 0:
            continue
        idx = torch.nonzero(labels == c).flatten()
        k = max(1, round(fraction * len(idx)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    if not keep:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(keep)).values.to(torch.int64)


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
        return F.cross_entropy(
            model(x).float(), y, label_smoothing=self.cfg.finetune.label_smoothing
        )

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if self.val is None:
            return {}
        return classification_metrics(model, self.val, self.env.device)


@torch.no_grad()
def classification_metrics(
    model: nn.Module, data: ImageSet, device: torch.device, batch: int = 500
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over a labelled set."""
    model.eval()
    top1 = top5 = loss = 0.0
    for i in range(0, len(data), batch):
        x = normalize(data.images[i : i + batch].to(device))
        y = data.labels[i : i + batch].to(device)
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(1).sum().item()
    n = max(len(data), 1)
    return {"val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n, "val_loss": loss / n}


# ---------------------------------------------------------------------------------------------
# compute


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
        mask = random_mask(
            2,
            size,
            cfg.pretrain.mask_patch,
            cfg.pretrain.mask_ratio,
            torch.Generator().manual_seed(0),
            torch.device("cpu"),
        )
        restorer = forward_flops(build_restorer(cfg.model, cfg.pretrain), (x, mask))
        classifier = forward_flops(build_classifier(cfg.model, num_classes, 0.0), (x,))
    return restorer, classifier


def describe_model(model: nn.Module, example: tuple, name: str) -> dict:
    """Parameter count and forward FLOPs per image (torch's FLOP counter); printed at start-up."""
    params = sum(p.numel() for p in model.parameters())
    flops = forward_flops(model, example)
    print(
        f"{name}: {params / 1e6:.2f} M parameters, {flops / 1e9:.3f} GFLOPs per image", flush=True
    )
    return {"params": params, "flops_per_image": flops}


# ---------------------------------------------------------------------------------------------
# the two stages, each in its run folder


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
    check_same_config(run_dir, cfg)
    train_set, val_set = load_splits(
        cfg.data, cfg.model.img_size, progress=progress and env.main, labelled="fine-tuning"
    )
    if (train_set.labels < 0).any():
        raise UserError(
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


# ---------------------------------------------------------------------------------------------
# the run: pre-train -> fine-tune -> scratch baselines

# stage -> its folder under ``vitmim run --out``; the baselines' come from their registry
RUN_DIRS = {
    "pretrain": "pretrain",
    "finetune": "finetune",
    **{name: b.folder for name, b in BASELINES.items()},
}
NO_TUNED_RECIPE = "no tuned recipe set (config section scratch)"


def stage_dirname(folder: str, label_fraction: float | None) -> str:
    """``finetune`` -> ``finetune_lf0.1`` for a fine-tune on 10 % of the labels."""
    return folder if label_fraction in (None, 1.0) else f"{folder}_lf{label_fraction:g}"


def run_stage(
    name: str,
    run_dir: Path,
    fn,
    resume: bool,
    cfg: Config,
    fingerprint: str,
    note: str = "",
    **kwargs,
) -> dict:
    """Run one stage unless finished (with this config and the data of ``fingerprint``); report
    its metrics and wall time. ``note`` ends the line announcing the stage."""
    if finished(run_dir):
        check_same_config(run_dir, cfg, restorer_keys if fn is pretrain else run_keys)
        check_same_data(run_dir, fingerprint)
        print(f"== {name}: already finished in {run_dir}", flush=True)
        return {**last_metrics(run_dir), "wall_s": None}
    print(f"== {name} -> {run_dir}{note}", flush=True)
    t0 = time.time()
    has_ckpt = any((run_dir / "checkpoints").glob("step_*.json"))  # interrupted: continue it
    metrics = fn(cfg=cfg, run_dir=run_dir, resume=resume or has_ckpt, **kwargs)
    return {**metrics, "wall_s": time.time() - t0}


def eta_text(seconds: float) -> str:
    """`` (ETA 16:05, about 12 min left)`` for work expected to take ``seconds`` more."""
    at = time.strftime("%H:%M", time.localtime(time.time() + seconds))
    left = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return f" (ETA {at}, about {left} left)"


def steps_per_epoch(cfg: Config, train_set: ImageSet) -> tuple[int, int]:
    """Optimisation steps per epoch of pre-training (on its pool) and of fine-tuning (on the
    labelled share of ``train_set``), as the Trainer counts them: the last partial batch is
    dropped."""
    n_labelled = len(label_subset(train_set.labels, cfg.data.label_fraction, cfg.finetune.seed))
    pool = pretrain_data(cfg)
    n_pool = len(train_set) if pool is cfg.data else train_count(pool, cfg.model.img_size)
    return n_pool // cfg.pretrain.batch_size, n_labelled // cfg.finetune.batch_size


def equal_compute(cfg: Config, by: str = "steps", train_set: ImageSet | None = None) -> Config:
    """``cfg`` with fine-tune epochs raised so that scratch trains as much as pre-train +
    fine-tune together, counted ``by`` optimisation steps or by training FLOPs.

    Steps flatter scratch when a pre-training step is cheaper than a fine-tuning step (the
    visible-token fast path encodes a quarter of the tokens at 75 % masking); FLOPs weigh each
    stage's images by its model's forward FLOPs per image (torch's FLOP counter). ``train_set``:
    the training split of ``cfg.data`` where the caller holds it already."""
    if train_set is None:
        train_set, _ = load_splits(cfg.data, cfg.model.img_size, progress=False)
    pre_per_epoch, per_epoch = steps_per_epoch(cfg, train_set)
    pre_steps: float = pre_per_epoch * cfg.pretrain.epochs
    if per_epoch == 0:
        n_labelled = len(label_subset(train_set.labels, cfg.data.label_fraction, cfg.finetune.seed))
        raise UserError(
            f"config key finetune.batch_size: {cfg.finetune.batch_size} is larger "
            f"than the {n_labelled} labelled training images"
        )
    if by == "flops":  # pre-training expressed in fine-tune steps of equal FLOPs
        pre_flops, ft_flops = training_flops_per_image(cfg, len(train_set.classes))
        pre_steps = (
            pre_steps * cfg.pretrain.batch_size * pre_flops / (cfg.finetune.batch_size * ft_flops)
        )
    long = copy.deepcopy(cfg)
    long.finetune.epochs = cfg.finetune.epochs + math.ceil(round(pre_steps / per_epoch, 6))
    return long


def without_tuned_recipe(cfg: Config) -> Config:
    """``cfg`` with the ``scratch`` section emptied: it shapes only the ``scratch_tuned`` stage,
    so setting or changing it later adds that stage without touching the finished others."""
    if not cfg.scratch:
        return cfg
    out = copy.deepcopy(cfg)
    out.scratch = {}
    return out


def _recipe(cfg: Config, kind: str, label_fraction: float | None) -> Config:
    """The fine-tune recipe of a classifier stage, but for an equal-compute baseline's length."""
    if label_fraction is not None:
        cfg = copy.deepcopy(cfg)
        cfg.data.label_fraction = label_fraction
    if is_tuned(kind):
        return scratch_recipe(tuned_scratch(cfg))
    cfg = without_tuned_recipe(cfg)
    return cfg if kind == "finetune" else scratch_recipe(cfg)


def _classifier_stage(
    cfg: Config, kind: str, label_fraction: float | None, train_set: ImageSet
) -> tuple[Config, str]:
    """The config of a fine-tune stage (pre-trained or a baseline) and its printed name."""
    cfg = _recipe(cfg, kind, label_fraction)
    labels = f", {label_fraction:.0%} labels" if label_fraction not in (None, 1.0) else ""
    if kind == "finetune":
        return cfg, f"finetune (pre-trained{labels})"
    b = BASELINES[kind]
    if b.equal is not None:
        cfg = equal_compute(cfg, b.equal, train_set)
    return cfg, b.title.format(epochs=cfg.finetune.epochs, labels=labels)


def run_all(
    cfg: Config,
    out: Path,
    env: Env,
    resume: bool = False,
    pretrained: bool = True,
    baselines: tuple[str, ...] = ("scratch",),
    label_fractions: tuple[float, ...] | None = None,
    probe: bool = False,
    dirs: dict[str, str] | None = None,
) -> dict[str, dict]:
    """The main job, one folder per stage under ``out``; a finished stage is skipped, an
    interrupted one resumed. Writes ``out/summary.{md,json}``; returns each stage's metrics.

    Args:
        pretrained: pre-train (``out/pretrain``), then fine-tune from it (``out/finetune``).
        baselines: keys of :data:`~vitmim.baselines.BASELINES`, trained from random weights;
            a tuned one only when ``cfg.scratch`` sets a recipe, else its row says that none is
            set.
        label_fractions: fine-tune once per share of labels, in ``<folder>_lf<F>`` for F < 1;
            None: once, with ``cfg.data.label_fraction``.
        probe: k-NN + linear probe of the pre-trained model (``probe.json`` beside it) and, with
            a baseline that carries it (``scratch``), of random weights
            (``out/probe_random_init.json``).
        dirs: folder names replacing those of :data:`RUN_DIRS`.
    """
    dirs = {**RUN_DIRS, **(dirs or {})}
    cfg = absolute_data(cfg)
    classifiers = [
        (kind, lf, stage_dirname(dirs[kind], lf))
        for kind in (["finetune"] if pretrained else []) + list(baselines)
        for lf in label_fractions or [None]
    ]
    untrained = [c for c in classifiers if is_tuned(c[0]) and not cfg.scratch]
    classifiers = [c for c in classifiers if c not in untrained]
    claim_run(out, tuple(f for *_, f in classifiers) + (dirs["pretrain"],), [cfg.data.path])
    # refuse a changed config before the data (whose decoding shows progress) is read
    if pretrained:
        check_same_config(out / dirs["pretrain"], cfg, restorer_keys)
    for kind, lf, folder in classifiers:
        # an equal-compute baseline's length needs the data: its config is checked later
        if kind not in BASELINES or BASELINES[kind].equal is None:
            check_same_config(out / folder, _recipe(cfg, kind, lf))
    stages, fingerprint = _stages(cfg, out, env, pretrained, classifiers, dirs["pretrain"])
    results: dict[str, dict] = {}
    trained_s = trained_steps = 0.0  # this invocation's pace, for the ETA
    for k, st in enumerate(stages, 1):
        steps_left = sum(later.steps for later in stages[k - 1 :])
        note = eta_text(trained_s / trained_steps * steps_left) if trained_steps else ""
        result = run_stage(
            f"stage {k}/{len(stages)}: {st.name}",
            st.dir,
            st.fn,
            resume,
            st.cfg,
            st.fingerprint or fingerprint,
            note,
            env=env,
            **st.kwargs,
        )
        description = "pre-train (restorer)" if st.fn is pretrain else st.name
        results[st.dir.name] = {"description": description, **result}
        if result["wall_s"] is not None:
            trained_s, trained_steps = trained_s + result["wall_s"], trained_steps + st.steps
        if st.fn is pretrain and probe and env.main and not (st.dir / "probe.json").exists():
            probe_run(st.dir, device=str(env.device))
    results.update({folder: {"description": NO_TUNED_RECIPE} for _, _, folder in untrained})
    random_init = out / "probe_random_init.json"  # the reference the probes must beat
    if (
        probe
        and any(BASELINES[k].probe for k in baselines)
        and env.main
        and not random_init.exists()
    ):
        probe_random_init(cfg, random_init, device=str(env.device))
    if env.main:
        table = summary_table(results)
        print("\n" + table, flush=True)
        checkpoint.write_text(out / "summary.md", table + "\n")
        checkpoint.write_json(out / "summary.json", results)
    return results


class Stage(NamedTuple):
    """One stage of :func:`run_all`."""

    name: str  # as printed
    dir: Path
    fn: Callable[..., dict]  # pretrain or finetune
    cfg: Config
    steps: int  # optimisation steps it takes, for the ETA
    kwargs: dict  # more arguments of ``fn``
    fingerprint: str | None = None  # of its training data, where not that of the classifiers


def _stages(
    cfg: Config,
    out: Path,
    env: Env,
    pretrained: bool,
    classifiers: list[tuple[str, float | None, str]],
    pretrain_dir: str,
) -> tuple[list[Stage], str]:
    """The stages of :func:`run_all`, in order, and the fingerprint of their training data."""
    train_set, _ = load_splits(cfg.data, cfg.model.img_size, progress=env.main)
    init = out / pretrain_dir if pretrained else None
    stages = []
    if init is not None:
        steps = steps_per_epoch(cfg, train_set)[0] * cfg.pretrain.epochs
        pool = pretrain_data(cfg)  # fingerprinted from its listing: decoded only to train
        seen = (
            train_set.fingerprint
            if pool is cfg.data
            else train_fingerprint(pool, cfg.model.img_size)
        )
        stages.append(Stage("pretrain", init, pretrain, without_tuned_recipe(cfg), steps, {}, seen))
    for kind, lf, folder in classifiers:
        stage_cfg, name = _classifier_stage(cfg, kind, lf, train_set)
        steps = steps_per_epoch(stage_cfg, train_set)[1] * stage_cfg.finetune.epochs
        stages.append(
            Stage(
                name,
                out / folder,
                finetune,
                stage_cfg,
                steps,
                {"init": init if kind == "finetune" else None},
            )
        )
    return stages, train_set.fingerprint


RESTORED_NOTE = (
    "restored: the masked cells of held-out images as pre-training's images/recon_*.png show "
    "them (prediction pasted back, pixel space 0-1); L1 per channel, PSNR in dB"
)


def summary_table(results: dict[str, dict]) -> str:
    """One row per stage folder: what it is, its final metrics and wall time, then a line saying
    what the restoration columns measure."""
    rows = [
        "| run | what | val top-1 % | val top-5 % | restored L1 px | restored PSNR dB | steps "
        "| wall s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():

        def f(key, fmt="{:.2f}", r=r):
            return fmt.format(r[key]) if r.get(key) is not None else "-"

        rows.append(
            f"| {name} | {r.get('description', '')} | {f('val_top1')} | {f('val_top5')} "
            f"| {f('val_pixel_l1', '{:.4f}')} | {f('val_psnr')} | {f('step', '{}')} "
            f"| {f('wall_s', '{:.0f}')} |"
        )
    return "\n".join([*rows, "", RESTORED_NOTE])
