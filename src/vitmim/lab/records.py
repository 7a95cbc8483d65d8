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
``vitmim report RECORDS`` reads the records like run folders.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

from vitmim import checkpoint
from vitmim.errors import ConfigError
from vitmim.runs import METRICS, MODEL, core_seconds, differing_key, finished, json_object

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
    first = seed_dir / ("pretrain" if job["kind"] == "variant" else "finetune")
    recorded = json_object(first / "manifest.json").get("data_fingerprint")
    if recorded != data_fingerprint:
        return f"other training data (fingerprint {recorded} -> {data_fingerprint})"
    return None


def is_recorded(record_dir: Path) -> bool:
    return (record_dir / RECORD).exists()


def write_record(run_dir: Path, record_dir: Path, stage_dirs: list[Path]) -> Path:
    """Copy what the finished run in ``run_dir`` measured into ``record_dir`` (replacing an
    older record there: the plan decided it is stale); ``record.json`` last, so that a record
    cut off half-way is not one."""
    if record_dir.exists() and not is_recorded(record_dir):
        raise ConfigError(
            f"{record_dir}: exists and holds no record ({RECORD}); the grid writes "
            f"records only into folders of its own: move it, or name another "
            f"`records:` folder in the spec"
        )
    tmp = record_dir.with_name(record_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
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
    shutil.rmtree(record_dir, ignore_errors=True)
    tmp.rename(record_dir)
    return record_dir


def progress_line(records: Path, planned: list[tuple[str, str, int]]) -> str:
    """``cells done / total, core-hours spent / left`` of a study: ``planned`` lists every run as
    (cell, kind, seed); a run still to do is estimated from the recorded runs of its kind (or of
    all kinds where none of its kind has run)."""
    spent: dict[str, list[float]] = {}
    todo: list[str] = []
    for cell, kind, seed in planned:
        rec = json_object(records / cell / f"seed{seed}" / RECORD)
        if rec and rec.get("core_s") is not None:
            spent.setdefault(kind, []).append(rec["core_s"])
        elif not rec:
            todo.append(kind)
    every = [s for costs in spent.values() for s in costs]
    left = sum(statistics.mean(spent.get(kind) or every) for kind in todo) if every else None
    done = len(planned) - len(todo)
    left_text = (
        f"~{left / 3600:.1f} left (estimated from the recorded runs)"
        if left is not None
        else "left unknown until a run is recorded"
    )
    return (
        f"{done} / {len(planned)} runs recorded; {sum(every) / 3600:.1f} core-hours spent, "
        f"{left_text}"
    )
