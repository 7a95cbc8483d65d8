"""``vitmim run``: pre-train -> fine-tune -> scratch baselines, one stage folder each.

The baselines come from :data:`~vitmim.baselines.BASELINES`; one at equal compute trains as long
as pre-train + fine-tune together (:func:`equal_compute`, counted in steps or FLOPs). A finished
stage is skipped, an interrupted one resumed; each stage's start shows an ETA from this
invocation's pace; the end writes a summary table (:func:`summary_table`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from vitmim import checkpoint
from vitmim.baselines import BASELINES, is_tuned
from vitmim.config import Config, pretrain_data, tuned_scratch
from vitmim.data import ImageSet, load_splits, train_count, train_fingerprint
from vitmim.env import Env
from vitmim.errors import ConfigError
from vitmim.masking import random_mask
from vitmim.models import build_classifier, build_restorer
from vitmim.outputs import claim_run
from vitmim.probes import probe_random_init, probe_run
from vitmim.runs import (
    absolute_data,
    check_same_config,
    check_same_data,
    class_count,
    classifier_keys,
    finished,
    last_metrics,
    restorer_keys,
    run_keys,
)
from vitmim.stages import finetune, forward_flops, pretrain, scratch_recipe
from vitmim.tasks import label_subset, top5_informative

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


def stage_keys(fn: Callable[..., dict], init: object = None) -> Callable[[Config | dict], dict]:
    """What defines the run of a stage: a restorer's keys for a pre-training, every run key for
    a fine-tune of pre-trained weights, the classifier's alone for one from random weights."""
    if fn is pretrain:
        return restorer_keys
    return run_keys if init else classifier_keys


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
        check_same_config(run_dir, cfg, stage_keys(fn, kwargs.get("init")))
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


def equal_compute(
    cfg: Config,
    by: str = "steps",
    train_set: ImageSet | None = None,
    epochs: int | None = None,
) -> Config:
    """``cfg`` with fine-tune epochs raised so that scratch trains as much as pre-train +
    fine-tune together, counted ``by`` optimisation steps or by training FLOPs.

    Steps flatter scratch when a pre-training step is cheaper than a fine-tuning step (the
    visible-token fast path encodes a quarter of the tokens at 75 % masking); FLOPs weigh each
    stage's images by its model's forward FLOPs per image (torch's FLOP counter). ``train_set``:
    the training split of ``cfg.data`` where the caller holds it already. ``epochs``: the
    pre-trained model's fine-tune epochs where ``cfg`` is another recipe (a tuned one), whose
    own epochs then do not count."""
    if train_set is None:
        train_set, _ = load_splits(cfg.data, cfg.model.img_size, progress=False)
    pre_per_epoch, per_epoch = steps_per_epoch(cfg, train_set)
    pre_steps: float = pre_per_epoch * cfg.pretrain.epochs
    if per_epoch == 0:
        n_labelled = len(label_subset(train_set.labels, cfg.data.label_fraction, cfg.finetune.seed))
        raise ConfigError(
            f"config key finetune.batch_size: {cfg.finetune.batch_size} is larger "
            f"than the {n_labelled} labelled training images"
        )
    if by == "flops":  # pre-training expressed in fine-tune steps of equal FLOPs
        pre_flops, ft_flops = training_flops_per_image(cfg, len(train_set.classes))
        pre_steps = (
            pre_steps * cfg.pretrain.batch_size * pre_flops / (cfg.finetune.batch_size * ft_flops)
        )
    long = copy.deepcopy(cfg)
    base = cfg.finetune.epochs if epochs is None else epochs
    long.finetune.epochs = base + math.ceil(round(pre_steps / per_epoch, 6))
    return long


def without_tuned_recipe(cfg: Config) -> Config:
    """``cfg`` with the ``scratch`` section emptied: it shapes only the ``scratch_tuned`` stage,
    so setting or changing it later adds that stage without touching the finished others."""
    if not cfg.scratch:
        return cfg
    out = copy.deepcopy(cfg)
    out.scratch = {}
    return out


def stage_recipe(cfg: Config, kind: str, label_fraction: float | None) -> Config:
    """The fine-tune recipe of a classifier stage, but for an equal-compute baseline's length."""
    if label_fraction is not None:
        cfg = copy.deepcopy(cfg)
        cfg.data.label_fraction = label_fraction
    if is_tuned(kind):
        return scratch_recipe(tuned_scratch(cfg))
    cfg = without_tuned_recipe(cfg)
    return cfg if kind == "finetune" else scratch_recipe(cfg)


def classifier_stage(
    cfg: Config, kind: str, label_fraction: float | None, train_set: ImageSet
) -> tuple[Config, str]:
    """The config of a fine-tune stage (pre-trained or a baseline) and its printed name."""
    epochs = cfg.finetune.epochs  # the pre-trained model's, which equal compute starts from
    cfg = stage_recipe(cfg, kind, label_fraction)
    labels = f", {label_fraction:.0%} labels" if label_fraction not in (None, 1.0) else ""
    if kind == "finetune":
        return cfg, f"finetune (pre-trained{labels})"
    b = BASELINES[kind]
    if b.equal is not None:
        cfg = equal_compute(cfg, b.equal, train_set, epochs)
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
    share = cfg.data.label_fraction
    if label_fractions and share != 1.0 and set(label_fractions) != {share}:
        raise ConfigError(
            f"data.label_fraction {share:g} and label fractions {list(label_fractions)} both "
            f"set the share of labels; keep one"
        )
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
            keys = run_keys if kind == "finetune" else classifier_keys
            check_same_config(out / folder, stage_recipe(cfg, kind, lf), keys)
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
        table = summary_table(results, class_count(*(st.dir for st in stages)))
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
        stage_cfg, name = classifier_stage(cfg, kind, lf, train_set)
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


def summary_table(results: dict[str, dict], num_classes: int | None) -> str:
    """One row per stage folder: what it is, its final metrics and wall time, then a line saying
    what the restoration columns measure. Top-5 accuracy only with more than 5 classes
    (``num_classes``; None: unknown), where it can tell anything."""
    columns = {  # title -> (metric, format)
        "val top-1 %": ("val_top1", "{:.2f}"),
        "val top-5 %": ("val_top5", "{:.2f}"),
        "restored L1 px": ("val_pixel_l1", "{:.4f}"),
        "restored PSNR dB": ("val_psnr", "{:.2f}"),
        "steps": ("step", "{}"),
        "wall s": ("wall_s", "{:.0f}"),
    }
    if not top5_informative(num_classes):
        del columns["val top-5 %"]
    rows = [
        "| run | what | " + " | ".join(columns) + " |",
        "| --- | --- |" + " ---: |" * len(columns),
    ]
    for name, r in results.items():
        cells = [
            fmt.format(r[key]) if r.get(key) is not None else "-" for key, fmt in columns.values()
        ]
        rows.append(f"| {name} | {r.get('description', '')} | " + " | ".join(cells) + " |")
    return "\n".join([*rows, "", RESTORED_NOTE])
