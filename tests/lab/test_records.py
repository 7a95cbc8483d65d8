"""Records: a study's finished runs outlive their run folders and their machine.

A grid whose spec names a ``records`` folder leaves a record of every finished run there, counts
a run whose record holds the same run as done, and the report reads the records like run folders.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cliproc
import pytest
import yaml
from grid_specs import SMOKE, TINY, write_spec, write_twins_spec

from vitmim import cli
from vitmim.errors import UserError
from vitmim.lab.records import RECORD, differing_key
from vitmim.runs import MODEL, core_seconds


def grid_args(spec: Path, out: Path, data: Path, *more: str) -> list[str]:
    return ["grid", str(spec), "--out", str(out), "--data", str(data), *more]


def recorded(records: Path) -> set[str]:
    return {p.parent.relative_to(records).as_posix() for p in records.glob(f"*/seed*/{RECORD}")}


def test_a_stopped_grid_resumes_from_records_after_its_run_folders_are_gone(tmp_path, tiny_tin):
    records = tmp_path / "docs" / "study"
    spec = tmp_path / "study.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": "smoke",
                "config": {**TINY, "pretrain.epochs": 3},
                "seeds": [0],
                "variants": {"pretrain.mask_ratio": [0.4, 0.6]},
                "baselines": ["scratch"],
                "probe": False,
                "records": str(records),
            }
        )
    )
    out = tmp_path / "runs"
    # the first machine: stopped (its whole process group killed) once one run is recorded
    proc = subprocess.Popen(
        [*cliproc.FRESH, *grid_args(spec, out, tiny_tin)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not recorded(records) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the grid ended before it could be stopped half-way"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = recorded(records)
    assert first and len(first) < 3
    record = records / sorted(first)[0]
    assert not list(record.rglob(MODEL)) and not list(record.rglob("checkpoints"))
    assert "Progress:" in (records / "README.md").read_text()

    # another machine: the committed records alone, no run folders
    shutil.rmtree(out)
    again = cliproc.vitmim(*grid_args(spec, out, tiny_tin))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(first)} already finished ({len(first)} of them from records" in again.stdout
    for rel in first:  # never run again
        assert not (out / rel).exists()
    assert recorded(records) == {"mask_ratio=0.4/seed0", "mask_ratio=0.6/seed0", "scratch/seed0"}
    progress = (records / "README.md").read_text()
    assert "3 / 3 runs recorded" in progress and "0.0 left" in progress

    # a changed config or other data is a new run, never a reused one
    dry = cliproc.vitmim(*grid_args(spec, tmp_path / "other", tiny_tin, "--dry-run"))
    assert dry.stdout.count("recorded") == 3 and "3 runs, 0 to do" in dry.stdout
    changed = cliproc.vitmim(
        *grid_args(spec, tmp_path / "other", tiny_tin, "--dry-run", "--set", "finetune.lr=0.002")
    )
    assert "3 runs, 3 to do" in changed.stdout and "recorded" not in changed.stdout


def test_changed_data_is_not_reused_from_records(tmp_path, tiny_tin, tin_tools, capsys):
    records = tmp_path / "records"
    spec = tmp_path / "one.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": "smoke",
                "config": TINY,
                "seeds": [0],
                "variants": [{"pretrain.mask_ratio": 0.4}],
                "baselines": [],
                "probe": False,
                "records": str(records),
            }
        )
    )
    assert (
        cli.main(
            [
                "grid",
                str(spec),
                "--out",
                str(tmp_path / "a"),
                "--data",
                str(tiny_tin),
                "--executor",
                "inline",
            ]
        )
        == 0
    )
    assert recorded(records) == {"mask_ratio=0.4/seed0"}
    other = tin_tools.zip_dir(
        tin_tools.write_tin(tmp_path / "o", n_train=11), tmp_path / "other.zip"
    )
    capsys.readouterr()
    for data, todo in ((tiny_tin, 0), (other, 1)):
        assert (
            cli.main(
                ["grid", str(spec), "--out", str(tmp_path / "b"), "--data", str(data), "--dry-run"]
            )
            == 0
        )
        assert f"1 runs, {todo} to do" in capsys.readouterr().out
    # the finished folder of another grid is refused, not counted
    assert (
        cli.main(
            [
                "grid",
                str(spec),
                "--out",
                str(tmp_path / "a"),
                "--data",
                str(tiny_tin),
                "--set",
                "finetune.lr=0.002",
                "--dry-run",
            ]
        )
        == 2
    )
    assert (
        "holds a finished run that is not this grid's (finetune.lr=0.001 -> 0.002)"
        in capsys.readouterr().err
    )


def test_a_twin_recorded_elsewhere_records_its_partner_without_training(tmp_path, tiny_tin, capsys):
    """Equal-FLOPs baselines of two regimes that pre-train as much (3 epochs of the classes, 1
    of the pool twice their size) train alike. On another machine, where only the first one's
    record is there (its partner cut off before it was recorded), the partner is recorded from
    that record, as its classifiers would be linked on the machine that trained them: nothing
    trains again, and its record costs nothing more."""
    records = tmp_path / "records"
    spec = write_twins_spec(tmp_path / "twins.yaml", records=str(records))
    trained, partner = (
        "scratch_equal_flops,epochs=3/seed0",
        "scratch_equal_flops,pool=all,epochs=1/seed0",
    )
    args = ["grid", str(spec), "--data", str(tiny_tin), "--jobs", "2"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert len(recorded(records)) == 4
    shutil.rmtree(records / partner)
    capsys.readouterr()
    other = tmp_path / "b"  # the other machine: no run folders
    assert cli.main([*args, "--out", str(other), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "4 runs, 0 to do" in said
    assert "(recorded as scratch_equal_flops,epochs=3 seed0, from its record)" in said
    assert cli.main([*args, "--out", str(other)]) == 0
    said = capsys.readouterr().out
    assert f"recorded as {records / trained}, whose classifiers it shares" in said
    assert "4 runs, 4 already finished (4 of them from records" in said
    assert partner in recorded(records) and len(recorded(records)) == 4
    assert not (other / partner).exists()  # nothing trained
    for name in ("finetune/metrics.jsonl", "finetune/model.json", "finetune/manifest.json"):
        assert (records / partner / name).read_bytes() == (records / trained / name).read_bytes()
    cell = json.loads((records / partner / "cell.json").read_text())
    assert cell["cell"] == "scratch_equal_flops,pool=all,epochs=1"
    assert cell["axes"] == {"pretrain.pool": "all", "pretrain.epochs": 1}
    record = json.loads((records / partner / RECORD).read_text())
    assert record["core_s"] == 0 and record["trained_as"] == trained
    # and it counts as done from then on, also for a report of the records
    assert cli.main([*args, "--out", str(other), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "from its record" not in said and "4 runs, 0 to do" in said
    assert cli.main(["report", str(records)]) == 0


@pytest.fixture
def smoke_records(smoke_grid, tiny_tin, tmp_path) -> tuple[Path, Path]:
    """(run folders, records) of the shipped smoke grid: a grid that finished before it kept
    records, recorded by running it again with a ``records:`` folder (nothing trains)."""
    runs, records = tmp_path / "runs", tmp_path / "records"
    shutil.copytree(smoke_grid, runs)
    spec = tmp_path / "smoke.yaml"
    spec.write_text(SMOKE.read_text() + f"\nrecords: {records}\n")
    args = ["grid", str(spec), "--out", str(runs), "--data", str(tiny_tin)]
    assert cli.main([*args, "--set", "data.classes=null", "--executor", "inline"]) == 0
    return runs, records


def test_report_from_records_equals_report_from_run_folders(smoke_records, tmp_path):
    runs, records = smoke_records
    assert len(recorded(records)) == len(list(runs.glob("*/seed*/cell.json"))) == 8
    assert cli.main(["report", str(runs), "--out", str(tmp_path / "from_runs")]) == 0
    assert cli.main(["report", str(records), "--out", str(tmp_path / "from_records")]) == 0
    for name in ("report.csv", "runs.csv"):
        assert (tmp_path / "from_runs" / name).read_text() == (
            tmp_path / "from_records" / name
        ).read_text(), name
    md = [
        (tmp_path / d / "report.md").read_text().splitlines()[1:]  # all but the title
        for d in ("from_runs", "from_records")
    ]
    assert md[0] == md[1]
    assert sorted(p.name for p in (tmp_path / "from_records" / "plots").iterdir()) == sorted(
        p.name for p in (tmp_path / "from_runs" / "plots").iterdir()
    )


@pytest.mark.parametrize(
    "recorded_cfg, planned, expected",
    [
        ({"pretrain": {"epochs": 20}}, {"pretrain": {"epochs": 20}}, None),
        ({"pretrain": {"epochs": 20}}, {"pretrain": {"epochs": 21}}, "pretrain.epochs=20 -> 21"),
        ({"device": "cpu"}, {"device": "cuda"}, None),  # where a run ran, not what it learns
        ({"data": {"path": "/a.zip"}}, {"data": {"path": "/b.zip"}}, None),  # content is compared
        ({}, {"pretrain": {"epochs": 20}}, None),  # a key added since, at its default
        ({}, {"pretrain": {"epochs": 21}}, "pretrain.epochs='<unset>' -> 21"),
        ({"pretrain": {"gone": 1}}, {}, "pretrain.gone=1 -> '<unset>'"),
    ],
)
def test_records_match_on_what_defines_a_run(recorded_cfg, planned, expected):
    assert differing_key(recorded_cfg, planned) == expected


def test_records_hold_no_weights_and_name_their_cost(smoke_records):
    _, records = smoke_records
    files = [p for p in records.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".jsonl", ".yaml", ".md", ".png"}
    assert sum(p.stat().st_size for p in files) < 2_000_000
    for rec in records.glob(f"*/seed*/{RECORD}"):
        meta = json.loads(rec.read_text())
        assert meta["core_s"] > 0 and meta["wall_s"] > 0
        # CPU time of the job (a busy machine stretches wall time, not this): at most what its
        # threads could have used in the wall time it took
        threads = json.loads(next(rec.parent.glob("*/manifest.json")).read_text())["threads"]
        assert meta["core_s"] <= meta["wall_s"] * threads * 1.05 + 1.0


@pytest.mark.parametrize(
    "epochs, manifest, expected",
    [
        ([{"time_s": 10.0, "cpu_s": 4.0}], {"device": "cpu", "threads": 2}, 4.0),
        ([{"time_s": 10.0}], {"device": "cpu", "threads": 2}, 20.0),  # logged without cpu_s
        ([{"time_s": 10.0}, {"time_s": 9.0, "cpu_s": 3.0}], {"threads": 2}, 23.0),  # then with
        ([{"time_s": 10.0, "cpu_s": 4.0}], {"device": "cuda:0", "world_size": 2}, 20.0),
        ([{"time_s": 10.0, "cpu_s": 4.0}, {"time_s": 5.0, "cpu_s": 1.0}], {}, 5.0),
        ([{"time_s": None}], {"device": "cpu"}, None),
    ],
)
def test_cost_counts_cpu_seconds_on_a_cpu_and_device_seconds_on_a_gpu(epochs, manifest, expected):
    assert core_seconds(epochs, manifest) == expected


def write_stage(
    stage: Path, section: str, batch: int, epochs: list[tuple[int, float]], device: str = "cpu"
) -> None:
    """A recorded stage: its config's batch size and its epochs' (step, cpu_s); on a GPU its
    cost is its wall time, 2 x cpu_s here."""
    stage.mkdir(parents=True)
    (stage / "config.yaml").write_text(yaml.safe_dump({section: {"batch_size": batch}}))
    (stage / "manifest.json").write_text(json.dumps({"device": device, "threads": 1}))
    lines = [
        {"epoch": k, "step": step, "time_s": 2 * cpu, "cpu_s": cpu}
        for k, (step, cpu) in enumerate(epochs, 1)
    ]
    (stage / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))


def test_what_is_left_is_estimated_from_image_passes_at_the_recorded_cost_per_pass(tmp_path):
    from vitmim.lab.records import Planned, pass_costs, progress_line

    run = tmp_path / "a" / "seed0"
    write_stage(run / "pretrain", "pretrain", 16, [(10, 10.0), (20, 10.0)])  # 320 passes, 20 s
    write_stage(run / "finetune_lf0.1", "finetune", 8, [(5, 6.0), (10, 6.0)])  # 80 passes, 12 s
    (run / RECORD).write_text(json.dumps({"core_s": 40.0}))  # the job: 32 s of epochs + 8 s
    assert pass_costs(tmp_path) == (20 / 320, 12 / 80, 40 / 32)
    planned = [
        Planned("a", "variant", 0, 320, 80),  # recorded: spent, not left
        Planned("b", "variant", 0, 100_000, 100),  # a long pre-training
        Planned("b", "variant", 1, 0, 100),  # its restorer shared
    ]
    left = ((100_000 * 20 / 320 + 100 * 12 / 80) + 100 * 12 / 80) * 40 / 32
    line = progress_line(tmp_path, planned)
    assert line == (
        f"1 / 3 runs recorded; 0.0 core-hours spent, ~{left / 3600:.1f} left (the runs to do, "
        f"by their image passes at the recorded core-seconds per pass)"
    )
    assert f"~{left / 3600:.1f}" == "~2.2"
    assert "left unknown" in progress_line(tmp_path / "none", planned)


def test_a_gpu_record_sets_the_gpu_cost_per_pass_and_never_the_cpu_one(tmp_path):
    """Records from a CPU and a GPU in one study: each device type's cost per pass comes from its
    own stages (a GPU's seconds per pass say nothing of a CPU core's), a run that ran partly on
    each sets no job overhead, and the progress line keeps core-hours and GPU-hours apart."""
    from vitmim.lab.records import Planned, pass_costs, progress_line

    cpu, gpu, mixed = (tmp_path / name / "seed0" for name in ("cpu", "gpu", "mixed"))
    write_stage(cpu / "pretrain", "pretrain", 10, [(10, 20.0)])  # 100 passes, 20 core-s
    write_stage(cpu / "finetune", "finetune", 10, [(10, 30.0)])  # 100 passes, 30 core-s
    (cpu / RECORD).write_text(json.dumps({"core_s": 100.0}))  # 2x its epochs
    write_stage(gpu / "pretrain", "pretrain", 10, [(100, 1.0)], "cuda:0")  # 1000 passes, 2 s
    write_stage(gpu / "finetune", "finetune", 10, [(100, 2.0)], "cuda:0")  # 1000 passes, 4 s
    (gpu / RECORD).write_text(json.dumps({"core_s": 9.0}))  # 1.5x its epochs
    write_stage(mixed / "pretrain", "pretrain", 10, [(10, 20.0)])  # the CPU's rate again
    write_stage(mixed / "finetune", "finetune", 10, [(100, 2.0)], "cuda:0")
    (mixed / RECORD).write_text(json.dumps({"core_s": 1000.0}))  # no overhead of either
    assert pass_costs(tmp_path) == (40 / 200, 30 / 100, 2.0)
    assert pass_costs(tmp_path, "cuda") == (2 / 1000, 8 / 2000, 1.5)
    shutil.rmtree(cpu)
    shutil.rmtree(mixed)
    assert pass_costs(tmp_path) is None  # a GPU record alone estimates no CPU time
    write_stage(cpu / "pretrain", "pretrain", 10, [(10, 20.0)])
    write_stage(cpu / "finetune", "finetune", 10, [(10, 30.0)])
    (cpu / RECORD).write_text(json.dumps({"core_s": 3600.0}))
    (gpu / RECORD).write_text(json.dumps({"core_s": 720.0}))
    planned = [Planned(n, "variant", 0, 100, 100) for n in ("cpu", "gpu", "todo")]
    line = progress_line(tmp_path, planned)
    assert line.startswith("2 / 3 runs recorded; 1.0 core-hours spent (and 0.2 GPU-hours), ~")


def test_until_on_a_gpu_needs_a_record_from_a_gpu(tmp_path):
    """--until estimates a GPU grid's runs from GPU records only, which a CPU record is not."""
    from vitmim.lab.grid import Ledger, Run, _estimated_seconds

    run = tmp_path / "a" / "seed0"
    write_stage(run / "pretrain", "pretrain", 10, [(10, 20.0)])
    write_stage(run / "finetune", "finetune", 10, [(10, 30.0)])
    (run / RECORD).write_text(json.dumps({"core_s": 50.0}))
    on_gpu = Run("b", "variant", {}, 0, tmp_path / "out", {"device": "cuda"}, [1.0], False)
    with pytest.raises(UserError, match="recorded on a cuda device yet"):
        _estimated_seconds(Ledger(tmp_path), [on_gpu], 1)


def test_the_plan_counts_each_runs_image_passes(tmp_path, tiny_tin):
    """A 5x longer pre-training is 5x the passes; a variant whose restorer another run of the
    plan trains pre-trains nothing; an equal-steps baseline trains its variant's passes as a
    classifier."""
    from vitmim.lab.grid import Ledger, load_spec, plan

    spec = tmp_path / "p.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": "smoke",
                "config": {**TINY, "pretrain.epochs": 2, "finetune.epochs": 3},
                "seeds": [0],
                "variants": [
                    {},
                    {"pretrain.epochs": 10},
                    {"data.label_fraction": 0.5, "finetune.epochs": 4},
                ],
                "baselines": ["scratch_equal_compute"],
                "probe": False,
                "records": str(tmp_path / "records"),
            }
        )
    )
    runs = plan(load_spec(spec), tmp_path / "out", [f"data.path={tiny_tin}"])
    ledger = Ledger(tmp_path / "records", runs)
    work = {(r.cell, r.kind): ledger.planned(r, runs) for r in runs}
    images = 4 * 12  # the generated archive's training images
    assert work["pretrained", "variant"][3:5] == (2 * images, 3 * images)
    assert work["epochs=10", "variant"][3:5] == (10 * images, 3 * images)
    assert work["label_fraction=0.5,epochs=4", "variant"][3:5] == (0, 4 * images * 0.5)
    equal = work["scratch_equal_compute", "scratch_equal_compute"]
    assert equal[3:5] == (0, 2 * images + 3 * images)


def test_a_run_that_will_resume_counts_only_the_epochs_it_has_left(tmp_path, tiny_tin):
    """Real runs, then their last epoch undone (final model and newest checkpoint removed, as
    when a machine stops mid-run): the plan counts the one epoch a resume will train, of the
    restorer and of the classifier, and of an equal-compute baseline's lengthened stage."""
    from vitmim.lab.grid import Ledger, load_spec, plan, run_grid

    spec = write_spec(
        tmp_path / "p.yaml",
        config={**TINY, "pretrain.epochs": 4, "finetune.epochs": 2},
        seeds=[0],
        variants=[{}],
        baselines=["scratch_equal_compute"],
        probe=False,
    )
    out = tmp_path / "out"
    runs = plan(load_spec(spec), out, [f"data.path={tiny_tin}"])
    whole = {r.kind: Ledger(None, runs).planned(r, runs) for r in runs}
    run_grid(load_spec(spec), out, overrides=[f"data.path={tiny_tin}"])
    assert {r.kind: Ledger(None, runs).planned(r, runs)[3:5] for r in runs} == {
        "variant": (0, 0),
        "scratch_equal_compute": (0, 0),
    }
    for stage in (
        "pretrained/seed0/pretrain",
        "pretrained/seed0/finetune",
        "scratch_equal_compute/seed0/finetune",
    ):
        for name in (MODEL, Path(MODEL).with_suffix(".json").name):
            (out / stage / name).unlink()
        newest = sorted((out / stage / "checkpoints").glob("step_*.json"))[-1]
        newest.unlink()
        newest.with_suffix(".safetensors").unlink()
    left = {r.kind: Ledger(None, runs).planned(r, runs) for r in runs}
    variant, baseline = whole["variant"], whole["scratch_equal_compute"]
    assert left["variant"][3:5] == pytest.approx((variant[3] / 4, variant[4] / 2))
    epochs = yaml.safe_load((out / "scratch_equal_compute/seed0/finetune/config.yaml").read_text())[
        "finetune"
    ]["epochs"]
    assert epochs > 2  # lengthened to the variant's compute
    assert left["scratch_equal_compute"][4] == pytest.approx(baseline[4] / epochs)


def test_stages_that_logged_their_cpu_time_set_the_cost_per_pass(tmp_path):
    """A stage without cpu_s counts wall time x threads, an upper bound: where stages with their
    CPU time are recorded, only those set the estimate."""
    from vitmim.lab.records import pass_costs

    for name, cpu in (("old", None), ("new", 5.0)):
        run = tmp_path / name / "seed0"
        epochs = [(10, cpu if cpu is not None else 0.0)]
        write_stage(run / "pretrain", "pretrain", 10, epochs)
        write_stage(run / "finetune", "finetune", 10, epochs)
        if cpu is None:  # logged before CPU time was: wall time (10 s) only
            for stage in ("pretrain", "finetune"):
                metrics = run / stage / "metrics.jsonl"
                line = json.loads(metrics.read_text())
                line.pop("cpu_s")
                line["time_s"] = 10.0
                metrics.write_text(json.dumps(line) + "\n")
        (run / RECORD).write_text(json.dumps({"core_s": 10.0}))
    assert pass_costs(tmp_path)[:2] == (5.0 / 100, 5.0 / 100)
    shutil.rmtree(tmp_path / "new")
    assert pass_costs(tmp_path)[:2] == (10.0 / 100, 10.0 / 100)  # wall x 1 thread


def test_runs_on_a_share_of_the_labels_count_as_done_from_folders_and_records(
    tmp_path, tiny_tin, capsys
):
    """A baseline's first stage on 10 % of the labels is ``finetune_lf0.5``: a finished run is
    this grid's on the next invocation, and its record counts on another machine."""
    records = tmp_path / "records"
    spec = tmp_path / "half.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": "smoke",
                "config": TINY,
                "seeds": [0],
                "variants": [{"data.label_fraction": 0.5}],
                "baselines": ["scratch"],
                "probe": False,
                "records": str(records),
            }
        )
    )
    out = tmp_path / "runs"
    args = ["grid", str(spec), "--out", str(out), "--data", str(tiny_tin)]
    assert cli.main(args) == 0
    assert (out / "scratch,label_fraction=0.5" / "seed0" / "finetune_lf0.5" / MODEL).exists()
    assert recorded(records) == {"label_fraction=0.5/seed0", "scratch,label_fraction=0.5/seed0"}
    capsys.readouterr()
    assert cli.main(args) == 0  # the same machine: its finished folders
    assert "2 runs, 2 already finished" in capsys.readouterr().out
    shutil.rmtree(out)
    assert cli.main(args) == 0  # another machine: the records alone
    assert "2 already finished (2 of them from records" in capsys.readouterr().out
    assert not out.joinpath("scratch,label_fraction=0.5").exists()


def test_the_tuned_recipe_adds_its_arm_without_making_the_other_runs_new(
    tmp_path, tiny_tin, capsys
):
    """The campaign's last step: once the search has written the tuned recipe, the grid runs
    with it (-c). Only the tuned arm is new: the finished runs of the other arms stay done, from
    their folders on this machine and from their records alone on another."""
    records = tmp_path / "records"
    baselines = ["scratch", "scratch_tuned"]
    spec = write_spec(
        tmp_path / "study.yaml", seeds=[0], baselines=baselines, probe=False, records=str(records)
    )
    recipe = tmp_path / "scratch_recipe.yaml"  # as `vitmim search` writes it
    recipe.write_text("scratch:\n  finetune.lr: 0.002\n  model.global_pool: token\n")
    out = tmp_path / "runs"
    args = ["grid", str(spec), "--out", str(out), "--data", str(tiny_tin)]
    assert cli.main(args) == 0
    assert recorded(records) == {"pretrained/seed0", "scratch/seed0"}
    capsys.readouterr()
    assert cli.main([*args, "-c", str(recipe)]) == 0  # this machine: the finished folders
    assert "3 runs, 2 already finished" in capsys.readouterr().out
    assert recorded(records) == {"pretrained/seed0", "scratch/seed0", "scratch_tuned/seed0"}
    tuned = yaml.safe_load(
        (out / "scratch_tuned" / "seed0" / "finetune" / "config.yaml").read_text()
    )
    assert (tuned["finetune"]["lr"], tuned["model"]["global_pool"]) == (0.002, "token")
    shutil.rmtree(out)
    assert cli.main([*args, "-c", str(recipe), "--dry-run"]) == 0  # another machine: records
    assert capsys.readouterr().out.strip().endswith("3 runs, 0 to do")


def test_until_starts_only_the_runs_estimated_to_end_in_time(tmp_path, tiny_tin, capsys):
    """Real job processes: with the recorded cost per image pass, a run whose pre-training is
    2000x the recorded one (minutes) is left for later, a cheap one runs."""
    from vitmim.lab.grid import load_spec, run_grid

    records = tmp_path / "records"
    spec = tmp_path / "s.yaml"

    def write(variants: list[dict]) -> Path:
        spec.write_text(
            yaml.safe_dump(
                {
                    "base": "smoke",
                    "config": {**TINY, "data.path": str(tiny_tin)},
                    "seeds": [0],
                    "variants": variants,
                    "baselines": [],
                    "probe": False,
                    "records": str(records),
                }
            )
        )
        return spec

    out = tmp_path / "runs"
    with pytest.raises(UserError, match="holds no pre-training and classifier stages recorded on"):
        run_grid(load_spec(write([{}])), out, until=time.time() + 600)
    run_grid(load_spec(write([{}])), out)  # the first record: the cost per pass
    capsys.readouterr()
    cells = [{}, {"finetune.epochs": 1}, {"pretrain.epochs": 2000}]
    run_grid(load_spec(write(cells)), out, until=time.time() + 60)
    text = capsys.readouterr().out
    assert "1 runs left for a later invocation" in text and "epochs=2000 seed0" in text
    assert (out / "epochs=1" / "seed0" / "finetune" / MODEL).exists()  # its restorer shared
    assert not (out / "epochs=2000").exists()
    assert recorded(records) == {"pretrained/seed0", "epochs=1/seed0"}


@pytest.mark.parametrize("text", ["25:00", "7pm", "12:60", ""])
def test_until_takes_a_clock_time(text):
    from vitmim.lab.grid import parse_until

    with pytest.raises(UserError, match=f"--until {text}: expected a clock time HH:MM"):
        parse_until(text)


def test_until_is_the_next_such_time():
    from vitmim.lab.grid import parse_until

    soon = time.localtime(time.time() + 180)
    assert 60 < parse_until(time.strftime("%H:%M", soon)) - time.time() <= 180
    past = time.localtime(time.time() - 180)
    assert 24 * 3600 - 240 < parse_until(time.strftime("%H:%M", past)) - time.time() < 24 * 3600


def test_runs_waiting_for_a_tuned_recipe_count_in_the_progress_line(tmp_path, tiny_tin):
    """Without a tuned scratch recipe its arm is not run, but the study's total and what is left
    include it: it will run once the search has written the recipe."""
    from vitmim.lab.grid import Ledger, load_spec, plan
    from vitmim.lab.records import progress_line

    spec = tmp_path / "t.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": "smoke",
                "config": {**TINY, "data.path": str(tiny_tin)},
                "seeds": [0, 1],
                "baselines": ["scratch", "scratch_tuned_flops"],
                "probe": False,
                "records": str(tmp_path / "records"),
            }
        )
    )
    waiting: list = []
    runs = plan(load_spec(spec), tmp_path / "out", (), (), waiting)
    assert {r.kind for r in runs} == {"variant", "scratch"} and len(runs) == 4
    assert [r.kind for r in waiting] == ["scratch_tuned_flops"] * 2
    ledger = Ledger(tmp_path / "records", runs, waiting)
    everything = runs + waiting
    planned = [ledger.planned(r, everything) for r in runs]
    planned += [ledger.planned(r, everything)._replace(waiting=True) for r in waiting]
    line = progress_line(tmp_path / "records", planned)
    assert line.startswith("0 / 6 runs recorded (2 of them wait for a tuned scratch recipe); ")
    assert plan(load_spec(spec), tmp_path / "out") == runs  # a plain plan leaves them out


def test_a_restorer_left_in_any_run_folder_is_shared_not_trained_again(tmp_path, tiny_tin, capsys):
    """The runs that share one restorer, on a machine where the run that first trained it is
    only a record: the restorer still in another run's folder serves the run left to do, whose
    own cut-off pre-training gives way to it."""
    records = tmp_path / "records"
    spec = write_spec(
        tmp_path / "pool.yaml",
        config={**TINY, "data.classes": 2},
        cross={"data.class_subset": [0, 1]},
        variants=[{"pretrain.pool": "all"}, {"pretrain.pool": "all", "finetune.epochs": 2}],
        seeds=[0],
        baselines=[],
        probe=False,
        records=str(records),
    )
    out = tmp_path / "runs"
    args = grid_args(spec, out, tiny_tin, "--executor", "inline")
    assert cli.main(args) == 0
    said = capsys.readouterr().out
    runs = sorted(p.parent for p in out.glob("*/seed0/cell.json"))
    assert len(runs) == 4 and len(recorded(records)) == 4
    first = next(r for r in runs if f"pre-training shared with {r}" in said)
    assert said.count(f"pre-training shared with {first}") == 3  # trained once
    others = [r for r in runs if r != first]
    left = others.pop()
    shutil.rmtree(first)  # the run that trained the restorer: recorded on another machine
    shutil.rmtree(records / left.relative_to(out))
    for stage in left.iterdir():
        if stage.name.startswith("finetune"):
            shutil.rmtree(stage)
    (left / "pretrain" / MODEL).unlink()  # its own pre-training, cut off
    assert cli.main(args) == 0
    said = capsys.readouterr().out
    holder = next(
        r for r in others if f"{left.parent.name} seed0: pre-training shared with {r}" in said
    )
    a, b = (d / "pretrain" / MODEL for d in (holder, left))
    assert a.stat().st_ino == b.stat().st_ino
    assert recorded(records) == {r.relative_to(out).as_posix() for r in runs}
