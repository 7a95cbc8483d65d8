"""What equal-compute baselines that train alike save: a grid's progress line (core-hours left,
estimated from its records) with every run trained on its own, then with twins trained once.

    python bench/twin_savings.py configs/grids/unseen_subsets.yaml --data tiny-imagenet-200.zip \
        -c docs/results/scratch_search/scratch_recipe.yaml

``-c``: config files, ``--set``: overrides, as `vitmim grid` takes them; a tuned baseline is
planned only where a `scratch.` recipe is set.
Reads data and records; trains nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitmim.lab.grid import Ledger, assign_twins, load_spec, plan
from vitmim.lab.records import progress_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--data", required=True)
    ap.add_argument("-c", "--config", action="append", default=[], metavar="FILE")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    if not spec.records:
        raise SystemExit(f"{args.spec}: no `records:` folder to estimate from")
    runs = plan(spec, Path(spec.out or "runs"), [f"data.path={args.data}", *args.set], args.config)
    ledger = Ledger(Path(spec.records), runs)
    todo = {r.dir for r in runs if ledger.state(r) == "todo"}
    print(
        "each run on its own:",
        progress_line(ledger.records, [ledger.planned(r, runs) for r in runs]),
    )
    assign_twins(runs, todo)
    twins = sum(r.twin is not None for r in runs)
    print(
        f"{twins} twins trained once:",
        progress_line(ledger.records, [ledger.planned(r, runs) for r in runs]),
    )


if __name__ == "__main__":
    main()
