"""Every trial of a `vitmim search` study: how it ended, its mean val top-1 per epoch over the
choosing subsets (the values the pruner judged), its final value, cost and recipe.

    python bench/search_trials.py configs/search/scratch.yaml

Reads the committed study (SQLite) alone: no data, no training.
"""

from __future__ import annotations

import argparse

import optuna

from vitmim.lab.search import load_search_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    args = ap.parse_args()
    spec = load_search_spec(args.spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=spec.path.stem, storage=f"sqlite:///{spec.storage}")
    for t in study.trials:
        curve = [round(t.intermediate_values[k], 1) for k in sorted(t.intermediate_values)]
        value = f"{t.value:.2f}" if t.value is not None else "-"
        core_h = t.user_attrs.get("core_s", 0.0) / 3600
        print(f"trial {t.number}: {t.state.name.lower()}, final {value}, {core_h:.2f} core-h")
        print(f"  mean top-1 per epoch: {curve}")
        print(f"  recipe: {t.params}")


if __name__ == "__main__":
    main()
