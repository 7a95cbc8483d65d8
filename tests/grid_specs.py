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
