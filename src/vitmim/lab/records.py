"""Records: what a finished grid run leaves behind once its weights are gone.

A study too big for one machine runs over many invocations, on many machines. Each finished run
leaves a small record in the spec's ``records`` folder (committed with the code), in the layout
of the run folder it came from, without weights, checkpoints or logs::

    RECORDS/<cell>/seed<k>/cell.json        what was run (kind, axes, seed, resolved config)
    RECORDS/<cell>/seed<k>/status.json      its wall time
    RECORDS/<cell>/seed<k>/<stage>/         config.yaml, manifest.json, metrics.jsonl,
                                            model.json (final metrics, classes), probe.json,
                                            first and last reconstruction (pre-training)
    RECORDS/<cell>/seed<k>/record.json      written last: the run is recorded

``vitmim grid`` counts a run as done when its record holds the same run: the same kind, label
fractions and probe, the same resolved config (the keys that define a run, not where or how fast
it ran: :data:`vitmim.runs.SETTINGS_KEYS`), and the same training data by content. A changed
config is a new run, never a silently reused one. A key the record does not know (one added to
vitmim after the run) matches only at its default value, which by design keeps the old behaviour.
An equal-compute baseline that trains exactly as another run (its twin) is recorded from the
twin's record where only that is here, with its own ``cell.json`` (:func:`record_as_twin`).
``vitmim report RECORDS`` reads the records like run folders.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import NamedTuple

from vitmim import checkpoint
from vitmim.config import read_yaml_mapping
from vitmim.errors import ConfigError
from vitmim.pipeline import stage_dirname
from vitmim.runs import (
    METRICS,
    MODEL,
    core_seconds,
    device_kind,
    differing_key,
    finished,
    json_object,
)

RECORD = "record.json"
STAGE_FILES = ("config.yaml", "manifest.json", METRICS, "model.json", "probe.json")
RUN_FILES = ("cell.json", "status.json", "summary.json", "summary.md", "probe_random_init.json")


def stage_done(stage_dir: Path) -> bool:
    """A stage that finished: its final model is there, or a record of it is."""
    return finished(stage_dir) or (
        (stage_dir / "model.json").exists()
        and (stage_dir.parent / RECORD).exists()
        and not (stage_dir / MODEL).exists()
    )


def mismatch(seed_dir: Path, job: dict, data_fingerprint: str) -> str | None:
    """Why the run in ``seed_dir`` (a run folder or a record) is not the planned ``job``
    (cell.json's content) on the data of ``data_fingerprint``; None when it is."""
    held = json_object(seed_dir / "cell.json")
    if not held:
        return "no readable cell.json"
    for key in ("kind", "label_fractions", "probe"):
        if held.get(key) != job[key]:
            return f"{key}={held.get(key)!r} -> {job[key]!r}"
    diff = differing_key(held.get("config") or {}, job["config"])
    if diff:
        return diff
    fractions = job["label_fractions"] or [1.0]
    first = seed_dir / (
        "pretrain" if job["kind"] == "variant" else stage_dirname("finetune", fractions[0])
    )
    recorded = json_object(first / "manifest.json").get("data_fingerprint")
    if recorded != data_fingerprint:
        return f"other training data (fingerprint {recorded} -> {data_fingerprint})"
    return None


def is_recorded(record_dir: Path) -> bool:
    return (record_dir / RECORD).exists()


def _scratch_folder(record_dir: Path) -> Path:
    """An empty folder beside ``record_dir`` to write its record in; refused where
    ``record_dir`` is a folder that is not a record (never ours to replace)."""
    if record_dir.exists() and not is_recorded(record_dir):
        raise ConfigError(
            f"{record_dir}: exists and holds no record ({RECORD}); the grid writes "
            f"records only into folders of its own: move it, or name another "
            f"`records:` folder in the spec"
        )
    tmp = record_dir.with_name(record_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _put(tmp: Path, record_dir: Path) -> Path:
    """Put the record written in ``tmp`` in place of ``record_dir`` (an older record of it)."""
    shutil.rmtree(record_dir, ignore_errors=True)
    tmp.rename(record_dir)
    return record_dir


def write_record(run_dir: Path, record_dir: Path, stage_dirs: list[Path]) -> Path:
    """Copy what the finished run in ``run_dir`` measured into ``record_dir`` (replacing an
    older record there: the plan decided it is stale); ``record.json`` last, so that a record
    cut off half-way is not one."""
    tmp = _scratch_folder(record_dir)
    for name in RUN_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, tmp / name)
    for stage in stage_dirs:
        (tmp / stage.name).mkdir()
        for name in STAGE_FILES:
            if (stage / name).exists():
                shutil.copy2(stage / name, tmp / stage.name / name)
        recons = sorted((stage / "images").glob("recon_epoch*.png"))
        for img in dict.fromkeys(recons[:1] + recons[-1:]):  # the first and the last epoch
            (tmp / stage.name / "images").mkdir(exist_ok=True)
            shutil.copy2(img, tmp / stage.name / "images" / img.name)
    status = json_object(run_dir / "status.json")
    manifests = [json_object(s / "manifest.json") for s in stage_dirs]
    checkpoint.write_json(
        tmp / RECORD,
        {
            "wall_s": status.get("wall_s"),
            # the whole job: start-up and data loading too, a shared restorer's training not
            "core_s": core_seconds(
                [{"time_s": status.get("wall_s"), "cpu_s": status.get("cpu_s")}],
                manifests[0] if manifests else {},
            ),
            "git_commit": manifests[0].get("git_commit") if manifests else None,
            "device_name": manifests[0].get("device_name") if manifests else None,
        },
    )
    return _put(tmp, record_dir)


def record_as_twin(twin_record: Path, record_dir: Path, job: dict, stage_names: list[str]) -> Path:
    """Record a run whose classifier stages train exactly as those of the recorded run
    ``twin_record`` (an equal-compute baseline of a regime that pre-trains otherwise but as
    much) without training them again: the twin's stages under the run's own ``cell.json``
    (``job``). It costs nothing more (``core_s`` 0), as when the grid links a twin's finished
    stages into a run folder; ``record.json`` names the twin."""
    tmp = _scratch_folder(record_dir)
    for name in ("summary.json", "summary.md", "probe_random_init.json"):
        if (twin_record / name).exists():
            shutil.copy2(twin_record / name, tmp / name)
    for name in stage_names:
        shutil.copytree(twin_record / name, tmp / name)
    checkpoint.write_json(tmp / "cell.json", job)
    checkpoint.write_json(tmp / "status.json", {"status": "done", "wall_s": 0.0, "cpu_s": 0.0})
    twin = json_object(twin_record / RECORD)
    checkpoint.write_json(
        tmp / RECORD,
        {
            "wall_s": 0.0,
            "core_s": 0.0,
            "git_commit": twin.get("git_commit"),
            "device_name": twin.get("device_name"),
            "trained_as": f"{twin_record.parent.name}/{twin_record.name}",
        },
    )
    return _put(tmp, record_dir)


class Planned(NamedTuple):
    """A run of a study and the image passes its cost grows with."""

    cell: str
    kind: str
    seed: int
    pretrain: float  # images x epochs of the restorer it trains (0: none, or one shared)
    classify: float  # images x epochs of its classifiers
    waiting: bool = False  # a tuned-scratch run that waits for its recipe


def pass_costs(records: Path, device: str = "cpu") -> tuple[float, float, float] | None:
    """Core-seconds per image pass of pre-training and of a classifier, from the epochs of every
    stage recorded on a ``device`` of that type (``cpu`` or ``cuda``: a GPU's seconds per pass
    say nothing of a CPU core's) and, of those, the ones that logged their CPU time where there
    are any (a stage without it counts wall time x threads, an upper bound on a busy machine);
    and the median factor by which a whole job (start-up, data loading) costs more than its
    epochs. None until both kinds of stage are recorded on such a device."""
    stages: dict[str, list[tuple[float, int, bool]]] = {"pretrain": [], "classify": []}
    overheads = []
    for rec in sorted(records.glob(f"*/seed*/{RECORD}")):
        run_cost, elsewhere = 0.0, False
        for metrics in sorted(rec.parent.glob(f"*/{METRICS}")):
            stage = metrics.parent
            epochs = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
            manifest = json_object(stage / "manifest.json")
            if device_kind(manifest.get("device")) != device:
                elsewhere = True  # then its job's cost is not all this device's
                continue
            cost = core_seconds(epochs, manifest) if epochs else None
            section = "pretrain" if stage.name == "pretrain" else "finetune"
            saved = stage / "config.yaml"
            config = read_yaml_mapping(saved) if saved.exists() else {}
            batch = (config.get(section) or {}).get("batch_size")
            if cost is None or not batch or "step" not in epochs[-1]:
                continue
            measured = all(e.get("cpu_s") is not None for e in epochs)
            kind = "pretrain" if section == "pretrain" else "classify"
            stages[kind].append((cost, epochs[-1]["step"] * batch, measured))
            run_cost += cost
        whole = json_object(rec).get("core_s")
        if whole and run_cost and not elsewhere:
            overheads.append(whole / run_cost)
    rates = []
    for kind in ("pretrain", "classify"):
        chosen = [s for s in stages[kind] if s[2]] or stages[kind]
        if not chosen:
            return None
        rates.append(sum(s[0] for s in chosen) / sum(s[1] for s in chosen))
    return rates[0], rates[1], max(1.0, statistics.median(overheads)) if overheads else 1.0


def progress_line(records: Path, planned: list[Planned]) -> str:
    """``runs done / total, core-hours spent / left`` of a study. A run still to do is estimated
    from its image passes at the recorded runs' core-seconds per pass (:func:`pass_costs`): a
    100-epoch pre-training costs five 20-epoch ones, a restorer shared with another run nothing."""
    spent = {"cpu": 0.0, "cuda": 0.0}  # core-seconds, GPU-seconds: never added together
    done = 0
    for run in planned:
        folder = records / run.cell / f"seed{run.seed}"
        rec = json_object(folder / RECORD)
        if rec:
            done += 1
            manifest = next(iter(sorted(folder.glob("*/manifest.json"))), None)
            kind = device_kind(json_object(manifest).get("device") if manifest else None)
            spent["cuda" if kind == "cuda" else "cpu"] += rec.get("core_s") or 0
    costs = pass_costs(records)
    left = (
        sum(
            (p.pretrain * costs[0] + p.classify * costs[1]) * costs[2]
            for p in planned
            if not (records / p.cell / f"seed{p.seed}" / RECORD).exists()
        )
        if costs
        else None
    )
    left_text = (
        f"~{left / 3600:.1f} left (the runs to do, by their image passes at the recorded "
        f"core-seconds per pass)"
        if left is not None
        else "left unknown until a pre-trained run is recorded"
    )
    waiting = sum(p.waiting for p in planned)
    return (
        f"{done} / {len(planned)} runs recorded"
        + (f" ({waiting} of them wait for a tuned scratch recipe)" if waiting else "")
        + f"; {spent['cpu'] / 3600:.1f} core-hours spent"
        + (f" (and {spent['cuda'] / 3600:.1f} GPU-hours)" if spent["cuda"] else "")
        + f", {left_text}"
    )
