"""``vitmim search SPEC.yaml``: find the scratch baseline's own recipe, cheaply and resumably.

An Optuna study (TPE sampler, successive-halving pruner) over fine-tune keys, stored in SQLite
beside its results so that it continues on any machine where the file is: a trial is a scratch
fine-tune on each choosing class subset, two processes at once, its value the mean val top-1 over
them. After every epoch the mean so far is reported, and a trial that falls behind at a rung is
stopped there. The study ends when its core-hours reach the spec's budget; the best recipe is
written as ``scratch_recipe.yaml``, a config file (section ``scratch``) for ``vitmim grid -c``.

A spec::

    storage: docs/results/scratch_search/study.db   # committed: the search outlives a machine
    runs: runs/scratch_search                       # trial run folders (weights, not committed)
    config: {data.classes: 10}                      # every trial's base config
    subsets: [1, 2]                                 # data.class_subset values to choose on
    budget_core_hours: 6
    min_epochs: 3                                   # the first rung
    start: {finetune.lr: 1.0e-3, ...}               # tried first
    space: {finetune.lr: [log, 2.0e-4, 4.0e-3], finetune.epochs: [int, 15, 22],
            finetune.batch_size: [choice, 64, 128], finetune.drop_path: [float, 0.0, 0.3]}

A trial whose machine stopped is failed by the next invocation (Optuna's heartbeat) and tried
again once, its fine-tunes resumed from their checkpoints; so is a trial its user interrupted
(Ctrl-C, SIGTERM), first thing in the next invocation.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vitmim import checkpoint
from vitmim.config import (
    SCRATCH_MODEL_KEYS,
    load_config,
    read_jsonl,
    read_yaml_mapping,
    set_keys,
    to_dict,
)
from vitmim.errors import ConfigError, TrainingError, UserError
from vitmim.lifetime import die_with_parent

SPEC_KEYS = {
    "storage",
    "runs",
    "config",
    "subsets",
    "seed",
    "budget_core_hours",
    "min_epochs",
    "start",
    "space",
    "heartbeat_s",
}
KINDS = {"log": 2, "float": 2, "int": 2, "choice": None}  # kind -> how many bounds (None: any)
RECIPE = "scratch_recipe.yaml"


@dataclass
class SearchSpec:
    path: Path
    storage: Path
    runs: Path
    config: dict
    subsets: list[int]
    space: dict[str, list]
    start: dict = field(default_factory=dict)
    seed: int = 0
    budget_core_hours: float = 6.0
    min_epochs: int = 3
    heartbeat_s: int = 60


def _bad(p: Path, key: str, what: str) -> ConfigError:
    return ConfigError(f"{p}: key {key}: expected {what}")


def load_search_spec(path: str | Path) -> SearchSpec:
    """Read and check a search spec; every problem names the file and the key."""
    p = Path(path)
    raw = read_yaml_mapping(p, "search spec")
    unknown = sorted(map(str, set(raw) - SPEC_KEYS))
    if unknown:
        raise _bad(p, unknown[0], f"one of {', '.join(sorted(SPEC_KEYS))} (unknown key)")
    for key in ("storage", "runs"):
        if not isinstance(raw.get(key), str):
            raise _bad(p, key, "a path")
    subsets = raw.get("subsets")
    if not (isinstance(subsets, list) and subsets and all(type(s) is int for s in subsets)):
        raise _bad(p, "subsets", "a non-empty list of data.class_subset values")
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise _bad(p, "space", "a mapping of finetune.* keys to [kind, bounds...]")
    for key, dim in space.items():
        ok = (
            isinstance(dim, list)
            and dim
            and dim[0] in KINDS
            and (len(dim) - 1 == KINDS[dim[0]] if KINDS[dim[0]] else len(dim) > 2)
        )
        if not ok or not (str(key).startswith("finetune.") or key in SCRATCH_MODEL_KEYS):
            raise _bad(
                p,
                f"space.{key}",
                f"a finetune.* key (or one of "
                f"{', '.join(SCRATCH_MODEL_KEYS)}) with [log|float|int, low, high] or "
                f"[choice, value, value, ...]",
            )
    spec = SearchSpec(
        p,
        Path(raw["storage"]),
        Path(raw["runs"]),
        raw.get("config") or {},
        subsets,
        space,
        raw.get("start") or {},
        raw.get("seed", 0),
        float(raw.get("budget_core_hours", 6.0)),
        int(raw.get("min_epochs", 3)),
        int(raw.get("heartbeat_s", 60)),
    )
    for key in ("config", "start"):
        if not isinstance(getattr(spec, key), dict):
            raise _bad(p, key, "a mapping of config keys to values")
    for params in [spec.start, *_corners(space)]:  # refuse a bad value before any work
        try:
            recipe_config(spec, params, spec.subsets[0])
        except UserError as e:
            raise ConfigError(f"{p}: {e}") from None
    return spec


def _corners(space: dict[str, list]) -> list[dict]:
    """The lowest and the highest value of every dimension: what validation must accept."""
    return [{k: d[1] for k, d in space.items()}, {k: d[-1] for k, d in space.items()}]


def recipe_config(spec: SearchSpec, params: dict, subset: int, data: str | None = None) -> dict:
    """The resolved config of one trial on one class subset (validated)."""
    base = set_keys(to_dict(load_config()), dict(spec.config))
    base = set_keys(
        base,
        {
            **params,
            "data.class_subset": subset,
            "finetune.seed": spec.seed,
            **({"data.path": data} if data else {}),
        },
    )
    return to_dict(load_config(base=base))


def _suggest(trial, key: str, dim: list):
    kind, *args = dim
    if kind == "log":
        return trial.suggest_float(key, args[0], args[1], log=True)
    if kind == "float":
        return trial.suggest_float(key, args[0], args[1])
    if kind == "int":
        return trial.suggest_int(key, args[0], args[1])
    return trial.suggest_categorical(key, args)


# ---------------------------------------------------------------------------------------------
# one trial: a scratch fine-tune per subset, watched epoch by epoch


def _core_seconds(run_dir: Path) -> float:
    """What a trial's fine-tune has cost so far (:func:`vitmim.runs.core_seconds`)."""
    from vitmim.runs import core_seconds, json_object  # torch: only once trials run

    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0.0
    cost = core_seconds(read_jsonl(metrics), json_object(run_dir / "manifest.json"))
    return cost or 0.0


def _epochs(run_dir: Path) -> list[dict]:
    metrics = run_dir / "metrics.jsonl"
    return read_jsonl(metrics) if metrics.exists() else []


def _top1_by_epoch(run_dir: Path) -> dict[int, float]:
    return {e["epoch"]: e["val_top1"] for e in _epochs(run_dir) if "val_top1" in e}


def run_trial(trial, spec: SearchSpec, data: str | None, jobs: int) -> float:
    """Train the trial's recipe on every subset (``jobs`` processes at once), report the mean
    top-1 after each epoch and stop at a rung where the pruner says so."""
    import optuna

    params = {k: _suggest(trial, k, dim) for k, dim in spec.space.items()}
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    # a trial tried again after its machine stopped continues the first try's fine-tunes from
    # their checkpoints: the epochs it had run are neither lost nor paid for twice
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    first = first_try(frozen)
    dirs = [spec.runs / f"trial{first:03d}" / f"class_subset={s}" for s in spec.subsets]
    queue, reported, parent = list(zip(spec.subsets, dirs)), 0, os.getpid()
    procs: dict[int, subprocess.Popen] = {}
    try:
        while queue or procs:
            while queue and len(procs) < jobs:
                subset, run_dir = queue.pop(0)
                run_dir.mkdir(parents=True, exist_ok=True)
                cfg_path = run_dir.parent / f"config_subset{subset}.yaml"
                cfg_path.write_text(yaml.safe_dump(recipe_config(spec, params, subset, data)))
                resume = any((run_dir / "checkpoints").glob("step_*.json"))
                with open(run_dir.parent / f"log_subset{subset}.txt", "a") as log:
                    procs[subset] = subprocess.Popen(
                        [sys.executable, "-m", "vitmim.cli", "finetune", "-c", str(cfg_path)]
                        + ["--out", str(run_dir)]
                        + ["--resume"] * resume,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        # a fine-tune outlives no search: stopped like Ctrl-C when it dies
                        preexec_fn=functools.partial(die_with_parent, parent, signal.SIGTERM),
                    )
            time.sleep(1.0)
            curves = [_top1_by_epoch(d) for d in dirs]
            common = set.intersection(*(set(c) for c in curves))
            for epoch in sorted(e for e in common if e > reported):
                trial.report(sum(c[epoch] for c in curves) / len(curves), epoch)
                reported = epoch
                if trial.should_prune():
                    trial.set_user_attr("core_s", sum(_core_seconds(d) for d in dirs))
                    raise optuna.TrialPruned(f"stopped after epoch {epoch}")
            for subset, proc in list(procs.items()):
                if proc.poll() is not None:
                    del procs[subset]
                    if proc.returncode != 0:
                        raise TrainingError(
                            f"trial {trial.number}, class subset {subset}: the "
                            f"fine-tune failed; see {dirs[0].parent}/log_subset"
                            f"{subset}.txt"
                        )
    except KeyboardInterrupt:
        # stopped by its user (Ctrl-C, SIGTERM): the next invocation tries it again and resumes
        # its fine-tunes, whose epochs count there, once
        trial.set_user_attr("interrupted", True)
        raise
    finally:
        for proc in procs.values():  # pruned, failed or interrupted: nothing left running
            proc.terminate()
            proc.wait()
    trial.set_user_attr("core_s", sum(_core_seconds(d) for d in dirs))
    finals = [_top1_by_epoch(d) for d in dirs]
    return sum(c[max(c)] for c in finals) / len(finals)


def first_try(frozen) -> int:
    """The number of a trial's first try, whose folders its fine-tunes continue in: its own, or
    that of the trial it tries again (interrupted, or cut off with its machine)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if "resumes" in frozen.user_attrs:
        return int(frozen.user_attrs["resumes"])
    return (RetryHeartbeatStaleTrialCallback.retry_history(frozen) or [frozen.number])[0]


def retry_interrupted(study) -> None:
    """Queue each trial its user interrupted to be tried once more, first: the retry resumes its
    fine-tunes from their checkpoints, as a trial cut off with its machine does."""
    import optuna

    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for t in study.trials:
        if (
            t.state == optuna.trial.TrialState.FAIL
            and t.user_attrs.get("interrupted")
            and t.number not in retried
        ):
            study.enqueue_trial(
                t.params, user_attrs={"retry_of": t.number, "resumes": first_try(t)}
            )


# ---------------------------------------------------------------------------------------------
# the study


def _epoch_seconds(run_dir: Path) -> list[float]:
    """How long each epoch of a fine-tune took on its threads, from its CPU time where it was
    logged (wall time counts a job paused or sharing its core; CPU time does not)."""
    from vitmim.runs import json_object  # torch: only once trials run

    threads = json_object(run_dir / "manifest.json").get("threads") or 1
    return [
        e["cpu_s"] / threads if e.get("cpu_s") else e["time_s"]
        for e in _epochs(run_dir)
        if e.get("cpu_s") or e.get("time_s")
    ]


def longest_trial_s(study, spec: SearchSpec, jobs: int) -> float | None:
    """The longest the next trial may take: the space's most epochs at the slowest epoch that any
    trial has run (:func:`_epoch_seconds`), once per round of ``jobs`` processes over the
    subsets. None before any epoch has run (nothing to estimate from)."""
    epoch_s = [
        sec
        for t in study.trials
        for s in spec.subsets
        for sec in _epoch_seconds(spec.runs / f"trial{t.number:03d}" / f"class_subset={s}")
    ]
    if not epoch_s:
        return None
    most = max(
        recipe_config(spec, params, spec.subsets[0])["finetune"]["epochs"]
        for params in [spec.start, *_corners(spec.space)]
    )
    return most * max(epoch_s) * math.ceil(len(spec.subsets) / jobs)


def spent_core_hours(study) -> float:
    return sum(t.user_attrs.get("core_s", 0.0) for t in study.trials) / 3600


def progress_line(study, spec: SearchSpec) -> str:
    """``trials (how they ended), core-hours spent / budget, the best so far`` of a search."""
    import optuna

    states = optuna.trial.TrialState
    counts = {s: sum(t.state == s for t in study.trials) for s in states}
    ended = [
        f"{counts[states.COMPLETE]} finished",
        f"{counts[states.PRUNED]} stopped early by the pruner",
    ]
    stopped = sum(
        t.state == states.FAIL and bool(t.user_attrs.get("interrupted")) for t in study.trials
    )
    failed = counts[states.FAIL] - stopped
    ended += [f"{failed} failed"] * bool(failed)
    ended += [f"{stopped} interrupted (tried again)"] * bool(stopped)
    # running elsewhere, or cut off with its machine (resumed by the next invocation)
    ended += [f"{counts[states.RUNNING]} unfinished"] * bool(counts[states.RUNNING])
    ended += [f"{counts[states.WAITING]} to try again"] * bool(counts[states.WAITING])
    done = [t for t in study.trials if t.state == states.COMPLETE]
    best = max(done, key=lambda t: t.value) if done else None
    return (
        f"{len(study.trials)} trial{'s' * (len(study.trials) != 1)} ({', '.join(ended)}); "
        f"{spent_core_hours(study):.1f} / "
        f"{spec.budget_core_hours:g} core-hours spent"
        + (f"; best so far: mean val top-1 {best.value:.2f} (trial {best.number})" if best else "")
    )


def write_progress(study, spec: SearchSpec) -> str:
    """The search's progress line, in the README beside its storage (created if missing)."""
    from vitmim.lab.progress import set_progress

    line = progress_line(study, spec)
    about = (
        f"The study of `vitmim search {spec.path.as_posix()}` (Optuna, SQLite: "
        f"`{spec.storage.name}`; committed, so that the same command continues it on any "
        f"machine) and, once its budget is spent, the recipe it found (`{RECIPE}`)."
    )
    set_progress(spec.storage.parent / "README.md", line, textwrap.fill(about, 96))
    return line


def open_study(spec: SearchSpec):
    """The spec's study, created on first use; a trial left running by a stopped machine is
    failed once its heartbeat is older than twice the interval, and retried once."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    spec.storage.parent.mkdir(parents=True, exist_ok=True)
    storage = RDBStorage(
        f"sqlite:///{spec.storage}",
        heartbeat_interval=spec.heartbeat_s,
        grace_period=2 * spec.heartbeat_s,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
    )
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=spec.min_epochs, reduction_factor=3
    )
    study = optuna.create_study(
        study_name=spec.path.stem,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        pruner=pruner,
    )
    # seeded by the trials so far: a search continued by another invocation draws new recipes
    # instead of repeating the ones the last invocation drew first
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials))
    if not study.trials and spec.start:
        study.enqueue_trial(spec.start)
    retry_interrupted(study)
    return study


def search(
    spec_path: str | Path,
    data: str | None = None,
    jobs: int = 2,
    trials: int | None = None,
    until: str | None = None,
) -> Path | None:
    """Run trials until the budget (or ``trials`` more) is spent; write the best recipe beside
    the study's storage and return its path. With ``until`` (a clock time, ``HH:MM``) a trial
    starts only if the longest it may take (:func:`longest_trial_s`) ends by then; stopped
    there with budget left, the search writes no recipe (the tuned arm waits for the whole
    search) and returns None."""
    try:
        import optuna
    except ImportError:  # an optional dependency: the `search` extra
        raise ConfigError("vitmim search: needs optuna (pip install 'vitmim[search]')") from None
    spec = load_search_spec(spec_path)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: expected a positive count of processes")
    deadline = None
    if until is not None:
        from vitmim.lab.grid import parse_until  # torch: only once the spec is accepted

        deadline = parse_until(until)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        # the heartbeat and the retry that let a search outlive its machine are marked
        # experimental in Optuna: a warning the user of vitmim can do nothing about
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _search(spec, data, jobs, trials, until, deadline)


def _search(
    spec: SearchSpec,
    data: str | None,
    jobs: int,
    trials: int | None,
    until: str | None,
    deadline: float | None,
) -> Path | None:
    import optuna

    study = open_study(spec)
    ran = 0
    write_progress(study, spec)
    while spent_core_hours(study) < spec.budget_core_hours and (trials is None or ran < trials):
        need = longest_trial_s(study, spec, jobs) if deadline is not None else None
        if deadline is not None and need is not None and time.time() + need > deadline:
            print(
                f"search: the next trial may take up to {need / 60:.0f} min, past {until}: "
                f"left for a later invocation ({spent_core_hours(study):.2f} / "
                f"{spec.budget_core_hours:g} core-hours spent; the recipe is written once "
                f"the budget is)",
                flush=True,
            )
            return None
        study.optimize(lambda t: run_trial(t, spec, data, jobs), n_trials=1, catch=(UserError,))
        ran += 1
        last = study.trials[-1]
        write_progress(study, spec)
        if last.state == optuna.trial.TrialState.FAIL:  # a broken recipe or machine: say so
            raise TrainingError(
                f"trial {last.number} failed; see {spec.runs}/trial"
                f"{last.number:03d}/log_subset*.txt"
            )
        value = f"{last.value:.2f}" if last.value is not None else "-"
        print(
            f"trial {last.number}: {last.state.name.lower()}, top-1 {value}, "
            f"{spent_core_hours(study):.2f} / {spec.budget_core_hours:g} core-hours spent",
            flush=True,
        )
    return write_recipe(study, spec)


def write_recipe(study, spec: SearchSpec) -> Path:
    """``scratch_recipe.yaml`` beside the storage: the best finished trial's keys."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise TrainingError(f"{spec.storage}: no finished trial yet; run the search longer")
    best = max(done, key=lambda t: t.value)
    path = spec.storage.parent / RECIPE
    lines = [
        f"# The best scratch recipe of {len(done)} finished trials ({len(study.trials)} in "
        f"all) of `vitmim search {spec.path.as_posix()}`: mean val top-1 {best.value:.2f} % "
        f"over data.class_subset {spec.subsets}, {spent_core_hours(study):.1f} core-hours. "
        f"Measure it on other subsets.",
        f"#   vitmim grid configs/grids/unseen_subsets.yaml -c {path.as_posix()}",
    ]
    checkpoint.write_text(
        path,
        "\n".join(lines)
        + "\n"
        + yaml.safe_dump(
            {"scratch": {k: _plain(v) for k, v in best.params.items()}}, sort_keys=True
        ),
    )
    return path


def _plain(v):
    """Floats rounded to 4 significant digits: a recipe a person reads and types."""
    return float(f"{v:.4g}") if isinstance(v, float) and math.isfinite(v) else v
