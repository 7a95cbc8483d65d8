"""``vitmim report RUNS_DIR``: tables, plots, reconstructions and one HTML page, from run folders.

Everything is read from the folders a grid wrote (``<cell>/seed<k>/cell.json`` and the stage
folders' ``config.yaml``, ``metrics.jsonl``, ``model.json``, ``probe.json``, ``images/``), or
from the stage folders of one ``vitmim run`` (``pretrain/``, ``finetune/``, ``scratch/``, ...);
nothing is recomputed. Only finished stages count; ``n`` is the number of finished seeds.

Where the pre-trained variants differ only in their class subset (``data.class_subset`` or
``data.class_seed``), the report also gives the gain over each baseline per subset and seed, and
where a grid searched the scratch recipe (``scratch_tuned`` cells), it ranks the recipes and
writes the best as ``scratch_recipe.yaml``, a config file for the next grid (``-c``).

The rule for differences: a gain over a baseline is called real when both sides have n >= 2 and
|mean difference| exceeds the larger of the two seed standard deviations (sample std, ddof 1).
With 2-3 seeds this is a screen against seed noise, not a significance test.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
import statistics
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vitmim import config, outputs
from vitmim.baselines import BASELINES, DEFAULT_BASELINES, baseline_axes, is_tuned
from vitmim.errors import CheckpointError, ConfigError
from vitmim.lab.grid import CELL_KEYS, cell_name
from vitmim.lab.records import stage_done
from vitmim.pipeline import RUN_DIRS, summary_table
from vitmim.runs import (
    class_count,
    core_seconds,
    cost_is_bound,
    json_object,
    last_metrics,
    read_metrics,
)
from vitmim.tasks import top5_informative

RULE = (
    "A difference to a baseline is marked **> spread** when both sides have n >= 2 seeds and "
    "|mean difference| exceeds the larger of the two seed standard deviations (sample std); "
    "otherwise **within spread**. With 2-3 seeds this screens out seed noise; it is not a "
    "significance test. Restored L1 and PSNR score the masked cells of held-out images as the "
    "reconstructions show them: the prediction pasted back, in pixel space (0-1)."
)


@dataclass
class RunRecord:
    """One fine-tuned classifier of one seed, with what its pre-training left behind."""

    cell: str
    kind: str  # "variant" or a baseline kind
    axes: dict
    config: config.Config  # the cell's resolved config: what its baselines share (baseline_axes)
    seed: int
    label_fraction: float
    dir: Path  # the fine-tune stage folder
    final: dict  # last metrics record of the fine-tune stage (empty when unfinished)
    curve: list[dict]  # every epoch record of the fine-tune stage
    pretrain: dict = field(default_factory=dict)  # last pre-training record
    pretrain_curve: list[dict] = field(default_factory=list)
    probe: dict = field(default_factory=dict)  # probe.json (random init for scratch)
    recipe: dict = field(default_factory=dict)  # the tuned scratch recipe (scratch_tuned only)


@dataclass
class Row:
    """Seeds of one (cell, label fraction) aggregated."""

    cell: str
    kind: str
    axes: dict
    label_fraction: float
    runs: list[RunRecord]
    config: config.Config | None = None  # the cell's resolved config (RunRecord.config)

    def values(self, get) -> list[float]:
        out = [get(r) for r in self.runs]
        return [v for v in out if v is not None]

    def stat(self, get) -> tuple[float | None, float | None, int]:
        return mean_std(self.values(get))


# ---------------------------------------------------------------------------------------------
# reading run folders


def _read_json(path: Path) -> dict:
    return config.read_json_mapping(path, "probe result") if path.exists() else {}


def _read_run_config(path: Path, raw: dict | None = None) -> config.Config:
    """A stage's config.yaml (or ``raw``, the config that ``path`` holds), checked like any
    config (its values label the tables)."""
    raw = config.read_yaml_mapping(path, "run config") if raw is None else raw
    try:
        return config.load_config(base=raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


KINDS = ("variant", *BASELINES)  # what cell.json may name


def collect(runs_dir: Path) -> list[RunRecord]:
    """Every fine-tune stage folder under ``runs_dir/<cell>/seed<k>/``, finished or not."""
    records = []
    for cell_json in sorted(runs_dir.glob("*/seed*/cell.json")):
        job = config.read_json_mapping(cell_json, "grid cell", CELL_KEYS)
        if job["kind"] not in KINDS:
            raise CheckpointError(
                f"{cell_json}: kind {job['kind']!r} is not one vitmim writes "
                f"(known: {', '.join(KINDS)}); repair or remove the cell"
            )
        seed_dir = cell_json.parent
        pre = seed_dir / "pretrain"
        pre_curve = read_metrics(pre) if stage_done(pre) else []
        probe = _read_json(
            pre / "probe.json" if job["kind"] == "variant" else seed_dir / "probe_random_init.json"
        )
        recipe = job["config"].get("scratch", {}) if is_tuned(job["kind"]) else {}
        cell_cfg = _read_run_config(cell_json, job["config"])
        for ft in sorted(seed_dir.glob("finetune*/config.yaml")):
            records.append(
                _record(
                    ft.parent,
                    job["cell"],
                    job["kind"],
                    job["axes"],
                    cell_cfg,
                    job["seed"],
                    pre_curve,
                    probe,
                    recipe,
                )
            )
    if not records:
        raise CheckpointError(
            f"{runs_dir}: no run folders found (expected <cell>/seed<k>/cell.json "
            f"with fine-tune stages, as `vitmim grid` writes them, or the stage "
            f"folders of one `vitmim run`)"
        )
    return records


def _record(
    stage_dir: Path,
    cell: str,
    kind: str,
    axes: dict,
    cell_cfg: config.Config | None,
    seed: int,
    pre_curve: list[dict],
    probe: dict,
    recipe: dict,
) -> RunRecord:
    """The record of one fine-tune stage folder (finished or not); ``cell_cfg``: the cell's
    config, by default the stage's."""
    cfg = _read_run_config(stage_dir / "config.yaml")
    curve = read_metrics(stage_dir)
    return RunRecord(
        cell,
        kind,
        axes,
        cell_cfg or cfg,
        seed,
        float(cfg.data.label_fraction),
        stage_dir,
        curve[-1] if curve and stage_done(stage_dir) else {},
        curve,
        pre_curve[-1] if pre_curve else {},
        pre_curve,
        probe,
        recipe,
    )


# stage folder of ``vitmim run`` -> its kind in a grid's terms (the pre-trained one: "variant")
RUN_KINDS = {
    folder: ("variant" if stage == "finetune" else stage)
    for stage, folder in RUN_DIRS.items()
    if stage != "pretrain"
}


def is_run_folder(path: Path) -> bool:
    """A folder ``vitmim run`` wrote: stage folders with their config beside each other."""
    return any((path / d / "config.yaml").exists() for d in RUN_DIRS.values())


def collect_run(run_dir: Path) -> list[RunRecord]:
    """The fine-tune stages of one ``vitmim run`` folder, the pre-trained one first; each is a
    cell of its own, named by its folder (``finetune_lf0.1`` for 10 % of the labels)."""
    pre = run_dir / "pretrain"
    pre_curve = read_metrics(pre) if stage_done(pre) else []
    records = []
    for cfg_path in sorted(run_dir.glob("*/config.yaml")):
        folder, cfg = cfg_path.parent.name, _read_run_config(cfg_path)
        kind = RUN_KINDS.get(folder.split("_lf")[0])
        if kind is None:  # the restorer, or a folder vitmim run does not write
            continue
        variant = kind == "variant"
        records.append(
            _record(
                run_dir / folder,
                folder.split("_lf")[0],
                kind,
                {},
                cfg,
                cfg.finetune.seed,
                pre_curve if variant else [],
                _read_json(pre / "probe.json") if variant else {},
                cfg.scratch or {} if is_tuned(kind) else {},
            )
        )
    if not records:
        raise CheckpointError(
            f"{run_dir}: no fine-tune stage folders found (expected finetune/, "
            f"scratch/, ... as `vitmim run` writes them)"
        )
    return sorted(records, key=lambda r: r.kind != "variant")


def _axes_key(axes: dict) -> tuple:
    """Sort key of a cell: numbers by value (2 before 16), everything else by text."""
    return tuple(
        (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in axes.values()
    )


def group(records: list[RunRecord]) -> list[Row]:
    """Rows: per label fraction (full labels first), variants by axis values, then baselines.
    Only finished seeds are kept in a row."""
    rows: dict[tuple[str, float], Row] = {}
    for r in sorted(records, key=lambda r: r.seed):
        key = (r.cell, r.label_fraction)
        row = rows.setdefault(key, Row(r.cell, r.kind, r.axes, r.label_fraction, [], r.config))
        if r.final:
            row.runs.append(r)
    return sorted(
        rows.values(),
        key=lambda w: (-w.label_fraction, w.kind != "variant", w.kind, _axes_key(w.axes)),
    )


# ---------------------------------------------------------------------------------------------
# statistics


def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (ddof 1; None for n < 2) and n."""
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std, n


def compare(a: tuple, b: tuple) -> tuple[float | None, str]:
    """(mean difference a - b, verdict) under the rule in :data:`RULE`."""
    (ma, sa, na), (mb, sb, nb) = a, b
    if ma is None or mb is None:
        return None, "n/a"
    diff = round(ma - mb, 9) + 0.0  # no -0.00 from float noise
    if na < 2 or nb < 2:
        return diff, "n < 2"
    return diff, "> spread" if abs(diff) > max(sa, sb) else "within spread"


def top1(r: RunRecord) -> float | None:
    return r.final.get("val_top1")


def top5(r: RunRecord) -> float | None:
    """Top-5 accuracy; None with 5 classes or fewer, where it is 100 % by construction."""
    return r.final.get("val_top5") if top5_informative(class_count(r.dir)) else None


METRICS = {  # column -> how to read it from a run; None where the run has no such number
    "top1": top1,
    "top5": top5,
    "knn": lambda r: r.probe.get("knn_top1"),
    "linear": lambda r: r.probe.get("linear_top1"),
    "l1": lambda r: r.pretrain.get("val_pixel_l1"),
    "psnr": lambda r: r.pretrain.get("val_psnr"),
    "steps": lambda r: r.final.get("step", 0) + r.pretrain.get("step", 0) if r.final else None,
}


def baseline_row(row: Row, kind: str, rows: list[Row]) -> Row | None:
    """The ``kind`` baseline that ``row`` is compared with: same shared axes, same labels."""
    if row.config is None:  # a row of one `vitmim run` folder: its baselines are its own rows
        return None
    want = baseline_axes(kind, row.axes, row.config)
    for b in rows:
        if b.kind == kind and b.axes == want and b.label_fraction == row.label_fraction:
            return b
    return None


def summarise(rows: list[Row]) -> list[dict]:
    """One flat dict per row: every metric's mean/std/n and the comparison to each baseline."""
    out = []
    for row in rows:
        d: dict = {
            "cell": row.cell,
            "kind": row.kind,
            **row.axes,
            "label_fraction": row.label_fraction,
            "n": len(row.runs),
        }
        for name, get in METRICS.items():
            d[f"{name}_mean"], d[f"{name}_std"], d[f"{name}_n"] = row.stat(get)
        for kind in BASELINES:
            b = baseline_row(row, kind, rows) if row.kind == "variant" else None
            diff, verdict = compare(row.stat(top1), b.stat(top1)) if b else (None, "")
            d[f"vs_{kind}"], d[f"vs_{kind}_verdict"] = diff, verdict
        out.append(d)
    return out


# ---------------------------------------------------------------------------------------------
# tables


def _pm(mean: float | None, std: float | None, fmt: str = "{:.2f}") -> str:
    if mean is None:
        return "-"
    return fmt.format(mean) + (f" ± {fmt.format(std)}" if std is not None else "")


def _signed(mean: float, std: float | None, digits: int = 2) -> str:
    """``+1.50 ± 0.70``: a signed difference and its (unsigned) spread."""
    return f"{mean:+.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _diff(d: dict, kind: str) -> str:
    v = d[f"vs_{kind}"]
    return "-" if v is None else f"{v:+.2f} ({d[f'vs_{kind}_verdict']})"


def compared(summary: list[dict]) -> list[str]:
    """The baselines a table compares with: the default ones, and equal FLOPs when it was run."""
    return [k for k in BASELINES if k in DEFAULT_BASELINES or any(d["kind"] == k for d in summary)]


def table_head(kinds: list[str], top5: bool = True) -> list[str]:
    """Column titles; ``top5``: with the top-5 column (left out when no row has it)."""
    return [
        "cell",
        "labels",
        "n",
        "val top-1 %",
        *(BASELINES[k].gain_head for k in kinds),
        *(["val top-5 %"] if top5 else []),
        "k-NN %",
        "linear %",
        "restored L1 px",
        "restored PSNR dB",
        "steps",
    ]


def has_top5(summary: list[dict]) -> bool:
    return any(d["top5_mean"] is not None for d in summary)


def table_cells(d: dict, kinds: list[str], top5: bool = True) -> list[str]:
    """The markdown/HTML table row of one summary dict."""
    name = (
        d["cell"]
        if d["kind"] == "variant"
        else BASELINES[d["kind"]].label + (d["cell"][len(d["kind"]) :].replace(",", " ", 1))
    )  # "scratch,depth=4": its own axes
    return [
        name,
        f"{d['label_fraction']:.0%}",
        str(d["n"]),
        _pm(d["top1_mean"], d["top1_std"]),
        *(_diff(d, k) for k in kinds),
        *([_pm(d["top5_mean"], d["top5_std"])] if top5 else []),
        _pm(d["knn_mean"], d["knn_std"]),
        _pm(d["linear_mean"], d["linear_std"]),
        _pm(d["l1_mean"], d["l1_std"], "{:.4f}"),
        _pm(d["psnr_mean"], d["psnr_std"]),
        _pm(d["steps_mean"], None, "{:.0f}"),
    ]


def markdown_table(summary: list[dict]) -> str:
    kinds, top5 = compared(summary), has_top5(summary)
    head = table_head(kinds, top5)
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(table_cells(d, kinds, top5)) + " |" for d in summary]
    return "\n".join(lines)


def csv_text(summary: list[dict]) -> str:
    """All columns of the summary, numbers unrounded; axes get a column each."""
    fields: list[str] = []
    for d in summary:
        fields += [k for k in d if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for d in summary:
        writer.writerow({k: "" if d.get(k) is None else d.get(k) for k in fields})
    return buf.getvalue()


def runs_csv_text(records: list[RunRecord], base: Path) -> str:
    """Every run's own numbers (one line per seed), for other statistics; ``dir`` relative to
    ``base`` (the folder reported on), so that the table holds wherever the runs are."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["cell", "kind", "seed", "label_fraction", "finished", "dir", *METRICS.keys()])
    for r in records:
        writer.writerow(
            [
                r.cell,
                r.kind,
                r.seed,
                r.label_fraction,
                bool(r.final),
                r.dir.relative_to(base).as_posix(),
                *("" if (v := get(r)) is None else v for get in METRICS.values()),
            ]
        )
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# gains per class subset, and the scratch recipe search

SUBSET_KEYS = ("data.class_subset", "data.class_seed")
# the scratch recipe search ranks the recipes of the baselines trained for the fine-tune epochs:
# the fine-tune recipe (``{}``) and the tuned ones
RECIPE_KINDS = tuple(name for name, b in BASELINES.items() if b.equal is None)


@dataclass
class Gain:
    """Top-1 of one pre-trained run minus its baseline's, same seed and class subset."""

    variant: str  # the variant's axes other than the subset
    label_fraction: float
    subset: object
    seed: int
    kind: str  # the baseline
    value: float  # points
    cost: float | None = None  # core-minutes of the pre-trained run (pre-training included)
    baseline_cost: float | None = None  # core-minutes of the baseline run
    cost_bound: bool = False  # cost is only an upper bound (runs.cost_is_bound)
    baseline_cost_bound: bool = False


def subset_axis(records: list[RunRecord], kinds: tuple[str, ...] = ("variant",)) -> str | None:
    """The class-subset key that runs of ``kinds`` vary, or are crossed with (a grid whose
    subsets have not all run yet), if any."""
    for key in SUBSET_KEYS:
        values = {repr(r.axes.get(key)) for r in records if r.kind in kinds}
        if len(values) > 1 or values and "None" not in values:
            return key
    return None


def compared_pairs(
    records: list[RunRecord], key: str
) -> Iterator[tuple[str, RunRecord, str, RunRecord, float]]:
    """``(regime, pre-trained run, baseline kind, baseline run, gain)`` for every finished
    pre-trained run and each finished baseline of the same seed with a top-1 on both sides
    (the gain: the difference, in points); the regime is what the variant changes besides the
    class subset ``key``."""
    done = [r for r in records if r.final]
    for v in (r for r in done if r.kind == "variant"):
        rest = regime_name({k: x for k, x in v.axes.items() if k != key})
        for kind in BASELINES:
            want = baseline_axes(kind, v.axes, v.config)
            b = next(
                (
                    r
                    for r in done
                    if r.kind == kind
                    and r.axes == want
                    and r.seed == v.seed
                    and r.label_fraction == v.label_fraction
                ),
                None,
            )
            mine, theirs = top1(v), top1(b) if b is not None else None
            if b is not None and mine is not None and theirs is not None:
                yield rest, v, kind, b, round(mine - theirs, 9) + 0.0


def subset_gains(records: list[RunRecord], key: str) -> list[Gain]:
    """Every finished pre-trained run against each finished baseline of the same seed."""
    return [
        Gain(
            rest,
            v.label_fraction,
            v.axes.get(key),
            v.seed,
            kind,
            gain,
            core_minutes(v),
            core_minutes(b),
            cost_bound(v),
            cost_bound(b),
        )
        for rest, v, kind, b, gain in compared_pairs(records, key)
    ]


def schedule_end(curve: list[dict]) -> tuple[float, float] | None:
    """How a fine-tune's schedule ended against its best stretch: the mean val top-1 of its
    last tenth of epochs below that of its best tenth (points, >= 0), and where the best tenth
    ends (share of the schedule). Tenths, not single epochs: the best of hundreds of noisy
    evaluations beats the last one by noise alone. None without a val top-1 per epoch."""
    top = [e["val_top1"] for e in curve if e.get("val_top1") is not None]
    if not top:
        return None
    w = max(1, round(len(top) / 10))
    means = [statistics.fmean(top[i - w : i]) for i in range(w, len(top) + 1)]
    best = max(range(len(means)), key=means.__getitem__)
    return round(means[best] - means[-1], 9) + 0.0, (best + w) / len(top)


def schedule_rows(records: list[RunRecord], key: str) -> list[dict]:
    """Per regime and arm compared in the gains (pre-trained, each baseline): how far its runs
    ended below their best stretch (:func:`schedule_end`), mean and worst, and where that
    stretch lay (median share of the schedule). A schedule run past its peak shows here; then
    a gain over that arm is partly its schedule's, not pre-training's."""
    arms: dict[tuple, dict[Path, RunRecord]] = {}
    for rest, v, kind, b, _ in compared_pairs(records, key):
        arms.setdefault((rest, v.label_fraction, "variant"), {})[v.dir] = v
        arms.setdefault((rest, v.label_fraction, kind), {})[b.dir] = b
    rows = []
    for (regime, lf, arm), runs in arms.items():
        ends = [e for e in (schedule_end(r.curve) for r in runs.values()) if e is not None]
        if ends:
            rows.append(
                {
                    "regime": regime,
                    "labels": lf,
                    "arm": arm,
                    "n": len(ends),
                    "epochs": statistics.median(len(r.curve) for r in runs.values()),
                    "shortfall": statistics.fmean(e[0] for e in ends),
                    "worst": max(e[0] for e in ends),
                    "best_at": statistics.median(e[1] for e in ends),
                }
            )
    return rows


def schedule_table(rows: list[dict]) -> str:
    lines = [
        "| regime | labels | arm | n | epochs | last tenth below best tenth (points): mean, "
        "worst | best tenth ends at |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        arm = "pre-trained" if r["arm"] == "variant" else BASELINES[r["arm"]].label
        lines.append(
            f"| {r['regime']} | {r['labels']:.0%} | {arm} | {r['n']} | {r['epochs']:g} | "
            f"{r['shortfall']:.2f}, {r['worst']:.2f} | {r['best_at']:.0%} |"
        )
    return "\n".join(lines)


def regime_name(axes: dict) -> str:
    """What a variant changes, with the config keys in full (``finetune.epochs=50``, never the
    cell name's bare ``epochs=50``); ``pre-trained`` for the default recipe."""
    return ", ".join(f"{k}={cell_name({k: v}).split('=', 1)[1]}" for k, v in axes.items()) or (
        "pre-trained"
    )


def core_minutes(r: RunRecord) -> float | None:
    """What a run cost (:func:`vitmim.runs.core_seconds` of its epochs, in minutes): its
    fine-tune, plus for a pre-trained run its pre-training, also where the restorer was shared
    (each run that uses it pays for it in full)."""
    costs = [core_seconds(curve, manifest) for curve, manifest in _stages(r)]
    if not r.curve or any(c is None for c in costs):
        return None
    return sum(c for c in costs if c is not None) / 60


def cost_bound(r: RunRecord) -> bool:
    """Whether :func:`core_minutes` of ``r`` is only an upper bound (:func:`cost_is_bound`)."""
    return any(cost_is_bound(curve, manifest) for curve, manifest in _stages(r))


def _stages(r: RunRecord) -> list[tuple[list[dict], dict]]:
    """The epochs and manifest of each stage that ``r`` pays for (:func:`core_minutes`)."""
    stages = [(r.curve, r.dir)] + (
        [(r.pretrain_curve, r.dir.parent / "pretrain")] * bool(r.pretrain_curve)
    )
    return [(curve, json_object(d / "manifest.json")) for curve, d in stages]


def bootstrap_interval(
    values: list[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile interval of the mean of ``values`` (paired gains, one per subset x seed),
    resampling the pairs with replacement; None for fewer than 2 pairs. Seeded: a report
    rebuilt from the same records gives the same interval."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    x = np.asarray(values, dtype=float)
    means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def regime_rows(gains: list[Gain]) -> list[dict]:
    """Per regime (variant x label fraction) and baseline: the gain's mean, std, n, 95 %
    bootstrap interval and each arm's mean cost in core-minutes."""
    rows = []
    for variant, lf, kind in dict.fromkeys((g.variant, g.label_fraction, g.kind) for g in gains):
        mine = [g for g in gains if (g.variant, g.label_fraction, g.kind) == (variant, lf, kind)]
        mean, std, n = mean_std([g.value for g in mine])
        costs = [
            mean_std([c for c in cs if c is not None])[0]
            for cs in ([g.cost for g in mine], [g.baseline_cost for g in mine])
        ]
        rows.append(
            {
                "regime": variant,
                "labels": lf,
                "baseline": kind,
                "gain": mean,
                "std": std,
                "n": n,
                "ci95": bootstrap_interval([g.value for g in mine]),
                "pretrained_core_min": costs[0],
                "baseline_core_min": costs[1],
                "pretrained_cost_bound": any(g.cost_bound for g in mine),
                "baseline_cost_bound": any(g.baseline_cost_bound for g in mine),
            }
        )
    return rows


def regime_table(rows: list[dict]) -> str:
    lines = [
        "| regime | labels | against | gain (points) | 95 % interval | n | core-min "
        "pre-trained | core-min baseline |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ci = f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]" if r["ci95"] else "-"
        cost = [
            _cost(r["pretrained_core_min"], r["pretrained_cost_bound"]),
            _cost(r["baseline_core_min"], r["baseline_cost_bound"]),
        ]
        lines.append(
            f"| {r['regime']} | {r['labels']:.0%} | {BASELINES[r['baseline']].label} | "
            f"**{_signed(r['gain'], r['std'])}** | {ci} | {r['n']} | {cost[0]} | "
            f"{cost[1]} |"
        )
    return "\n".join(lines)


def _cost(minutes: float | None, bound: bool) -> str:
    """Core-minutes, marked ``≤`` where they are only an upper bound."""
    return "-" if minutes is None else ("≤" if bound else "") + f"{minutes:.0f}"


def gains_table(gains: list[Gain], key: str) -> str:
    """Gain per (variant, labels, subset, seed) and per baseline, then mean ± std over all."""
    kinds = [k for k in BASELINES if any(g.kind == k for g in gains)]
    by: dict[tuple, dict[str, float]] = {}
    for g in gains:
        by.setdefault((g.variant, g.label_fraction, g.subset, g.seed), {})[g.kind] = g.value
    head = [
        "variant",
        "labels",
        key.split(".")[-1],
        "seed",
        *(BASELINES[k].gain_head for k in kinds),
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] * 4 + ["---:"] * len(kinds)) + " |",
    ]

    def order(item):  # variant, full labels first, subsets by value (3 before 10), seed
        (variant, lf, subset, seed), _ = item
        return variant, -lf, _axes_key({key: subset}), seed

    for (variant, lf, subset, seed), d in sorted(by.items(), key=order):
        lines.append(
            f"| {variant} | {lf:.0%} | {subset} | {seed} | "
            + " | ".join(f"{d[k]:+.2f}" if k in d else "-" for k in kinds)
            + " |"
        )
    for variant, lf in dict.fromkeys((v, lf) for v, lf, _, _ in by):
        cells = []
        for k in kinds:
            m, sd, n = mean_std(
                [
                    g.value
                    for g in gains
                    if g.kind == k and g.variant == variant and g.label_fraction == lf
                ]
            )
            cells.append("-" if m is None else f"**{_signed(m, sd)}** (n={n})")
        lines.append(
            f"| {variant}, all subsets | {lf:.0%} | all | all | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def recipe_text(recipe: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(recipe.items())) or "the fine-tune recipe"


def rank_recipes(records: list[RunRecord]) -> list[tuple[dict, tuple]]:
    """Scratch recipes (the same-recipe baseline as ``{}``) by mean top-1 over every finished
    run with all labels, pooled over class subsets and seeds, best first; only recipes with as
    many runs as the most complete one, so that no recipe wins on fewer subsets."""
    full = max((r.label_fraction for r in records), default=1.0)
    pools: dict[str, tuple[dict, list[float]]] = {}
    for r in records:
        if (value := top1(r)) is not None and r.kind in RECIPE_KINDS and r.label_fraction == full:
            recipe = r.recipe if is_tuned(r.kind) else {}
            pools.setdefault(repr(sorted(recipe.items())), (recipe, []))[1].append(value)
    most = max((len(v) for _, v in pools.values()), default=0)
    ranked = [(recipe, mean_std(v)) for recipe, v in pools.values() if len(v) == most]
    return sorted(ranked, key=lambda rs: -rs[1][0])


def recipes_table(ranked: list[tuple[dict, tuple]]) -> str:
    lines = [
        "| scratch recipe | n | val top-1 % | Δ vs the fine-tune recipe |",
        "| --- | ---: | ---: | ---: |",
    ]
    same = next((stat for recipe, stat in ranked if not recipe), None)
    for recipe, stat in ranked:
        diff = "-" if same is None or not recipe else f"{stat[0] - same[0]:+.2f}"
        lines.append(f"| {recipe_text(recipe)} | {stat[2]} | {_pm(stat[0], stat[1])} | {diff} |")
    return "\n".join(lines)


def write_recipe(
    ranked: list[tuple[dict, tuple]], runs_dir: Path, path: Path, subsets: str
) -> Path:
    """``scratch_recipe.yaml``: the best recipe as a config file for ``vitmim grid -c``."""
    recipe, (mean, std, n) = ranked[0]
    head = [
        f"# The scratch recipe with the best mean val top-1 ({_pm(mean, std)} %, n={n} runs "
        f"pooled over seeds and the class subsets {subsets}) in {runs_dir.resolve()}, "
        f"chosen by `vitmim report`. Measure it on other subsets than these.",
        "# An empty section: the fine-tune recipe itself won, so there is no tuned recipe.",
        "#   vitmim grid configs/grids/unseen_subsets.yaml -c THIS_FILE --data DATA",
    ]
    text = "\n".join(head if not recipe else head[:1] + head[2:]) + "\n"
    text += yaml.safe_dump({"scratch": recipe}, sort_keys=True)
    outputs.write_text(path, text)
    return path


def recipe_note(records: list[RunRecord]) -> str:
    """What the tuned scratch baseline trained with, or that there is none."""
    recipes = list(dict.fromkeys(recipe_text(r.recipe) for r in records if is_tuned(r.kind)))
    if not recipes:
        return (
            "No tuned scratch recipe in these runs: every scratch baseline trains with the "
            "pre-trained model's fine-tune recipe (config section `scratch` and baseline "
            "`scratch_tuned` add one)."
        )
    return "Tuned scratch recipe: " + "; ".join(recipes) + "."


# ---------------------------------------------------------------------------------------------
# plots


CELL_AXIS = "cell"  # x axis of variants that do not share their axes: one point per cell


def _x_axis(rows: list[Row]) -> str | None:
    """The variant axis drawn along x: the mask ratio if it varies, else the axis with the most
    values (the first of equals). When the cells name different axes (an explicit variant
    list), the class subset if every cell names one (each variant a line over the subsets),
    else ``CELL_AXIS``. None without axes."""
    keys = list(rows[0].axes) if rows else []
    if any(set(r.axes) != set(keys) for r in rows):
        shared = [k for k in SUBSET_KEYS if all(k in r.axes for r in rows)]
        return shared[0] if shared else CELL_AXIS
    counts = {k: len({repr(r.axes.get(k)) for r in rows}) for k in keys}
    ratio = [k for k in keys if k.endswith("mask_ratio") and counts[k] > 1]
    return (ratio or sorted(keys, key=lambda k: -counts[k]) or [None])[0]


def _x_value(row: Row, x_key: str | None):
    return row.cell if x_key == CELL_AXIS else row.axes.get(x_key, "")


def _axis_names(rows: list[Row]) -> dict[str, str]:
    """Each axis by its last part (``mask_patch``), or in full where two would read alike
    (``pretrain.epochs`` beside ``finetune.epochs``)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.axes))
    short = [k.split(".")[-1] for k in keys]
    return {k: s if short.count(s) == 1 else k for k, s in zip(keys, short)}


def _series(rows: list[Row], x_key: str | None, baselines: Sequence[Row] = ()) -> dict:
    """Variant rows grouped into lines by every axis except ``x_key`` and the label fraction
    (a panel's own); baselines that vary along ``x_key`` too make lines of their own, named
    after their kind."""
    if x_key == CELL_AXIS:
        return {"pre-trained": list(rows)}
    names = _axis_names([*rows, *baselines])
    lines: dict[str, list[Row]] = {}
    for row in [*rows, *baselines]:
        rest = ", ".join(
            f"{names[k]}={v}"
            for k, v in row.axes.items()
            if k not in (x_key, "data.label_fraction")
        )
        if row.kind == "variant":
            label = rest or "pre-trained"
        else:
            label = BASELINES[row.kind].label + (f", {rest}" if rest else "")
        lines.setdefault(label, []).append(row)
    return lines


def _positions(rows: list[Row], x_key: str | None) -> tuple[dict, list]:
    """x position of each axis value: the value itself when numeric, else its index."""
    values = list(dict.fromkeys(_x_value(r, x_key) for r in rows))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return ({v: (v if numeric else i) for i, v in enumerate(values)}, [] if numeric else values)


def _metric_panel(
    ax, variants: list[Row], baselines: list[Row], get, x_key: str | None, ylabel: str
) -> None:
    """Mean ± std against the x axis, one line per series. A baseline that varies along x
    (scratch on each class subset) is a dashed line of its own; one that does not, a mean ± std
    band."""
    along = [b for b in baselines if x_key in b.axes and x_key != CELL_AXIS]
    pos, labels = _positions([*variants, *along], x_key)
    by_cell = x_key == CELL_AXIS  # separate cells: points, no connecting line
    for i, (label, rows) in enumerate(_series(variants, x_key, along).items()):
        pts = [(pos[_x_value(r, x_key)], *r.stat(get)) for r in rows]
        pts = sorted(p for p in pts if p[1] is not None)
        if pts:
            base = rows[0].kind != "variant"
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] or 0.0 for p in pts],
                marker="s" if base else "o",
                capsize=3,
                label=_wrap(label),
                color="0.35" if base else f"C{i}",
                ls="none" if by_cell else "--" if base else "-",
            )
    for j, b in enumerate(b for b in baselines if b not in along):
        mean, std, n = b.stat(get)
        if mean is None:
            continue
        color = f"C{7 + j % 3}"
        ax.axhline(mean, color=color, ls="--", lw=1, label=_wrap(f"{b.cell} (n={n})"))
        if std:
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.15)
    if labels:
        ax.set_xticks(
            range(len(labels)),
            [_wrap(str(v), 24) for v in labels] if by_cell else [str(v) for v in labels],
            fontsize=7 if by_cell else None,
        )
    elif pos and all(isinstance(v, int) for v in pos):  # class subsets: whole numbers only
        ax.set_xticks(sorted(pos.values()))
    ax.set_xlabel((x_key or "").split(".")[-1] or "variant")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _wrap(text: str, width: int = 44) -> str:
    """A long cell, regime or series name on several lines, broken after its commas."""
    return textwrap.fill(re.sub(r",\s*", ", ", text), width, break_long_words=False)


def _legend(ax, fontsize: int) -> None:
    """A legend where something is labelled (a grid without probes leaves those panels bare);
    beside the axes when it has more lines than fit inside without hiding the data."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if sum(label.count("\n") + 1 for label in labels) > 4:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    else:
        ax.legend(fontsize=fontsize)


def _figure(ncols: int, nrows: int = 1, size: tuple[float, float] = (5.5, 4)):
    # imported on use, with a file-only backend chosen first: pyplot costs ~0.3 s and picks a
    # screen backend when imported bare
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False
    )
    return fig, axes


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:  # tight: legends beside the axes and long tick labels are kept whole
        outputs.write_file(
            path,
            lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"),
            inside=path.parent.parent,
        )
    finally:
        plt.close(fig)
    return path


def plot_accuracy(rows: list[Row], path: Path) -> Path:
    """Fine-tuned top-1 vs the x axis (mask ratio), one panel per label fraction."""
    fractions = sorted({r.label_fraction for r in rows}, reverse=True)
    fig, axes = _figure(len(fractions))
    x_key = _x_axis([r for r in rows if r.kind == "variant"])
    for ax, lf in zip(axes[0], fractions):
        variants = [r for r in rows if r.kind == "variant" and r.label_fraction == lf]
        baselines = [r for r in rows if r.kind != "variant" and r.label_fraction == lf]
        _metric_panel(ax, variants, baselines, top1, x_key, "val top-1 %")
        ax.set_title(f"fine-tuned, {lf:.0%} of labels (mean ± std over seeds)")
        _legend(ax, 7)
    return _save(fig, path)


def plot_signals(rows: list[Row], path: Path) -> Path:
    """What pre-training alone learned: k-NN, linear probe, and the restoration's L1 and
    PSNR (pixel space, masked cells: what the reconstruction images show) vs the x axis."""
    lf = max(r.label_fraction for r in rows)  # pre-training does not depend on labels
    variants = [r for r in rows if r.kind == "variant" and r.label_fraction == lf]
    random_init = [
        r
        for r in rows
        if r.kind in BASELINES and BASELINES[r.kind].probe and r.label_fraction == lf
    ]
    x_key = _x_axis(variants)
    panels = [
        ("knn", "k-NN top-1 % (frozen)", random_init),
        ("linear", "linear probe top-1 % (frozen)", random_init),
        ("l1", "restored L1, masked pixels 0-1 (val)", []),
        ("psnr", "restored PSNR dB, masked pixels (val)", []),
    ]
    # a grid run without probes (or records without L1) leaves no empty panels behind
    panels = [p for p in panels if any(r.values(METRICS[p[0]]) for r in variants)] or panels
    fig, axes = _figure(2, (len(panels) + 1) // 2)
    for ax, (name, label, refs) in zip(axes.flat, panels):
        _metric_panel(ax, variants, refs, METRICS[name], x_key, label)
        _legend(ax, 7)
        if name == "knn":
            ax.set_title("frozen backbones (dashed: random init)")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, path)


# axis titles of the metrics the curves show
CURVE_LABELS = {
    "val_top1": "validation top-1 accuracy (%)",
    "val_psnr": "restored PSNR dB (held-out, masked pixels)",
    "val_loss": "loss on held-out images (loss space)",
    "train_loss": "training loss",
}


def stage_label(r: RunRecord, stage: str) -> str:
    """What a curve or reconstruction of ``r`` is called: its cell, except that the stage
    folders of one `vitmim run` (cell ``finetune``) name their pre-training ``pretrain``."""
    return "pretrain" if stage == "pretrain" and r.cell == "finetune" else r.cell


def plot_curves(records: list[RunRecord], path: Path, stage: str) -> Path:
    """Per-epoch curves of every run, one colour per cell: fine-tune val top-1, or pre-train
    restored PSNR (pixel space, what the reconstructions show), and the loss on held-out and on
    training images (loss space)."""
    keys = ["val_top1"] if stage == "finetune" else ["val_psnr", "val_loss", "train_loss"]
    fig, axes = _figure(len(keys))
    import matplotlib.pyplot as plt  # after _figure, which chose the backend

    cells = list(dict.fromkeys((r.cell, r.label_fraction) for r in records))
    seen_dirs, named = set(), set()
    for r in sorted(records, key=lambda r: r.seed):
        curve = r.curve if stage == "finetune" else r.pretrain_curve
        if not curve or (stage == "pretrain" and r.dir.parent in seen_dirs):
            continue  # one pre-training serves every label fraction: draw it once
        seen_dirs.add(r.dir.parent)
        i = cells.index((r.cell, r.label_fraction))
        name = _wrap(
            stage_label(r, stage) + (f" {r.label_fraction:.0%}" if r.label_fraction < 1 else "")
        )
        for ax, key in zip(axes[0], keys):
            ax.plot(
                [c["epoch"] for c in curve],
                [c.get(key) for c in curve],
                color=f"C{i}" if len(cells) <= 10 else plt.get_cmap("tab20")(i % 20),
                alpha=0.8,
                lw=1,
                marker=".",
                ms=4,
                label=None if name in named else name,
            )
        named.add(name)
    for ax, key in zip(axes[0], keys):
        ax.set_xlabel("epoch")
        ax.set_ylabel(CURVE_LABELS.get(key, key))
        ax.grid(alpha=0.3)
        _legend(ax, 6)
    return _save(fig, path)


def plot_regimes(rows: list[dict], path: Path) -> Path:
    """The gain of pre-training per regime, one row each (a forest plot): the mean with its
    95 % bootstrap interval and its figures beside it, one colour per baseline; under each
    regime's name its share of the labels and the cost of its pre-trained arm."""
    regimes = list(dict.fromkeys((r["regime"], r["labels"]) for r in rows))
    kinds = list(dict.fromkeys(r["baseline"] for r in rows))
    fig, axes = _figure(1, size=(8, 1.2 + 0.45 * len(regimes) * (len(kinds) + 1)))
    ax = axes[0][0]
    ends = [0.0]
    for j, kind in enumerate(kinds):
        dy = (j - (len(kinds) - 1) / 2) * 0.8 / len(kinds)
        for i, reg in enumerate(regimes):
            r = next(
                (r for r in rows if (r["regime"], r["labels"]) == reg and r["baseline"] == kind),
                None,
            )
            if r is None:
                continue
            lo, hi = r["ci95"] or (r["gain"], r["gain"])
            ends += [lo, hi]
            ax.errorbar(
                r["gain"],
                i + dy,
                xerr=[[r["gain"] - lo], [hi - r["gain"]]],
                fmt="o",
                color=f"C{j}",
                capsize=4,
                label=BASELINES[kind].label if i == 0 or reg == regimes[0] else None,
            )
            figures = f"{r['gain']:+.1f}" + (f" [{lo:+.1f}, {hi:+.1f}]" if r["ci95"] else "")
            ax.annotate(
                f"{figures}  n={r['n']}",
                (hi, i + dy),
                xytext=(8, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color=f"C{j}",
            )
    names = []
    for reg in regimes:
        r = next(
            (r for r in rows if (r["regime"], r["labels"]) == reg and r["pretrained_core_min"]),
            None,
        )
        cost = _cost(r["pretrained_core_min"], r["pretrained_cost_bound"]) if r else None
        names.append(
            _wrap(reg[0], 40) + f"\n{reg[1]:.0%} labels" + (f", {cost} core-min" if cost else "")
        )
    span = max(ends) - min(ends) or 1.0
    ax.set_xlim(min(ends) - 0.08 * span, max(ends) + 0.45 * span)  # room for the figures
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(regimes)), names, fontsize=8)
    ax.set_ylim(len(regimes) - 0.5, -0.5)  # the table's order, top to bottom
    ax.set_xlabel("gain of pre-training, val top-1 points")
    ax.set_title(
        "gain per regime: mean and 95 % paired-bootstrap interval over subsets x seeds", fontsize=9
    )
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 * 4 / len(regimes)))
    return _save(fig, path)


def plot_gains(gains: list[Gain], key: str, path: Path) -> Path:
    """Gain of pre-trained over each baseline per class subset: one dot per seed, a bar at the
    subset's mean, and the mean ± std over all subsets and seeds as a dashed line and band;
    one panel per (variant, label fraction), three to a row."""
    panels = list(dict.fromkeys((g.variant, g.label_fraction) for g in gains))
    subsets = sorted({g.subset for g in gains}, key=lambda v: (str(type(v)), v))
    kinds = [k for k in BASELINES if any(g.kind == k for g in gains)]
    ncols = min(len(panels), 3)
    fig, axes = _figure(ncols, -(-len(panels) // ncols), size=(5, 4))
    for ax, (variant, lf) in zip(axes.flat, panels):
        for j, kind in enumerate(kinds):
            mine = [
                g for g in gains if (g.variant, g.label_fraction, g.kind) == (variant, lf, kind)
            ]
            dx, color = (j - (len(kinds) - 1) / 2) * 0.8 / max(len(kinds), 1), f"C{j}"
            for i, sub in enumerate(subsets):
                vals = [g.value for g in mine if g.subset == sub]
                if vals:
                    ax.plot([i + dx] * len(vals), vals, "o", color=color, alpha=0.5, ms=4)
                    ax.plot(
                        [i + dx - 0.08, i + dx + 0.08],
                        [sum(vals) / len(vals)] * 2,
                        color=color,
                        lw=2.5,
                    )
            mean, std, n = mean_std([g.value for g in mine])
            if mean is not None:
                ax.axhline(
                    mean,
                    color=color,
                    ls="--",
                    lw=1,
                    label=f"{BASELINES[kind].gain_head}: {_signed(mean, std, 1)} (n={n})",
                )
                if std:
                    ax.axhspan(mean - std, mean + std, color=color, alpha=0.1)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(subsets)), [str(v) for v in subsets])
        ax.set_xlabel(key)
        ax.set_ylabel("gain of pre-training, val top-1 points")
        ax.set_title(_wrap(f"{variant}, {lf:.0%} of labels", 60), fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax, 7)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("gain per class subset (dots: seeds; bars: subset means)", fontsize=10)
    return _save(fig, path)


def copy_reconstructions(records: list[RunRecord], out: Path) -> list[tuple[str, Path]]:
    """First and last epoch reconstruction grid of each variant's first finished seed."""
    shown, done = [], set()
    for r in sorted(records, key=lambda r: r.seed):
        images = sorted((r.dir.parent / "pretrain" / "images").glob("recon_epoch*.png"))
        if r.kind != "variant" or r.cell in done or not images:
            continue
        done.add(r.cell)
        for img in dict.fromkeys([images[0], images[-1]]):
            name = stage_label(r, "pretrain")
            dest = out / "recon" / f"{name}_seed{r.seed}_{img.stem}.png"
            outputs.write_file(dest, _copier(img), inside=out)
            shown.append((f"{name}, seed {r.seed}, {img.stem.split('_')[-1]}", dest))
    return shown


# ---------------------------------------------------------------------------------------------
# the page


def _copier(src: Path) -> Callable[[Path], object]:
    """A writer of ``src``'s bytes to the path it is given."""
    data = src.read_bytes()
    return lambda p: p.write_bytes(data)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
    "padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}figure{display:inline-block;margin:.5em}figcaption{font-size:12px}"
)


def _html_block(text: str) -> str:
    """A markdown section as HTML: runs of ``|`` lines become a table, other lines paragraphs."""
    e, out = html.escape, []
    rows: list[str] = []

    def flush():
        if rows:
            cells = [
                [c.strip().replace("**", "") for c in ln.strip("|").split("|")]
                for ln in rows
                if not set(ln) <= set("|-: ")
            ]
            out.append(
                "<table>"
                + "".join(
                    "<tr>" + "".join(f"<t{t}>{e(c)}</t{t}>" for c in row) + "</tr>"
                    for t, row in zip(["h"] + ["d"] * len(cells), cells)
                )
                + "</table>"
            )
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            rows.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{e(line).replace('**', '')}</p>")
    flush()
    return "".join(out)


def html_page(
    title: str,
    summary: list[dict],
    plots: list[tuple[str, Path]],
    recons: list[tuple[str, Path]],
    sections: Sequence[tuple[str, str]] = (),
) -> str:
    """One self-contained page: inline CSS, images as data URIs, no scripts, no links out."""
    e = html.escape
    kinds, top5 = compared(summary), has_top5(summary)
    head = "".join(f"<th>{e(h)}</th>" for h in table_head(kinds, top5))
    body = "".join(
        "<tr>" + "".join(f"<td>{e(c)}</td>" for c in table_cells(d, kinds, top5)) + "</tr>"
        for d in summary
    )
    rule = e(RULE).replace("**", "")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>",
        f"<h2>Results</h2><table><tr>{head}</tr>{body}</table><p>{rule}</p>",
    ]
    parts += [f"<h2>{e(name)}</h2>{_html_block(text)}" for name, text in sections]
    parts.append("<h2>Plots</h2>")
    parts += [
        f"<figure><img alt='{e(c)}' src='{_data_uri(p)}'><figcaption>{e(c)}</figcaption></figure>"
        for c, p in plots
    ]
    parts.append("<h2>Reconstructions (original | masked | restored)</h2>")
    parts += [
        f"<figure><img alt='{e(c)}' src='{_data_uri(p)}'><figcaption>{e(c)}</figcaption></figure>"
        for c, p in recons
    ]
    return "\n".join(parts) + "\n</body></html>\n"


def markdown_page(
    title: str,
    summary: list[dict],
    plots: list[tuple[str, Path]],
    recons: list[tuple[str, Path]],
    out: Path,
    sections: Sequence[tuple[str, str]] = (),
) -> str:
    lines = [f"# {title}", "", markdown_table(summary), "", RULE, ""]
    for name, text in sections:
        lines += [f"## {name}", "", text, ""]
    lines += ["## Plots", ""]
    lines += [f"![{c}]({p.relative_to(out).as_posix()})" for c, p in plots]
    lines += ["", "## Reconstructions (original | masked | restored)", ""]
    lines += [f"![{c}]({p.relative_to(out).as_posix()})" for c, p in recons]
    return "\n".join(lines) + "\n"


def reference_section(runs_dir: Path, summary: list[dict]) -> list[tuple[str, str]]:
    """Published figures the grid reproduces (its spec's ``reference``, kept in grid.json) beside
    this grid's: scratch, the best pre-trained cell and their difference, full labels only."""
    status = runs_dir / "grid.json"
    ref = (
        config.read_json_mapping(status, "grid status").get("reference")
        if status.is_file()
        else None
    )
    if not ref:
        return []
    full = [d for d in summary if d["label_fraction"] == 1.0 and d["top1_mean"] is not None]
    scratch = next((d for d in full if d["kind"] == "scratch"), None)
    best = max(
        (d for d in full if d["kind"] == "variant"), key=lambda d: d["top1_mean"], default=None
    )

    def ours(d: dict | None) -> str:
        return "not run" if d is None else f"{_pm(d['top1_mean'], d['top1_std'])} (n={d['n']})"

    gain = (
        "-"
        if scratch is None or best is None
        else f"{best['top1_mean'] - scratch['top1_mean']:+.2f}"
    )
    lines = [
        f"| top-1 % | {ref['source']} | this grid |",
        "| --- | ---: | ---: |",
        f"| scratch | {ref['scratch']:.1f} | {ours(scratch)} |",
        f"| best pre-trained | {ref['best']:.1f} | {ours(best)}"
        f"{'' if best is None else ' ' + best['cell']} |",
        f"| best - scratch | {ref['best'] - ref['scratch']:+.1f} | {gain} |",
    ]
    return [("Beside the published figures", "\n".join(lines))]


REPORT_FILES = (
    "report.md",
    "report.csv",
    "runs.csv",
    "report.html",
    "gains.csv",
    "scratch_recipe.yaml",
    "plots/accuracy.png",
    "plots/curves.png",
    "plots/signals.png",
    "plots/restoration.png",
    "plots/subset_gains.png",
)


def build_report(runs_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write report.md, report.csv, runs.csv, report.html and plots/ into ``out``
    (default ``RUNS_DIR/report``) for a grid folder or one ``vitmim run`` folder; returns the
    HTML path. Per-subset gains add gains.csv, a scratch recipe search scratch_recipe.yaml."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise CheckpointError(f"{runs_dir}: not a folder of runs")
    out = Path(out) if out else runs_dir / "report"
    outputs.check_folder(out, REPORT_FILES)  # before anything is written: no half a report
    single = not any(runs_dir.glob("*/seed*/cell.json")) and is_run_folder(runs_dir)
    records = collect_run(runs_dir) if single else collect(runs_dir)
    rows = group(records)
    summary = summarise(rows)
    sections = [*reference_section(runs_dir, summary), ("Baselines", recipe_note(records))]
    if single:
        sections.insert(0, ("Stages", _run_table(runs_dir)))
    plots = (
        []
        if single
        else [("fine-tuned accuracy vs masking", plot_accuracy(rows, out / "plots/accuracy.png"))]
    )
    plots.append(
        ("training curves (fine-tune)", plot_curves(records, out / "plots/curves.png", "finetune"))
    )
    if any(r.kind == "variant" and r.pretrain_curve for r in records):
        if not single:
            plots.append(("pre-training signals", plot_signals(rows, out / "plots/signals.png")))
        plots.append(
            (
                "pre-training: restored PSNR (pixel space), loss (loss space)",
                plot_curves(records, out / "plots/restoration.png", "pretrain"),
            )
        )
    sections += _subset_sections(records, out, plots)
    sections += _recipe_sections(records, runs_dir, out)
    recons = copy_reconstructions(records, out)
    title = f"vitmim report: {runs_dir.resolve().name}"
    outputs.write_text(
        out / "report.md", markdown_page(title, summary, plots, recons, out, sections)
    )
    outputs.write_text(out / "report.csv", csv_text(summary))
    outputs.write_text(out / "runs.csv", runs_csv_text(records, runs_dir))
    outputs.write_text(out / "report.html", html_page(title, summary, plots, recons, sections))
    return out / "report.html"


def _run_table(run_dir: Path) -> str:
    """The stages of one ``vitmim run`` with their wall times, as the run printed them."""
    summary = run_dir / "summary.json"
    if summary.exists():
        results = config.read_json_mapping(summary, "run summary")
    else:
        results = {
            d.name: last_metrics(d)
            for d in sorted(run_dir.iterdir())
            if (d / "config.yaml").exists()
        }
    return summary_table(results, class_count(*(run_dir / name for name in results)))


def _subset_sections(records: list[RunRecord], out: Path, plots: list) -> list[tuple[str, str]]:
    """The gain per class subset and seed (table, plot, gains.csv) where the subset varies."""
    key = subset_axis(records)
    gains = subset_gains(records, key) if key else []
    if key is None or not gains:
        return []
    regimes = regime_rows(gains)
    plots.append(
        ("gain of pre-training per regime", plot_regimes(regimes, out / "plots/regime_gains.png"))
    )
    plots.append(
        (
            "gain of pre-training per class subset",
            plot_gains(gains, key, out / "plots/subset_gains.png"),
        )
    )
    outputs.write_text(
        out / "gains.csv",
        _csv(
            [
                "variant",
                "label_fraction",
                "subset",
                "seed",
                "baseline",
                "gain",
                "core_min",
                "baseline_core_min",
            ],
            [
                [
                    g.variant,
                    g.label_fraction,
                    g.subset,
                    g.seed,
                    g.kind,
                    g.value,
                    g.cost,
                    g.baseline_cost,
                ]
                for g in gains
            ],
        ),
    )
    outputs.write_text(
        out / "regimes.csv",
        _csv(
            [
                "regime",
                "label_fraction",
                "baseline",
                "gain",
                "std",
                "n",
                "ci95_low",
                "ci95_high",
                "core_min",
                "baseline_core_min",
                "core_min_upper_bound",
                "baseline_core_min_upper_bound",
            ],
            [
                [
                    r["regime"],
                    r["labels"],
                    r["baseline"],
                    r["gain"],
                    r["std"],
                    r["n"],
                    *(r["ci95"] or (None, None)),
                    r["pretrained_core_min"],
                    r["baseline_core_min"],
                    r["pretrained_cost_bound"],
                    r["baseline_cost_bound"],
                ]
                for r in regimes
            ],
        ),
    )
    note = (
        f"Each row: the pre-trained run's val top-1 minus its baseline's, same seed and "
        f"class subset ({key}); the last row's std is over all subsets and seeds together."
    )
    regime_note = (
        "The gain per regime over every class subset and seed: mean ± sample std, a "
        "95 % percentile interval of the mean from a paired bootstrap (10,000 "
        "resamples of the subset x seed pairs; none for n < 2) and each arm's mean "
        "cost in core-minutes (the CPU time of its training epochs, evaluation included, "
        "or GPU time on a GPU; a shared restorer's pre-training counts in every arm that "
        "uses it). ≤: an upper bound, where some epochs were logged without their CPU time "
        "and count their wall time x threads, which a busy machine inflates."
    )
    ends = schedule_rows(records, key)
    ends_note = (
        "Whether each arm's fine-tune schedule ended at its best: per run, the mean val "
        "top-1 of its last tenth of epochs below that of its best tenth (0: it ended at "
        "its best), then the mean and the worst over the regime's runs, and where the best "
        "tenth ended (median over runs, share of the epochs). Tenths, not single epochs: "
        "the best of many noisy evaluations beats the last by noise alone. An arm that "
        "peaked well before its end was trained past its best: the gain over it is then "
        "partly its schedule's, not pre-training's."
    )
    return [
        ("Gain per regime", regime_table(regimes) + "\n\n" + regime_note),
        ("Did each schedule end at its best?", schedule_table(ends) + "\n\n" + ends_note),
        ("Gain per class subset", gains_table(gains, key) + "\n\n" + note),
    ]


def _csv(head: list[str], rows: list[list]) -> str:
    """A CSV table (quoted where a value holds a comma); None as an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def _recipe_sections(records: list[RunRecord], runs_dir: Path, out: Path) -> list[tuple[str, str]]:
    """The ranked scratch recipes and scratch_recipe.yaml, where several were tried."""
    ranked = rank_recipes(records)
    if len(ranked) < 2:
        return []
    key = subset_axis(records, RECIPE_KINDS)
    subsets = (
        f"{key} = " + ", ".join(sorted({str(r.axes.get(key)) for r in records}))
        if key
        else "of these runs"
    )
    path = write_recipe(ranked, runs_dir, out / "scratch_recipe.yaml", subsets)
    return [
        (
            "Scratch recipes, best first",
            recipes_table(ranked)
            + "\n\n"
            + f"Pooled over seeds and the class subsets ({subsets}); the best is written to "
            f"{path.name}, a config file for the next grid: `vitmim grid SPEC -c {path}`.",
        )
    ]
