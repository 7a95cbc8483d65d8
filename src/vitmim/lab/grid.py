"""``vitmim grid SPEC.yaml``: a grid of pre-training variants x seeds, plus scratch baselines.

A spec names the runs; every run is one folder and one job::

    OUT/<cell>/seed<k>/cell.json        what to run: kind, axes, seed, resolved config
    OUT/<cell>/seed<k>/status.json      running | done | failed (with the error line)
    OUT/<cell>/seed<k>/pretrain/        variants only: the restorer (+ probe.json)
    OUT/<cell>/seed<k>/finetune[_lfF]/  one classifier per label fraction F (< 1 only in the name)
    OUT/<cell>/seed<k>/summary.md       the run's table, as ``vitmim run`` writes it (+ .json)
    OUT/grid.json                       every run's status after the last invocation

Baselines (:data:`vitmim.baselines.BASELINES`): by default ``scratch`` (the fine-tune recipe
from random weights) and ``scratch_equal_compute`` (as many optimisation steps as pre-train +
fine-tune together); a spec may ask for the others. A tuned one is left out, with a note, where
no tuned recipe is set. Each baseline is planned once per distinct value of what changes it
(:func:`vitmim.baselines.baseline_axes`): the equal-FLOPs one follows the mask cell and ratio
only on the fast path, where they change the FLOPs. Work is done once: variants that agree on
the restorer's keys share one pre-training, and equal-compute baselines whose classifiers
resolve to the same training (regimes that pre-train differently but as much) share them.
``cross: {key: [values]}`` crosses every cell
with these axes, e.g. ``data.class_subset: [1, 2]`` to repeat a search on two class subsets.
Each run fine-tunes on its cell's ``data.label_fraction``, or once per share in the spec's
``label_fractions: [...]``; the grid sets the seeds from ``seeds:``. A config that sets either
where the grid would replace it is refused.
Finished runs are skipped, interrupted ones resumed from their checkpoints, a failed one is
recorded while the others go on: an interrupted grid continues when the same command runs again.
Jobs run as subprocesses here (``local``, ``--jobs N`` of them at once on the one device), or
through submitit as a job array (``slurm``, or ``submitit-local`` to try the same path on this
machine). One run can be repeated by hand with
``python -m vitmim.lab.grid OUT/<cell>/seed<k>/cell.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from vitmim import checkpoint, outputs
from vitmim.baselines import BASELINES, DEFAULT_BASELINES, baseline_axes, is_tuned, variant_axes
from vitmim.config import (
    PRESETS,
    Config,
    explicit_values,
    flatten,
    load_config,
    load_yaml,
    overrides_to_dict,
    pretrain_data,
    read_json_mapping,
    read_yaml_mapping,
    set_keys,
    to_dict,
)
from vitmim.data import ImageSet, load_splits, train_count, train_fingerprint
from vitmim.env import env_for
from vitmim.errors import CheckpointError, ConfigError, TrainingError, UserError, one_line
from vitmim.lab.progress import set_progress
from vitmim.lab.records import (
    Planned,
    is_recorded,
    mismatch,
    pass_costs,
    progress_line,
    record_as_twin,
    write_record,
)
from vitmim.lifetime import die_with_parent, sigterm_as_interrupt
from vitmim.pipeline import (
    classifier_stage,
    eta_text,
    run_all,
    stage_dirname,
    stage_recipe,
    without_tuned_recipe,
)
from vitmim.runs import (
    classifier_keys,
    device_kind,
    finished,
    json_object,
    restorer_keys,
    share_left,
)

# what cell.json must hold (name -> type) to be run or reported
CELL_KEYS = {
    "cell": str,
    "kind": str,
    "axes": dict,
    "seed": int,
    "label_fractions": list,
    "probe": bool,
    "config": dict,
}
SPEC_KEYS = {
    "base",
    "config",
    "variants",
    "cross",
    "seeds",
    "baselines",
    "label_fractions",
    "probe",
    "out",
    "records",
    "slurm",
    "reference",
}
# published figures a grid reproduces, shown beside its own by the report: top-1 % of scratch
# and of the best pre-trained cell, and where they come from
REFERENCE_KEYS: dict[str, type | tuple[type, ...]] = {
    "source": str,
    "scratch": (int, float),
    "best": (int, float),
}


@dataclass
class GridSpec:
    """A parsed grid spec; ``path`` anchors relative config files."""

    path: Path
    base: list[str] = field(default_factory=list)  # preset names or YAML paths
    config: dict = field(default_factory=dict)  # inline config, nested or dotted keys
    # the variant cells, each {dotted key: value}; a spec writes them as {key: [values]} (their
    # cartesian product) or as an explicit list
    variants: list[dict] = field(default_factory=lambda: [{}])
    seeds: list[int] = field(default_factory=lambda: [0])
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    # one fine-tune per share of labels; None: each cell's own data.label_fraction
    label_fractions: list[float] | None = None
    probe: bool = True  # k-NN + linear probe of each pre-trained model
    out: str | None = None
    records: str | None = None  # folder of finished runs' records (vitmim.lab.records)
    slurm: dict = field(default_factory=dict)  # submitit executor parameters
    reference: dict = field(default_factory=dict)  # see REFERENCE_KEYS


@dataclass
class Run:
    """One job: a variant (pre-train + fine-tune) or a baseline, for one seed."""

    cell: str
    kind: str  # "variant" | one of BASELINES
    axes: dict  # dotted key -> value of this cell
    seed: int
    dir: Path
    config: dict  # resolved, validated
    label_fractions: list[float]
    probe: bool
    # an earlier variant run of the plan whose restorer this one shares (the same
    # restorer_keys): its finished pre-training is linked in instead of repeated
    donor: Path | None = None
    # an earlier baseline run whose classifiers train exactly as this one's (an equal-compute
    # baseline of a regime that pre-trains otherwise but as much): its finished stages are
    # linked in instead of repeated
    twin: Path | None = None

    def stage_dirs(self) -> list[Path]:
        dirs = [self.dir / "pretrain"] if self.kind == "variant" else []
        return dirs + [self.dir / stage_dirname("finetune", lf) for lf in self.label_fractions]

    def twin_done(self) -> bool:
        """Whether its twin has finished every classifier stage it shares."""
        twin = self.twin
        return twin is not None and all(finished(twin / d.name) for d in self.stage_dirs())

    def extra_files(self) -> list[Path]:
        """Outputs besides the models whose absence means the run is unfinished."""
        if self.probe and self.kind == "variant":
            return [self.dir / "pretrain" / "probe.json"]
        if self.probe and self.kind in BASELINES and BASELINES[self.kind].probe:
            return [self.dir / "probe_random_init.json"]  # the reference the probes must beat
        return []

    def job(self) -> dict:
        return {
            "cell": self.cell,
            "kind": self.kind,
            "axes": self.axes,
            "seed": self.seed,
            "label_fractions": self.label_fractions,
            "probe": self.probe,
            "config": self.config,
        }


# ---------------------------------------------------------------------------------------------
# spec -> runs


def _expect(cond: bool, path: Path, key: str, what: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: key {key}: expected {what}")


def load_spec(path: str | Path) -> GridSpec:
    """Read and check a grid spec YAML; every problem names the file and key."""
    p = Path(path)
    raw = read_yaml_mapping(p, "grid spec")
    unknown = set(raw) - SPEC_KEYS
    _expect(
        not unknown,
        p,
        ", ".join(sorted(map(str, unknown))),
        f"one of {', '.join(sorted(SPEC_KEYS))} (unknown key)",
    )
    base = raw.get("base") or []
    base = [base] if isinstance(base, str) else base
    _expect(
        isinstance(base, list) and all(isinstance(b, str) for b in base),
        p,
        "base",
        "a preset name, a YAML path or a list of them",
    )
    spec = GridSpec(p, base=base)
    for key in ("config", "slurm"):
        value = raw.get(key) or {}
        _expect(isinstance(value, dict), p, key, "a mapping")
        setattr(spec, key, value)
    spec.variants = _cross(_check_variants(raw.get("variants") or {}, p), raw.get("cross"), p)
    _check_lists(raw, spec, p)
    spec.reference = _check_reference(raw.get("reference"), p)
    return spec


def _check_reference(ref, p: Path) -> dict:
    if ref is None:
        return {}
    what = "a mapping with source (text), scratch and best (top-1 %, numbers in [0, 100])"
    _expect(isinstance(ref, dict) and set(ref) == set(REFERENCE_KEYS), p, "reference", what)
    for key, tp in REFERENCE_KEYS.items():
        ok = isinstance(ref[key], tp) and not isinstance(ref[key], bool)
        _expect(ok and (key == "source" or 0 <= ref[key] <= 100), p, f"reference.{key}", what)
    return dict(ref)


def _check_variants(variants, p: Path) -> list[dict]:
    """The cells of {key: [values]} (their cartesian product) or of [{key: value, ...}, ...]
    (explicit, distinct cells, ``{}`` the base config; a cell's own ``seeds: [...]`` replaces
    the spec's for it and its baselines, e.g. for a costly cell run with fewer seeds)."""
    if isinstance(variants, dict):
        for key, values in variants.items():
            _expect(
                isinstance(values, list) and len(values) > 0,
                p,
                f"variants.{key}",
                "a non-empty list of values",
            )
        return [dict(zip(variants, vals)) for vals in itertools.product(*variants.values())]
    _expect(
        isinstance(variants, list) and bool(variants),
        p,
        "variants",
        "a mapping of keys to lists of values, or a non-empty list of mappings",
    )
    cells: list[dict] = []
    for i, cell in enumerate(variants):
        _expect(
            isinstance(cell, dict),
            p,
            f"variants[{i}]",
            "a mapping of config keys to values ({} for the base config itself)",
        )
        cell = dict(cell)
        seeds = cell.pop(SEEDS, None)
        _expect(
            seeds is None or _seed_list(seeds),
            p,
            f"variants[{i}].{SEEDS}",
            "a non-empty list of distinct integers",
        )
        flat = flatten(cell)
        _expect(
            flat not in [{k: v for k, v in c.items() if k != SEEDS} for c in cells],
            p,
            f"variants[{i}]",
            "a cell not listed before",
        )
        cells.append({**flat, **({SEEDS: seeds} if seeds is not None else {})})
    return cells


SEEDS = "seeds"  # in a variant cell: its own seeds (never a config key: those are dotted)


def _seed_list(seeds) -> bool:
    return (
        isinstance(seeds, list)
        and bool(seeds)
        and all(type(s) is int for s in seeds)
        and len(set(seeds)) == len(seeds)
    )


def _cross(cells: list[dict], cross, p: Path) -> list[dict]:
    """Every cell crossed with every combination of the ``cross`` axes (which come first)."""
    if cross is None:
        return cells
    _expect(
        isinstance(cross, dict) and bool(cross), p, "cross", "a mapping of keys to lists of values"
    )
    for key, values in cross.items():
        _expect(
            isinstance(values, list) and len(values) > 0,
            p,
            f"cross.{key}",
            "a non-empty list of values",
        )
        _expect(
            not any(key in cell for cell in cells),
            p,
            f"cross.{key}",
            "a key the variants do not set",
        )
    return [
        {**dict(zip(cross, vals)), **cell}
        for vals in itertools.product(*cross.values())
        for cell in cells
    ]


def _check_lists(raw: dict, spec: GridSpec, p: Path) -> None:
    seeds = raw.get("seeds", spec.seeds)
    _expect(_seed_list(seeds), p, "seeds", "a non-empty list of distinct integers")
    baselines = raw.get("baselines", spec.baselines) or []
    _expect(
        isinstance(baselines, list) and set(baselines) <= set(BASELINES),
        p,
        "baselines",
        f"a list of {', '.join(BASELINES)}",
    )
    lfs = raw.get("label_fractions", spec.label_fractions)
    _expect(
        lfs is None
        or isinstance(lfs, list)
        and bool(lfs)
        and all(isinstance(f, (int, float)) and 0 < f <= 1 for f in lfs),
        p,
        "label_fractions",
        "a non-empty list of numbers in (0, 1]",
    )
    probe = raw.get("probe", True)
    _expect(isinstance(probe, bool), p, "probe", "true or false")
    for key in ("out", "records"):
        _expect(raw.get(key) is None or isinstance(raw.get(key), str), p, key, "a folder path")
    spec.seeds, spec.baselines, spec.probe = seeds, baselines, probe
    spec.out, spec.records = raw.get("out"), raw.get("records")
    spec.label_fractions = None if lfs is None else [float(f) for f in lfs]


def _base_files(spec: GridSpec) -> list[Path]:
    files = []
    for item in spec.base:
        preset = PRESETS / f"{item}.yaml"
        files.append(preset if "/" not in item and preset.exists() else spec.path.parent / item)
    return files


def cell_name(axes: dict) -> str:
    """``{"pretrain.mask_patch": 4, "pretrain.mask_ratio": 0.4}`` -> ``mask_patch=4,mask_ratio=0.4``
    (the full key where last parts would collide)."""
    lasts = [k.split(".")[-1] for k in axes]
    parts = []
    for key, last in zip(axes, lasts):
        name = last if lasts.count(last) == 1 else key
        value = "x".join(map(str, axes[key])) if isinstance(axes[key], list) else axes[key]
        parts.append(f"{name}={value}".replace("/", "_").replace(" ", ""))
    return ",".join(parts)


def _cells(
    spec: GridSpec, resolve: Callable[[str, dict], Config]
) -> list[tuple[str, str, dict, list[int]]]:
    """(cell name, kind, axes, seeds) for every variant and every distinct baseline (with the
    seeds of every variant it serves). ``resolve(cell, axes)``: the config of a cell, which
    decides what its baselines share."""
    combos = [{k: v for k, v in cell.items() if k != SEEDS} for cell in spec.variants]
    seeds_of = [cell.get(SEEDS, spec.seeds) for cell in spec.variants]
    cells: list[tuple[str, str, dict, list[int]]] = []

    def add(name: str, kind: str, axes: dict, seeds: list[int]) -> None:
        for i, (_, k, a, s) in enumerate(cells):
            if (k, a) == (kind, axes):
                cells[i] = (name, kind, axes, s + [x for x in seeds if x not in s])
                return
        cells.append((name, kind, axes, list(seeds)))

    for a, seeds in zip(map(variant_axes, combos), seeds_of):  # the tuned recipe does not pre-train
        add(cell_name(a) or "pretrained", "variant", a, seeds)
    configs = [resolve(cell_name(variant_axes(a)) or "pretrained", a) for a in combos]
    for kind in spec.baselines:
        for a, cfg, seeds in zip(combos, configs, seeds_of):
            proj = baseline_axes(kind, a, cfg)
            add(kind + (f",{cell_name(proj)}" if proj else ""), kind, proj, seeds)
    return cells


# keys the grid sets in every run from a list of the spec; a value given for them anywhere else
# (a base file, the spec's config, a cell, -c FILE, -o KEY=VALUE) would be silently replaced
GRID_SET = {"pretrain.seed": "seeds", "finetune.seed": "seeds"}


def _no_hidden_setting(spec: GridSpec, cell: str, explicit: set[str], cfg: Config) -> None:
    """Refuse a setting that the grid would replace: a seed given as a config key (``explicit``:
    the dotted keys set for this cell) or a share of labels given both in the config and in the
    spec's ``label_fractions`` (which fine-tunes once per share)."""
    hidden = sorted(explicit & GRID_SET.keys())
    if hidden:
        raise ConfigError(
            f"{spec.path}: cell {cell}: config key {hidden[0]} is set by the grid's "
            f"`{GRID_SET[hidden[0]]}:` list; give the seeds there"
        )
    share = cfg.data.label_fraction
    if spec.label_fractions is not None and share != 1.0:
        raise ConfigError(
            f"{spec.path}: cell {cell}: data.label_fraction {share:g} and the spec's "
            f"label_fractions {spec.label_fractions} both set the share of labels; keep one"
        )


def _note_cells_keep_their_own(given: dict, cells: list[tuple[str, dict]]) -> None:
    """Print which command-line settings the cells that set the same key replace: a cell's own
    value wins (it is what the cell is about), which the person who typed the other one
    should know."""
    for key, value in given.items():
        own = [cell for cell, axes in cells if key in axes and axes[key] != value]
        if own:
            print(
                f"note: {key}={value} from the command line does not apply to "
                f"{len(own)} cell(s) that set {key} themselves: {', '.join(own[:3])}"
                + (", ..." if len(own) > 3 else ""),
                flush=True,
            )


def plan(
    spec: GridSpec,
    out: Path,
    overrides: Sequence[str] = (),
    files: Sequence[str] = (),
    waiting: list[Run] | None = None,
) -> list[Run]:
    """Every run of the grid with its resolved config; bad values are refused before any work.
    ``files``: config files applied over the spec's config, before ``overrides``.
    A tuned baseline is left out where its config sets no tuned recipe (appended to
    ``waiting``, if given: it runs once a recipe is set)."""
    base = to_dict(load_config(list(_base_files(spec))))
    base = set_keys(base, flatten(spec.config))
    if files:
        base = to_dict(load_config(list(files), base=base))
    base = set_keys(base, flatten(overrides_to_dict(list(overrides))))

    def resolve(cell: str, axes: dict) -> Config:
        try:
            return load_config(base=set_keys(base, axes))
        except UserError as e:
            raise type(e)(f"{spec.path}: cell {cell}: {e}") from None

    explicit = set(flatten(explicit_values([*_base_files(spec), *files], overrides)))
    explicit |= set(flatten(spec.config))
    given = flatten(explicit_values(files, overrides))  # on the command line: -c, --set, --data
    runs: list[Run] = []
    cells = _cells(spec, resolve)
    _note_cells_keep_their_own(given, [(c, a) for c, k, a, _ in cells if k == "variant"])
    for cell, kind, axes, seeds in cells:
        for seed in seeds:
            cfg = resolve(cell, {**axes, "pretrain.seed": seed, "finetune.seed": seed})
            _no_hidden_setting(spec, cell, explicit | set(axes), cfg)
            untuned = is_tuned(kind) and not cfg.scratch
            if untuned and waiting is None:
                continue
            # the tuned recipe shapes the tuned arm alone: setting it must not make the other
            # runs new ones (their folders and records stay theirs)
            own = cfg if is_tuned(kind) else without_tuned_recipe(cfg)
            (waiting if untuned and waiting is not None else runs).append(
                Run(
                    cell,
                    kind,
                    axes,
                    seed,
                    out / cell / f"seed{seed}",
                    to_dict(own),
                    spec.label_fractions or [cfg.data.label_fraction],
                    spec.probe,
                )
            )
    assign_donors(runs)
    return runs


def assign_donors(runs: list[Run], todo: Collection[Path] | None = None) -> None:
    """Give each variant run the donor of its restorer: of the runs that share it (the same
    restorer_keys), one whose pre-training is finished on disk, else the first one still to
    run (``todo``: the runs still to run; every run when None), which trains it for the rest.
    A run recorded on another machine holds no restorer to lend, and a restorer left in some
    run folder is never trained again beside it."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.kind == "variant":
            key = json.dumps(restorer_keys(run.config), sort_keys=True)
            groups.setdefault(key, []).append(run)
    for group in groups.values():
        trained = [r for r in group if finished(r.dir / "pretrain")]
        left = [r for r in group if todo is None or r.dir in todo]
        donor = next(iter(trained or left), None)
        for run in group:
            run.donor = donor.dir if donor is not None and donor is not run else None


def assign_twins(runs: list[Run], todo: Collection[Path], recorded: Collection[Path] = ()) -> None:
    """Give each equal-compute baseline run the twin that trains its classifiers: of the runs of
    its kind and seed whose stages resolve to the same training (regimes that pre-train
    differently but as much, such as 100 epochs of a class subset and 5 of a pool twenty times
    larger, give their baselines the same length), one finished on disk, else one whose record
    is there (``recorded``: the others are recorded from it), else the first still to run
    (``todo``), which trains them for the rest. A length needs the data and the FLOPs, so only
    runs that agree on everything else are resolved."""
    alike: dict[str, list[Run]] = {}
    for run in runs:
        if (
            BASELINES.get(run.kind)
            and BASELINES[run.kind].equal
            and (run.dir in todo or run.dir in recorded or run_finished(run))
        ):
            key = [run.kind, run.seed, run.label_fractions, classifier_keys(run.config)]
            alike.setdefault(json.dumps(key, sort_keys=True), []).append(run)
    splits: dict[str, ImageSet] = {}  # training split per data config, read once

    def trained(run: Run) -> str:
        cfg = load_config(base=run.config)
        data = json.dumps([run.config["data"], cfg.model.img_size], sort_keys=True)
        if data not in splits:
            splits[data] = load_splits(cfg.data, cfg.model.img_size, progress=False)[0]
        stages = [
            classifier_keys(classifier_stage(cfg, run.kind, lf, splits[data])[0])
            for lf in run.label_fractions
        ]
        return json.dumps(stages, sort_keys=True)

    for group in (g for g in alike.values() if len(g) > 1):
        same: dict[str, list[Run]] = {}
        for run in group:
            same.setdefault(trained(run), []).append(run)
        for twins in same.values():
            on_disk = [r for r in twins if run_finished(r)]
            first = (on_disk or [r for r in twins if r.dir in recorded] or twins)[0]
            for run in twins:
                run.twin = first.dir if first is not run else None


# ---------------------------------------------------------------------------------------------
# one job


def comparisons_first(todo: list[Run]) -> list[Run]:
    """``todo`` in the order that completes comparisons early: each variant run followed by its
    baselines of the same seed (the runs its gains need), then whatever is left. A long grid
    stopped half-way then holds whole comparisons, not all variants and no baseline."""
    order: list[Run] = []
    for v in (r for r in todo if r.kind == "variant"):
        cfg = load_config(base=v.config)
        order.append(v)
        order += [
            b
            for b in todo
            if b.kind != "variant"
            and b.seed == v.seed
            and b not in order
            and baseline_axes(b.kind, v.axes, cfg) == b.axes
        ]
    return order + [r for r in todo if r not in order]


def run_finished(run: Run) -> bool:
    return all(finished(d) for d in run.stage_dirs()) and all(f.exists() for f in run.extra_files())


class Ledger:
    """Which planned runs are done: a finished run folder that holds the same run, or a record
    of it in the spec's ``records`` folder (:mod:`vitmim.lab.records`); it records every
    finished run there."""

    def __init__(self, records: Path | None, runs: Sequence[Run] = (), waiting: Sequence[Run] = ()):
        self.records = records
        self.runs = list(runs)  # the plan, whose progress line each new record moves
        self.waiting = list(waiting)  # runs of the study that wait for a tuned scratch recipe
        self._fingerprints: dict[str, str] = {}

    def record_dir(self, run: Run) -> Path | None:
        return self.records / run.cell / f"seed{run.seed}" if self.records else None

    def fingerprint(self, run: Run) -> str:
        """The training data of the planned run's first stage (a variant's pre-training pool),
        by content (memoised per data config)."""
        pool = run.config["pretrain"].get("pool", "classes") if run.kind == "variant" else None
        key = json.dumps(
            [run.config["data"], pool, run.config["model"]["img_size"]], sort_keys=True
        )
        if key not in self._fingerprints:  # the config is resolved once per distinct data
            cfg = load_config(base=run.config)
            data = pretrain_data(cfg) if run.kind == "variant" else cfg.data
            self._fingerprints[key] = train_fingerprint(data, cfg.model.img_size)
        return self._fingerprints[key]

    def state(self, run: Run) -> str:
        """``finished`` (its folder), ``recorded`` (its record) or ``todo``. A finished folder
        that holds another run is refused: continuing would mix two grids."""
        if run_finished(run):
            why = mismatch(run.dir, run.job(), self.fingerprint(run))
            if why:
                raise CheckpointError(
                    f"{run.dir}: holds a finished run that is not this grid's "
                    f"({why}); choose another --out, or delete the folder to run "
                    f"it again"
                )
            return "finished"
        rec = self.record_dir(run)
        if rec and is_recorded(rec) and not mismatch(rec, run.job(), self.fingerprint(run)):
            return "recorded"
        return "todo"

    def record(self, run: Run) -> None:
        """Record a finished run, unless its record is already there."""
        rec = self.record_dir(run)
        if rec and not (is_recorded(rec) and not mismatch(rec, run.job(), self.fingerprint(run))):
            write_record(run.dir, rec, run.stage_dirs())
            if self.runs:
                self.write_progress(self.runs)

    def record_from_twin(self, run: Run, twin: Run) -> bool:
        """Record ``run`` from the record of ``twin``, whose classifiers train exactly as its
        own (:func:`assign_twins`), instead of training them again; False where the twin's
        record is not that training (other training data)."""
        rec, theirs = self.record_dir(run), self.record_dir(twin)
        if rec is None or theirs is None or self.fingerprint(run) != self.fingerprint(twin):
            return False
        record_as_twin(theirs, rec, run.job(), [d.name for d in run.stage_dirs()])
        print(f"{run.cell} seed{run.seed}: recorded as {theirs}, whose classifiers it shares")
        return True

    def planned(self, run: Run, runs: list[Run], donor_to_come: bool = True) -> Planned:
        """``run`` with the image passes it trains, for the estimate of what is left: a variant
        pre-trains unless it shares the restorer of a run that has trained it (or, with
        ``donor_to_come``, is still to train it here); an equal-steps baseline trains as many
        classifier steps as its variant's two stages, an equal-FLOPs one as much compute, and
        one whose twin trains its classifiers (likewise) nothing."""
        cfg = load_config(base=run.config)
        images = train_count(cfg.data, cfg.model.img_size)
        pool = pretrain_data(cfg)
        pre = cfg.pretrain.epochs * (
            images if pool is cfg.data else train_count(pool, cfg.model.img_size)
        )
        classify = [
            (
                stage_recipe(cfg, run.kind, lf).finetune.epochs * images * lf,
                share_left(run.dir / stage_dirname("finetune", lf), "finetune"),
            )
            for lf in run.label_fractions
        ]
        if run.kind == "variant":
            donor = next((r for r in runs if r.dir == run.donor), None)
            shared = donor is not None and (
                finished(donor.dir / "pretrain") or donor_to_come and self.state(donor) == "todo"
            )
            left = 0.0 if shared else share_left(run.dir / "pretrain", "pretrain")
            return Planned(
                run.cell, run.kind, run.seed, pre * left, sum(n * f for n, f in classify)
            )
        twin = next((r for r in runs if r.dir == run.twin), None)
        if twin is not None and (
            run.twin_done() or donor_to_come and self.state(twin) == "todo"
        ):  # its twin trains its classifiers
            return Planned(run.cell, run.kind, run.seed, 0.0, 0.0)
        # a baseline at equal compute lengthens each of its classifier stages (one per share of
        # the labels) by the restorer's steps or FLOPs
        equal = BASELINES[run.kind].equal
        extra = sum(pre * f for _, f in classify) if equal else 0.0
        own = sum(n * f for n, f in classify)
        if equal == "steps":
            return Planned(run.cell, run.kind, run.seed, 0.0, extra + own)
        return Planned(run.cell, run.kind, run.seed, extra, own)

    def write_progress(self, runs: list[Run]) -> str | None:
        """The study's progress line, in ``RECORDS/README.md`` (created if missing)."""
        if not self.records:
            return None
        everything = runs + self.waiting
        planned = [self.planned(r, everything) for r in runs]
        planned += [self.planned(r, everything)._replace(waiting=True) for r in self.waiting]
        line = progress_line(self.records, planned)
        set_progress(
            self.records / "README.md",
            line,
            f"Records of finished runs (config, manifest, metrics; no weights), written by "
            f"`vitmim grid`; `vitmim report {self.records}` rebuilds every table and plot from "
            f"them.",
        )
        return line


def read_status(run_dir: Path) -> dict:
    """A run's status.json; empty when missing or damaged: the run is redone like a failed one."""
    return json_object(run_dir / "status.json")


def _write_status(run_dir: Path, status: str, **extra) -> None:
    checkpoint.write_json(
        run_dir / "status.json",
        {"status": status, **extra, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )


def run_job(cell_json: str | Path) -> dict:
    """Execute the run described by ``cell_json`` in this process, recording ``status.json``
    beside it; raises what the run raised. Returns each stage's final metrics."""
    path = Path(cell_json)
    run_dir = path.parent
    job = read_json_mapping(path, "grid cell", CELL_KEYS)
    # what earlier, interrupted invocations of this run spent counts too (one stopped by
    # SIGKILL or a machine stop left its start's figures: what came before it)
    prior = read_status(run_dir)
    carried = prior.get("status") in ("failed", "running")
    wall, cpu = ((prior.get(k) or 0.0) if carried else 0.0 for k in ("wall_s", "cpu_s"))
    t0, cpu0 = time.time(), _cpu_seconds()

    def spent() -> dict:
        return {"wall_s": wall + time.time() - t0, "cpu_s": cpu + _cpu_seconds() - cpu0}

    _write_status(run_dir, "running", **spent())
    try:
        results = _execute(job, run_dir)
    except BaseException as e:
        _write_status(run_dir, "failed", error=one_line(e), **spent())
        raise
    _write_status(run_dir, "done", **spent())
    return results


def _cpu_seconds() -> float:
    """CPU seconds of this process's threads and of its finished children (data workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _execute(job: dict, run_dir: Path) -> dict:
    """The cell's part of ``vitmim run``: a variant pre-trains and fine-tunes, a baseline cell
    trains its one baseline; each fine-tune once per label fraction, in ``finetune[_lfF]``."""
    cfg = load_config(base=job["config"])
    variant = job["kind"] == "variant"
    return run_all(
        cfg,
        run_dir,
        env_for(cfg),
        pretrained=variant,
        baselines=() if variant else (job["kind"],),
        label_fractions=tuple(job["label_fractions"]),
        probe=job["probe"],
        dirs=None if variant else {job["kind"]: "finetune"},
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m vitmim.lab.grid CELL_JSON``: one job in its own process (what ``local`` runs)."""
    args = sys.argv[1:] if argv is None else argv
    sigterm_as_interrupt()
    if GRID_PID in os.environ:  # a job outlives no grid: stopped like Ctrl-C when it dies
        die_with_parent(int(os.environ[GRID_PID]), signal.SIGTERM)
    try:
        run_job(args[0])
    except UserError as e:
        print(f"vitmim: error: {e}", file=sys.stderr)
        return UserError.exit_code
    return 0


# ---------------------------------------------------------------------------------------------
# launching


def _prepare(run: Run) -> Path:
    grid = run.dir.parent.parent  # OUT/<cell>/seed<k>
    outputs.claim_run(run.dir, tuple(d.name for d in run.stage_dirs()), inside=grid)
    path = run.dir / "cell.json"
    checkpoint.write_json(path, run.job())
    share_restorer(run)
    share_classifiers(run)
    return path


def share_restorer(run: Run) -> bool:
    """Link the donor's finished pre-training into ``run`` (which has not pre-trained): the same
    restorer, trained once."""
    if run.donor is None or not _link_stage(run.donor / "pretrain", run.dir / "pretrain"):
        return False
    print(f"{run.cell} seed{run.seed}: pre-training shared with {run.donor}", flush=True)
    return True


def share_classifiers(run: Run) -> bool:
    """Link the twin's finished classifier stages into ``run``: the same training, done once."""
    twin = run.twin
    if twin is None or not run.twin_done():
        return False
    if not any([_link_stage(twin / d.name, d) for d in run.stage_dirs()]):
        return False
    print(f"{run.cell} seed{run.seed}: trains as {twin}, whose classifiers it shares", flush=True)
    return True


def _link_stage(src: Path, dst: Path) -> bool:
    """Put the finished stage ``src`` in place of ``dst``, unless ``dst`` is finished: a stage
    of its own that was cut off gives way. Files are hard-linked where the file system allows
    (a finished stage is never written again), else copied."""
    if not finished(src) or finished(dst):
        return False
    shutil.rmtree(dst, ignore_errors=True)

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    tmp = dst.with_name(dst.name + ".sharing")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(
        src, tmp, copy_function=link, ignore=shutil.ignore_patterns("checkpoints", ".lock")
    )
    tmp.rename(dst)
    return True


def _waits_for_donor(run: Run, unfinished: set[Path]) -> bool:
    """A run whose donor is still to pre-train (or pre-training), or whose twin is still to
    train its classifiers, waits for it."""
    if run.donor and run.donor in unfinished and not finished(run.donor / "pretrain"):
        return True
    return bool(run.twin and run.twin in unfinished and not run.twin_done())


class Progress:
    """``[done/total]`` after each run, with an ETA from the wall times of finished runs."""

    def __init__(
        self,
        total: int,
        jobs: int,
        walls: list[float],
        on_done: Callable[[Run], None] | None = None,
    ):
        self.total, self.jobs, self.walls, self.done = total, jobs, list(walls), 0
        self.on_done = on_done  # called with each run that finished

    def outcome(self, run: Run, ok: bool, wall_s: float, killed: str | None = None) -> dict:
        """Status of a finished job: ``killed`` (what a signal did), ``status.json`` if the job
        got to write it, else the log tail; printed with the progress of the whole grid."""
        status = read_status(run.dir)
        if ok and run_finished(run):
            result = {"status": "done", "wall_s": wall_s}
            self.walls.append(wall_s)
            if self.on_done:
                self.on_done(run)
        else:
            error = status.get("error") if status.get("status") == "failed" else None
            result = {
                "status": "failed",
                "error": killed or error or _log_tail(run.dir),
                "wall_s": wall_s,
            }
        self.done += 1
        left = self.total - self.done
        eta = (
            eta_text(sum(self.walls) / len(self.walls) * left / self.jobs)
            if left and self.walls
            else ""
        )
        note = f": {result['error']}" if "error" in result else ""
        print(
            f"[{self.done}/{self.total}] {run.cell} seed{run.seed} {result['status']} in "
            f"{wall_s:.0f} s{note}{eta}",
            flush=True,
        )
        return result


def _start_line(i: int, runs: list[Run], run: Run) -> None:
    print(f"[{i}/{len(runs)}] {run.cell} seed{run.seed} -> {run.dir}", flush=True)


def launch_inline(runs: list[Run], progress: Progress) -> dict[Path, dict]:
    """``inline``: one after another in this process: no start-up cost and no isolation (tests,
    debugging)."""
    results = {}
    for i, run in enumerate(runs, 1):
        cell_json = _prepare(run)
        _start_line(i, runs, run)
        t0 = time.time()
        try:
            run_job(cell_json)
            ok = True
        except Exception as e:
            if not isinstance(e, UserError):  # a bug: show where
                traceback.print_exc()
            ok = False
        results[run.dir] = progress.outcome(run, ok, time.time() - t0)
    return results


GRID_PID = "VITMIM_GRID_PID"  # the grid process a job belongs to


def job_env(run: Run, jobs: int) -> dict[str, str]:
    """A job's environment: on a CPU each of ``jobs`` simultaneous jobs gets its share of the
    cores (OpenMP threads, which torch follows), so that together they do not oversubscribe
    them."""
    env = {**os.environ, GRID_PID: str(os.getpid())}
    threads = job_threads(jobs)
    if threads and device_type(run) == "cpu":
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def device_type(run: Run) -> str:
    """``cpu`` or ``cuda``: where the run's job trains (``device: auto`` resolved here)."""
    device = run.config["device"]
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device_kind(device)


def job_threads(jobs: int) -> int | None:
    """The CPU threads of each of ``jobs`` simultaneous jobs (their share of the cores); None
    for one job, which keeps the threads its environment gives."""
    return max(1, len(os.sched_getaffinity(0)) // jobs) if jobs > 1 else None


def launch_local(
    runs: list[Run],
    jobs: int,
    progress: Progress,
    until: float | None = None,
    seconds: Callable[[Run], float] | None = None,
) -> tuple[dict[Path, dict], list[Run]]:
    """``local``: each run in its own process (a crash or leak ends there; output to
    ``log.txt``), ``jobs`` of them at once. On Ctrl-C the running jobs are interrupted too; their
    checkpoints stay for the next invocation. With ``until`` (a clock time) a run starts only
    if ``seconds(run)`` (its estimated duration when it is ready) ends by then; returns the
    results and the runs left for later."""
    queue = list(runs)
    later: list[Run] = []
    running: dict[subprocess.Popen, tuple[Run, float]] = {}
    results: dict[Path, dict] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                unfinished = {r.dir for r in queue} | {r.dir for r, _ in running.values()}
                ready = [r for r in queue if not _waits_for_donor(r, unfinished)]
                if until is not None and seconds is not None:
                    late = [r for r in ready if time.time() + seconds(r) > until]
                    later += late  # time only runs out: a run too long now stays too long
                    queue = [r for r in queue if r not in late]
                    ready = [r for r in ready if r not in late]
                if not ready:
                    break
                run = ready[0]
                queue.remove(run)
                cell_json = _prepare(run)
                _start_line(len(runs) - len(queue), runs, run)
                with open(run.dir / "log.txt", "a") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "vitmim.lab.grid", str(cell_json)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=job_env(run, jobs),
                    )
                running[proc] = (run, time.time())
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                run, t0 = running.pop(proc)
                results[run.dir] = progress.outcome(
                    run, proc.returncode == 0, time.time() - t0, _killed(proc.returncode)
                )
    except KeyboardInterrupt:
        _interrupt(list(running))
        raise
    return results, later


def _estimated_seconds(ledger: Ledger, runs: list[Run], jobs: int) -> Callable[[Run], float]:
    """How long a run will take when it is ready: its image passes at the core-seconds per pass
    recorded on its type of device (a restorer shared from a finished run costs nothing), over
    its threads on a CPU (a GPU's seconds per pass were measured as the jobs shared it)."""
    device = device_type(runs[0]) if runs else "cpu"
    costs = pass_costs(ledger.records, device) if ledger.records else None
    if costs is None:
        raise ConfigError(
            f"--until: {ledger.records} holds no pre-training and classifier stages recorded "
            f"on a {device} device yet, so no run's time can be estimated; run without "
            f"--until first"
        )
    # one job: this process's threads
    threads = (job_threads(jobs) or torch.get_num_threads()) if device == "cpu" else 1

    def seconds(run: Run) -> float:
        p = ledger.planned(run, runs, donor_to_come=False)
        return (p.pretrain * costs[0] + p.classify * costs[1]) * costs[2] / threads

    return seconds


def parse_until(text: str) -> float:
    """``"HH:MM"`` -> the next such time on this machine's clock (seconds since the epoch)."""
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
    if not m:
        raise ConfigError(f"--until {text}: expected a clock time HH:MM, e.g. 17:30")
    now = time.localtime()
    at = time.mktime((*now[:3], int(m[1]), int(m[2]), 0, 0, 0, -1))
    return at if at > time.time() else at + 24 * 3600


def _killed(returncode: int) -> str | None:
    """What stopped a job that a signal ended (its log ends mid-line, in a progress bar)."""
    if returncode >= 0:
        return None
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name} (out of memory, or stopped from outside); rerun to resume it"


def _interrupt(procs: list[subprocess.Popen]) -> None:
    """Ctrl-C for jobs that did not get it from the terminal; killed if they linger. Sent as
    SIGTERM, which every job handles as Ctrl-C: a grid started in the background (a shell's
    ``&``) passes SIGINT on ignored to its jobs."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _log_tail(run_dir: Path) -> str:
    log = run_dir / "log.txt"
    # progress-bar lines (redrawn after \r) say nothing about why a job stopped
    lines = (
        [
            ln
            for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines()
            if ln.strip() and not re.search(r"\d+%\|", ln)
        ]
        if log.exists()
        else []
    )
    return lines[-1].strip() if lines else "no output"


def make_executor(kind: str, folder: Path, params: dict):
    """A submitit executor: LocalExecutor (``submitit-local``) or Slurm via AutoExecutor."""
    try:
        import submitit
    except ImportError:  # an optional dependency: the `slurm` extra
        raise ConfigError(
            f"--executor {kind}: needs submitit (pip install 'vitmim[slurm]')"
        ) from None
    executor: submitit.Executor
    if kind == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        params = {k: v for k, v in params.items() if k == "timeout_min"}  # the rest is Slurm's
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"slurm options: {one_line(e)}") from None
    return executor


def launch_submitit(
    runs: list[Run], kind: str, out: Path, params: dict, wait: bool, progress: Progress
) -> dict[Path, dict]:
    """Submit all runs as one job array; with ``wait``, collect each job's outcome."""
    executor = make_executor(kind, out / ".submitit", params)
    paths = [str(_prepare(run)) for run in runs]
    jobs = executor.map_array(run_job, paths)
    print(f"submitted {len(jobs)} jobs ({kind}): {', '.join(j.job_id for j in jobs)}", flush=True)
    results = {}
    for run, job in zip(runs, jobs):
        if not wait:
            results[run.dir] = {"status": "submitted", "job_id": job.job_id}
            continue
        t0 = time.time()
        try:
            job.result()
            ok = True
        except Exception:  # the job's own status.json carries the error line
            ok = False
        results[run.dir] = {**progress.outcome(run, ok, time.time() - t0), "job_id": job.job_id}
    return results


def write_grid_status(
    out: Path, runs: list[Run], results: dict[Path, dict], reference: dict | None = None
) -> Path:
    """``OUT/grid.json``: each run's cell, seed, folder and status after this invocation, and
    the spec's published reference figures for the report."""
    rows = []
    for run in runs:
        r = results.get(run.dir) or {"status": "done" if run_finished(run) else "pending"}
        rows.append(
            {
                "cell": run.cell,
                "kind": run.kind,
                "seed": run.seed,
                "dir": str(run.dir.relative_to(out)),
                **r,
            }
        )
    path = outputs.check_file(
        out / "grid.json", ours=lambda p: isinstance(json_object(p).get("runs"), list)
    )  # a grid's status, of this grid or an earlier one
    checkpoint.write_json(
        path,
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "runs": rows,
            **({"reference": reference} if reference else {}),
        },
    )
    return path


def run_grid(
    spec: GridSpec,
    out: Path,
    executor: str = "local",
    overrides: Sequence[str] = (),
    slurm: dict | None = None,
    wait: bool | None = None,
    dry_run: bool = False,
    files: Sequence[str] = (),
    jobs: int = 1,
    until: float | None = None,
) -> list[dict]:
    """Plan, skip finished runs, launch the rest (``jobs`` at once with the local executor);
    returns the rows of ``grid.json``. An interrupted grid continues when called again.
    ``until`` (a clock time): start only the runs estimated to end by then."""
    if jobs < 1 or jobs > 1 and executor != "local":
        raise ConfigError(
            f"--jobs {jobs}: expected a positive count of simultaneous runs, with "
            f"--executor local (a job array runs as its scheduler decides)"
        )
    if until is not None and (executor != "local" or not spec.records):
        raise ConfigError(
            "--until: needs --executor local and a spec with `records:` (the estimate of "
            "each run's time comes from the recorded runs' cost per image pass)"
        )
    waiting: list[Run] = []
    runs = plan(spec, out, overrides, files, waiting)
    for kind in dict.fromkeys(spec.baselines):
        if is_tuned(kind) and all(r.kind != kind for r in runs):
            print(
                f"note: baseline {kind} left out: no tuned scratch recipe is set (config "
                "section scratch; e.g. -c docs/results/scratch_search/scratch_recipe.yaml)"
            )
    ledger = Ledger(Path(spec.records) if spec.records else None, runs, waiting)
    states = {r.dir: ledger.state(r) for r in runs}
    assign_donors(runs, {d for d, s in states.items() if s == "todo"})
    assign_twins(
        runs,
        {d for d, s in states.items() if s == "todo"},
        {d for d, s in states.items() if s == "recorded"},
    )
    # a run whose twin is recorded only (trained elsewhere) is recorded from it, not trained
    twins = {r.dir: r for r in runs}
    from_twin = {
        r.dir: twins[r.twin]
        for r in runs
        if states[r.dir] == "todo" and r.twin is not None and states[r.twin] == "recorded"
    }
    todo = comparisons_first(
        [r for r in runs if states[r.dir] == "todo" and r.dir not in from_twin]
    )
    if dry_run:  # in the order they would run
        for r in [r for r in runs if states[r.dir] != "todo"] + todo:
            state = (
                read_status(r.dir).get("status", "pending")
                if states[r.dir] == "todo"
                else states[r.dir]
            )
            twin = f"  (trains as {r.twin})" if r.twin and states[r.dir] == "todo" else ""
            print(f"{state:8s} {r.kind:22s} {r.cell} seed{r.seed}  {r.dir}{twin}")
        for d, twin_run in from_twin.items():
            r = twins[d]
            print(
                f"{'twin':8s} {r.kind:22s} {r.cell} seed{r.seed}  {r.dir}  (recorded as "
                f"{twin_run.cell} seed{twin_run.seed}, from its record)"
            )
        print(f"{len(runs)} runs, {len(todo)} to do")
        return []
    for d, twin_run in from_twin.items():
        if ledger.record_from_twin(twins[d], twin_run):
            states[d] = "recorded"
        else:
            todo.append(twins[d])
    for r in runs:
        if states[r.dir] == "finished":
            ledger.record(r)  # a run finished before its grid kept records
    results = {
        r.dir: {"status": "skipped" if states[r.dir] == "finished" else "recorded"}
        for r in runs
        if states[r.dir] != "todo"
    }
    recorded = sum(s == "recorded" for s in states.values())
    print(
        f"grid: {len(runs)} runs, {len(runs) - len(todo)} already finished"
        + (f" ({recorded} of them from records in {ledger.records})" if recorded else ""),
        flush=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_grid_status(out, runs, results, spec.reference)  # reportable while it runs
    walls = [read_status(d).get("wall_s") for d in results]  # what earlier invocations took
    progress = Progress(
        len(todo),
        len(todo) if executor not in ("local", "inline") else jobs,
        [w for w in walls if w],
        on_done=ledger.record,
    )
    if ledger.records:
        print(f"records: {ledger.write_progress(runs)}", flush=True)
    later: list[Run] = []
    if todo and executor == "local":
        seconds = _estimated_seconds(ledger, runs, jobs) if until is not None else None
        done, later = launch_local(todo, jobs, progress, until, seconds)
        results.update(done)
    elif todo and executor == "inline":
        results.update(launch_inline(todo, progress))
    elif todo:
        params = {**spec.slurm, **(slurm or {})}
        results.update(
            launch_submitit(
                todo,
                executor,
                out,
                params,
                wait if wait is not None else executor != "slurm",
                progress,
            )
        )
    rows = json.loads(write_grid_status(out, runs, results, spec.reference).read_text())["runs"]
    if ledger.records:
        print(f"records: {ledger.write_progress(runs)}", flush=True)
    if later:
        at = time.strftime("%H:%M", time.localtime(until))
        print(
            f"grid: {len(later)} runs left for a later invocation: each was estimated to end "
            f"after {at} (first: {later[0].cell} seed{later[0].seed})",
            flush=True,
        )
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        raise TrainingError(
            f"{len(failed)} of {len(rows)} runs failed (first: {failed[0]['dir']}: "
            f"{failed[0]['error']}); see {out / 'grid.json'}"
        )
    return rows


def slurm_params(texts: list[str]) -> dict:
    """``["slurm_partition=gpu", "timeout_min=600"]`` -> parameters (values read as YAML)."""
    params = {}
    for text in texts:
        if "=" not in text:
            raise ConfigError(f"--slurm {text}: expected KEY=VALUE, e.g. slurm_partition=gpu")
        key, value = text.split("=", 1)
        try:
            params[key.strip()] = load_yaml(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--slurm {key.strip()}: not a YAML value ({one_line(e)})") from None
    return params


if __name__ == "__main__":
    sys.exit(main())
