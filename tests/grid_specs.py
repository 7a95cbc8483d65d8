"""What the grid, records and search tests share: the shipped smoke grid and a tiny model."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "grids" / "smoke.yaml"
# a model that trains in seconds on the generated 4-class data set
TINY = {
    "model.embed_dim": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "model.decoder_dim": 32,
    "data.classes": None,
    "pretrain.batch_size": 16,
    "finetune.batch_size": 16,
}


def write_spec(path: Path, **spec) -> Path:
    """A grid spec over the smoke preset with the tiny model (``spec`` adds or replaces keys)."""
    path.write_text(yaml.safe_dump({"base": "smoke", "config": TINY, **spec}, sort_keys=False))
    return path


# two regimes that pre-train as much (3 epochs of a 2-class subset, 1 of the 4-class pool: 3 steps
# of the same images' size each): their equal-FLOPs baselines train alike
TWIN_VARIANTS = [{"pretrain.epochs": 3}, {"pretrain.pool": "all", "pretrain.epochs": 1}]


def write_twins_spec(path: Path, *more_variants: dict, **spec) -> Path:
    """A one-seed grid of the twin regimes (and ``more_variants``) with their equal-FLOPs
    baselines only."""
    return write_spec(
        path,
        config={**TINY, "data.classes": 2},
        seeds=[0],
        baselines=["scratch_equal_flops"],
        probe=False,
        variants=[*TWIN_VARIANTS, *more_variants],
        **spec,
    )
