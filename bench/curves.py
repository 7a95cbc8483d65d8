"""Per-epoch val top-1 of any fine-tune run folders, on one plot (one colour per label).

    python bench/curves.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Runs that share a label (seeds) share a colour. Used for docs/results/gpu_tin10_long.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vitmim.runs import read_metrics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    labels: list[str] = []
    for spec in args.runs:
        label, _, run = spec.partition("=")
        curve = [r for r in read_metrics(Path(run)) if "val_top1" in r]
        if not curve:
            raise SystemExit(f"{run}: no fine-tune metrics.jsonl with val_top1")
        if label not in labels:
            labels.append(label)
        ax.plot(
            [r["epoch"] for r in curve],
            [r["val_top1"] for r in curve],
            lw=1,
            color=f"C{labels.index(label) % 10}",
            alpha=0.85,
            label=f"{label} ({curve[-1]['val_top1']:.1f})",
        )
    ax.set_xlabel("fine-tune epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
