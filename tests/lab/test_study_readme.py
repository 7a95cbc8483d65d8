"""The README's table of gains is what `vitmim report` makes of the committed records.

The front door claims nothing the records do not hold: every figure of its table (gain ± std,
interval, n, cost of each arm, ``≤`` where the cost is an upper bound) is one regime's row of the
report rebuilt from ``docs/results/unseen_subsets``, every regime the records hold has its row,
and the count of runs it states is the count of records.
"""

from __future__ import annotations

import re
from pathlib import Path

from vitmim.lab import report
from vitmim.lab.records import RECORD

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "docs" / "results" / "unseen_subsets"


# the README's name for each baseline of the study, in its column "scratch"
AGAINST = {"scratch": "same recipe", "scratch_tuned_flops": "tuned, equal FLOPs"}


def readme_rows() -> list[tuple[str, ...]]:
    """The figures of each row of the README's results table (every cell but the regime)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows[1:]]
    return [(*c[1:5], *(x.strip() for x in c[5].split("/"))) for c in cells]


def report_rows() -> list[tuple[str, ...]]:
    """The same figures, formatted as the report formats them, per regime and baseline: every
    baseline the records hold has its rows."""
    records = report.collect(STUDY)
    gains = report.subset_gains(records, report.subset_axis(records) or "")
    return [
        (
            AGAINST[r["baseline"]],
            report._signed(r["gain"], r["std"]),
            f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]" if r["ci95"] else "-",
            str(r["n"]),
            report._cost(r["pretrained_core_min"], r["pretrained_cost_bound"]),
            report._cost(r["baseline_core_min"], r["baseline_cost_bound"]),
        )
        for r in report.regime_rows(gains)
    ]


def test_the_readme_table_is_the_report_of_the_committed_records():
    readme, rebuilt = readme_rows(), report_rows()
    assert rebuilt, "no regime in the committed records"
    assert sorted(readme) == sorted(rebuilt)


def test_the_readme_counts_the_committed_records():
    text = (ROOT / "README.md").read_text()
    stated = re.search(r"(?:So far|All) (\d+) of \[the study\]", text)
    assert stated is not None
    assert int(stated.group(1)) == len(list(STUDY.glob(f"*/seed*/{RECORD}")))
