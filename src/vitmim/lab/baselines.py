"""Which baseline a grid variant is compared with: shared by the grid (what to run) and the
report (what to compare)."""

from __future__ import annotations

DEFAULT_BASELINES = ("scratch", "scratch_equal_compute")
# model keys that shape only the restorer (the classifier drops its decoder): baselines ignore them
RESTORER_KEYS = ("model.decoder_dim", "model.decoder_depth", "model.skips")
# pre-training keys that change how many steps the equal-compute baseline must match
STEP_KEYS = ("pretrain.epochs", "pretrain.batch_size")
# ... and what else changes the restorer's FLOPs per image, for the equal-FLOPs baseline
FLOP_KEYS = (*STEP_KEYS, "pretrain.mask_ratio", "pretrain.mask_patch", "pretrain.fast",
             *RESTORER_KEYS)
SHARED_KEYS = {"scratch": (), "scratch_equal_compute": STEP_KEYS, "scratch_equal_flops": FLOP_KEYS}


def baseline_axes(kind: str, axes: dict) -> dict:
    """The axes of a variant that its ``kind`` baseline shares: a baseline varies only with what
    changes it: the keys outside pre-training and the restorer, and for equal compute also the
    keys that change the pre-training steps (or FLOPs) it must match."""
    return {k: v for k, v in axes.items() if k in SHARED_KEYS[kind] or (
        k not in RESTORER_KEYS and not k.startswith("pretrain."))}
