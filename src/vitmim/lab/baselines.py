"""Which baseline a grid variant is compared with: shared by the grid (what to run) and the
report (what to compare)."""

from __future__ import annotations

from vitmim.config import Config, uses_fast_path

DEFAULT_BASELINES = ("scratch", "scratch_equal_compute")
# model keys that shape only the restorer (the classifier drops its decoder): baselines ignore them
RESTORER_KEYS = ("model.decoder_dim", "model.decoder_depth", "model.skips")
# pre-training keys that change how many steps the equal-compute baseline must match
STEP_KEYS = ("pretrain.epochs", "pretrain.batch_size")
# ... and what else changes the restorer's FLOPs per image, for the equal-FLOPs baseline
FLOP_KEYS = (*STEP_KEYS, "pretrain.mask_ratio", "pretrain.mask_patch", "pretrain.fast",
             *RESTORER_KEYS)
# FLOP keys that matter only on the visible-token fast path: on the full-token path the encoder
# sees every token however many are masked, and a linear head stands in for the decoder
FAST_PATH_KEYS = ("pretrain.mask_ratio", "pretrain.mask_patch", "pretrain.fast",
                  "model.decoder_dim", "model.decoder_depth")
SHARED_KEYS = {"scratch": (), "scratch_tuned": (), "scratch_equal_compute": STEP_KEYS,
               "scratch_equal_flops": FLOP_KEYS}
# the tuned scratch recipe (config section ``scratch``) shapes only the scratch_tuned baseline
TUNED_PREFIX = "scratch."


def baseline_axes(kind: str, axes: dict, cfg: Config) -> dict:
    """The axes of a variant that its ``kind`` baseline shares: a baseline varies only with what
    changes it: the keys outside pre-training and the restorer, and for equal compute also the
    keys that change the pre-training steps (or FLOPs) it must match; the tuned recipe's keys
    only for ``scratch_tuned``. The grid plans baselines and the report pairs them with this.

    Args:
        kind: a baseline kind (:data:`SHARED_KEYS`).
        axes: the variant's axes (dotted key -> value).
        cfg: the variant's resolved config: whether it pre-trains on the fast path.
    """
    shared = SHARED_KEYS[kind]
    full_path = kind == "scratch_equal_flops" and not uses_fast_path(cfg.model, cfg.pretrain)
    if full_path:
        shared = tuple(k for k in shared if k not in FAST_PATH_KEYS)
    out = {k: v for k, v in axes.items() if k in shared or (
        k not in RESTORER_KEYS and not k.startswith("pretrain.")
        and (kind == "scratch_tuned" or not k.startswith(TUNED_PREFIX)))}
    if full_path and cfg.model.arch == "vit":
        # the baseline counts the full path's FLOPs even where its own mask cell (the grid's
        # base config) would take the fast path
        out["pretrain.fast"] = False
    return out


def variant_axes(axes: dict) -> dict:
    """The axes a pre-trained variant varies with: all but the tuned scratch recipe's."""
    return {k: v for k, v in axes.items() if not k.startswith(TUNED_PREFIX)}
