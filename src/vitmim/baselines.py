"""The scratch baselines: the classifier trained from random weights, which pre-training is
measured against. Every fact about a baseline lives in its :class:`Baseline` entry of
:data:`BASELINES`; the run (:mod:`vitmim.pipeline`), the grid, the report and the Python API look
it up here, so adding a baseline means adding one entry.

Several, because one flatters pre-training: scratch with a recipe tuned for the pre-trained model
and trained for the fine-tune epochs alone gets less compute and less tuning than pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vitmim.config import TOKEN_ARCHS, Config

# model keys that shape only the restorer (the classifier drops its decoder): baselines ignore them
RESTORER_KEYS = ("model.decoder_dim", "model.decoder_depth", "model.skips")
# pre-training keys that change how many steps an equal-steps baseline must match (the pool: how
# many images an epoch holds)
STEP_KEYS = ("pretrain.epochs", "pretrain.batch_size", "pretrain.pool")
# ... and what else changes the restorer's FLOPs per image, for an equal-FLOPs baseline
FLOP_KEYS = (
    *STEP_KEYS,
    "pretrain.mask_ratio",
    "pretrain.mask_patch",
    "pretrain.fast",
    *RESTORER_KEYS,
)
# FLOP keys that matter only on the visible-token fast path: on the full-token path the encoder
# sees every token however many are masked, and a linear head stands in for the decoder
FAST_PATH_KEYS = (
    "pretrain.mask_ratio",
    "pretrain.mask_patch",
    "pretrain.fast",
    "model.decoder_dim",
    "model.decoder_depth",
)
# the tuned scratch recipe (config section ``scratch``) shapes only a baseline with ``tuned``
TUNED_PREFIX = "scratch."


@dataclass(frozen=True)
class Baseline:
    """One baseline: a classifier from random weights, trained with the fine-tune recipe
    (layer-wise lr decay off) unless ``tuned``, for the fine-tune epochs unless ``equal``
    (then for the pre-trained model's fine-tune epochs plus its pre-training's worth, whatever
    epochs a tuned recipe names)."""

    name: str  # its kind: `vitmim grid`'s spec key `baselines`, a cell's `kind`
    folder: str  # its stage folder under `vitmim run --out`
    title: str  # its stage as `vitmim run` announces it: {epochs} and {labels} filled in
    label: str  # its row in a report table
    gain_head: str  # the report's column of the gain of pre-training over it
    tuned: bool = False  # trains with its own recipe (config section `scratch`)
    # trained as long as pre-train + fine-tune together, counted in optimisation steps or
    # training FLOPs; None: the fine-tune epochs
    equal: Literal["steps", "flops"] | None = None
    # pre-training keys that change it (whatever lies outside pre-training changes every one)
    shares: tuple[str, ...] = ()
    default: bool = False  # planned by a grid spec that names no baselines
    # carries the k-NN and linear probe of random weights: the reference the probes must beat
    probe: bool = False


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline(
            "scratch",
            "scratch",
            "scratch, same recipe (equal fine-tune epochs{labels})",
            "scratch, same recipe (equal fine-tune epochs)",
            "Δ scratch same recipe",
            default=True,
            probe=True,
        ),
        Baseline(
            "scratch_tuned",
            "scratch_tuned",
            "scratch, tuned recipe ({epochs} epochs{labels})",
            "scratch, tuned recipe",
            "Δ scratch tuned",
            tuned=True,
        ),
        Baseline(
            "scratch_equal_compute",
            "scratch_long",
            "scratch, same recipe (equal steps: {epochs} epochs{labels})",
            "scratch (equal total steps)",
            "Δ scratch equal-compute",
            equal="steps",
            shares=STEP_KEYS,
            default=True,
        ),
        Baseline(
            "scratch_equal_flops",
            "scratch_flops",
            "scratch, same recipe (equal flops: {epochs} epochs{labels})",
            "scratch (equal training FLOPs)",
            "Δ scratch equal-FLOPs",
            equal="flops",
            shares=FLOP_KEYS,
        ),
        Baseline(
            "scratch_tuned_flops",
            "scratch_tuned_flops",
            "scratch, tuned recipe (equal flops: {epochs} epochs{labels})",
            "scratch, tuned recipe (equal training FLOPs)",
            "Δ scratch tuned equal-FLOPs",
            tuned=True,
            equal="flops",
            shares=FLOP_KEYS,
        ),
    )
}
DEFAULT_BASELINES = tuple(name for name, b in BASELINES.items() if b.default)


def is_tuned(kind: str) -> bool:
    """Whether a cell or stage of ``kind`` (a baseline, ``variant``, ``finetune``) trains with
    the tuned scratch recipe."""
    return kind in BASELINES and BASELINES[kind].tuned


def baseline_axes(kind: str, axes: dict, cfg: Config) -> dict:
    """The axes of a variant that its ``kind`` baseline shares: a baseline varies only with what
    changes it: the keys outside pre-training and the restorer, and for equal compute also the
    keys that change the pre-training steps (or FLOPs) it must match; the tuned recipe's keys
    only for a tuned baseline. The grid plans baselines and the report pairs them with this.

    Args:
        kind: a baseline kind (:data:`BASELINES`).
        axes: the variant's axes (dotted key -> value).
        cfg: the variant's resolved config: whether it pre-trains on the fast path.
    """
    # the restorer's module needs torch; the CLI reads this module's table without it
    from vitmim.models.restorer import uses_fast_path

    b = BASELINES[kind]
    shared = b.shares
    full_path = b.equal == "flops" and not uses_fast_path(cfg.model, cfg.pretrain)
    if full_path:
        shared = tuple(k for k in shared if k not in FAST_PATH_KEYS)
    out = {
        k: v
        for k, v in axes.items()
        if k in shared
        or (
            k not in RESTORER_KEYS
            and not k.startswith("pretrain.")
            and (b.tuned or not k.startswith(TUNED_PREFIX))
        )
    }
    if full_path and cfg.model.arch in TOKEN_ARCHS:
        # the baseline counts the full path's FLOPs even where its own mask cell (the grid's
        # base config) would take the fast path
        out["pretrain.fast"] = False
    return out


def variant_axes(axes: dict) -> dict:
    """The axes a pre-trained variant varies with: all but the tuned scratch recipe's."""
    return {k: v for k, v in axes.items() if not k.startswith(TUNED_PREFIX)}
