"""Grid: spec checks, run planning, a real tiny grid (skip, resume, failure, submitit).

``smoke_grid`` (conftest) runs the shipped smoke grid once for these tests and the report's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cliproc
import pytest
import yaml
from grid_specs import REPO, SMOKE, TINY, write_spec, write_twins_spec

from vitmim import cli
from vitmim.config import load_config
from vitmim.errors import UserError
from vitmim.lab.grid import Ledger, assign_twins, load_spec, plan, run_finished
from vitmim.lab.report import baseline_row, collect, group
from vitmim.pipeline import training_flops_per_image
from vitmim.probes import probe_run


def grid_rows(out: Path) -> list[dict]:
    return json.loads((out / "grid.json").read_text())["runs"]


# ---------------------------------------------------------------------------------------------
# specs and planning


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"bogus": 1}, "key bogus"),
        ({"seeds": [0, 0]}, "key seeds"),
        ({"seeds": "0"}, "key seeds"),
        ({"baselines": ["scratch", "imagenet"]}, "key baselines"),
        ({"label_fractions": [0.0]}, "key label_fractions"),
        ({"variants": {"pretrain.mask_ratio": []}}, "key variants.pretrain.mask_ratio"),
        ({"variants": {"pretrain.mask_patch": [3]}}, "pretrain.mask_patch: 3 px cells"),
        ({"variants": {"pretrain.mask_rate": [0.4]}}, "unknown config key pretrain.mask_rate"),
        ({"base": "no_such_preset"}, "config file not found"),
    ],
)
def test_bad_specs_are_refused_naming_file_and_key(tmp_path, spec, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match=message) as e:
        plan(load_spec(path), tmp_path / "out")
    assert "spec.yaml" in str(e.value) or "no_such_preset" in str(e.value)


def test_plan_sets_both_seeds_and_projects_baselines(tmp_path):
    spec = write_spec(
        tmp_path / "s.yaml",
        seeds=[3, 5],
        label_fractions=[1.0, 0.5],
        variants={
            "pretrain.mask_ratio": [0.4, 0.6],
            "model.depth": [1, 2],
            "pretrain.epochs": [1, 2],
        },
    )
    runs = plan(load_spec(spec), tmp_path / "out")
    cells = {r.cell for r in runs}
    assert "mask_ratio=0.4,depth=1,epochs=2" in cells
    # scratch varies with the model axis only; equal compute also with pre-training length
    assert {c for c in cells if c.startswith("scratch,")} == {"scratch,depth=1", "scratch,depth=2"}
    assert len({c for c in cells if c.startswith("scratch_equal_compute")}) == 4
    assert len(runs) == 2 * (8 + 2 + 4)
    for r in runs:
        assert r.config["pretrain"]["seed"] == r.config["finetune"]["seed"] == r.seed
        assert r.dir == tmp_path / "out" / r.cell / f"seed{r.seed}"
    variant = next(r for r in runs if r.kind == "variant")
    assert [d.name for d in variant.stage_dirs()] == ["pretrain", "finetune", "finetune_lf0.5"]


def test_explicit_variant_list_plans_exactly_those_cells(tmp_path):
    spec = write_spec(
        tmp_path / "s.yaml",
        seeds=[0],
        baselines=["scratch"],
        variants=[
            {"model.arch": "vit"},
            {"model": {"arch": "unet-vit", "skips": "all"}},
            {"model.arch": "unet-vit", "model.skips": "none"},
        ],
    )
    runs = plan(load_spec(spec), tmp_path / "out")
    assert [r.cell for r in runs] == [
        "arch=vit",
        "arch=unet-vit,skips=all",
        "arch=unet-vit,skips=none",
        "scratch,arch=vit",
        "scratch,arch=unet-vit",
    ]  # skips shape only the restorer
    assert runs[2].config["model"]["skips"] == "none"
    assert runs[4].config["model"]["arch"] == "unet-vit"


@pytest.mark.parametrize(
    "variants, message",
    [
        ("mask_ratio", "key variants: expected a mapping"),
        ([{"model.arch": "vit"}, {"model.arch": "vit"}], r"key variants\[1\]: expected a cell not"),
        (["mask_ratio"], r"key variants\[0\]: expected a mapping"),
        ([{}, {"seeds": [1]}], r"key variants\[1\]: expected a cell not"),
    ],
)
def test_bad_variant_lists_are_refused(tmp_path, variants, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"variants": variants}))
    with pytest.raises(UserError, match=message):
        load_spec(path)


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"label_fractions": [1.0], "variants": [{"data.label_fraction": 0.1}]},
            r"data.label_fraction 0.1 and the spec's label_fractions \[1.0\] both",
        ),
        (
            {"label_fractions": [0.5], "config": {**TINY, "data.label_fraction": 0.2}},
            "data.label_fraction 0.2 and the spec's label_fractions",
        ),
        ({"variants": [{"finetune.seed": 3}]}, "finetune.seed is set by the grid's `seeds:`"),
        ({"config": {**TINY, "pretrain.seed": 1}}, "pretrain.seed is set by the grid's `seeds:`"),
    ],
)
def test_a_setting_the_grid_would_replace_is_refused(tmp_path, spec, message):
    with pytest.raises(UserError, match=message):
        plan(load_spec(write_spec(tmp_path / "s.yaml", **spec)), tmp_path / "out")


def test_a_cells_share_of_labels_is_what_its_runs_fine_tune_on(tmp_path):
    """Without the spec's label_fractions, each cell (and its baselines) fine-tunes on its own
    data.label_fraction; the spec's list applies where no cell sets one."""
    cells = [{}, {"data.label_fraction": 0.1, "finetune.epochs": 3}]
    spec = write_spec(tmp_path / "s.yaml", variants=cells, baselines=["scratch"], seeds=[0])
    runs = {r.cell: r for r in plan(load_spec(spec), tmp_path / "out")}
    tenth = runs["label_fraction=0.1,epochs=3"]
    assert tenth.label_fractions == [0.1] and tenth.config["data"]["label_fraction"] == 0.1
    assert [d.name for d in tenth.stage_dirs()] == ["pretrain", "finetune_lf0.1"]
    assert runs["scratch,label_fraction=0.1,epochs=3"].label_fractions == [0.1]
    assert runs["pretrained"].label_fractions == runs["scratch"].label_fractions == [1.0]
    listed = write_spec(tmp_path / "l.yaml", label_fractions=[1.0, 0.2], seeds=[0])
    assert {tuple(r.label_fractions) for r in plan(load_spec(listed), tmp_path / "o")} == {
        (1.0, 0.2)
    }


def test_a_command_line_setting_that_cells_replace_is_named(tmp_path, capsys):
    cells = [{}, {"finetune.epochs": 50}, {"pretrain.epochs": 4, "finetune.epochs": 1}]
    spec = write_spec(tmp_path / "s.yaml", variants=cells, baselines=[], seeds=[0])
    runs = plan(load_spec(spec), tmp_path / "out", ["finetune.epochs=1", "pretrain.lr=0.002"])
    assert [r.config["finetune"]["epochs"] for r in runs] == [1, 50, 1]
    assert capsys.readouterr().out == (
        "note: finetune.epochs=1 from the command line does not apply to 1 cell(s) that set "
        "finetune.epochs themselves: epochs=50\n"
    )


def test_dry_run_lists_every_run_without_running(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["grid", str(SMOKE), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "8 runs, 8 to do"
    assert sum("pending" in ln for ln in lines) == 8
    assert sum("scratch_equal_compute seed" in ln for ln in lines) == 2
    assert not out.exists()


def test_equal_flops_baseline_varies_with_what_changes_the_restorers_flops(tmp_path):
    spec = write_spec(
        tmp_path / "s.yaml",
        baselines=["scratch_equal_flops"],
        variants={
            "pretrain.mask_ratio": [0.4, 0.6],
            "pretrain.lr": [1e-3, 2e-3],
            "model.decoder_depth": [1, 2],
        },
    )
    cells = {r.cell for r in plan(load_spec(spec), tmp_path / "out") if r.kind != "variant"}
    # the learning rate changes neither steps nor FLOPs; masking and the decoder change FLOPs
    assert len(cells) == 4 and all(c.startswith("scratch_equal_flops,mask_ratio=") for c in cells)
    assert "scratch_equal_flops,mask_ratio=0.6,decoder_depth=2" in cells


def flops_cells(runs) -> list[str]:
    return sorted({r.cell for r in runs if r.kind == "scratch_equal_flops"})


def test_full_path_grid_plans_one_equal_flops_baseline(tmp_path):
    """On the full-token path the restorer's FLOPs are the same at every cell size and ratio."""
    spec = write_spec(
        tmp_path / "s.yaml",
        baselines=["scratch_equal_flops"],
        seeds=[0, 1],
        config={**TINY, "pretrain.fast": False},
        variants={"pretrain.mask_patch": [8, 16], "pretrain.mask_ratio": [0.4, 0.6]},
    )
    runs = plan(load_spec(spec), tmp_path / "out")
    assert sum(r.kind == "variant" for r in runs) == 4 * 2
    assert flops_cells(runs) == ["scratch_equal_flops,fast=False"]
    assert [r.axes for r in runs if r.kind == "scratch_equal_flops"] == [
        {"pretrain.fast": False}
    ] * 2


def test_fast_path_grid_plans_one_equal_flops_baseline_per_masking(tmp_path):
    """Cells of 8 px (the patch) pre-train on the fast path, whose FLOPs follow the ratio; 4 px
    cells do not, and share one baseline."""
    spec = write_spec(
        tmp_path / "s.yaml",
        baselines=["scratch_equal_flops"],
        variants={"pretrain.mask_patch": [4, 8], "pretrain.mask_ratio": [0.4, 0.6]},
    )
    assert flops_cells(plan(load_spec(spec), tmp_path / "out")) == [
        "scratch_equal_flops,fast=False",
        "scratch_equal_flops,mask_patch=8,mask_ratio=0.4",
        "scratch_equal_flops,mask_patch=8,mask_ratio=0.6",
    ]


def test_scratch_tuned_baseline_varies_only_with_its_recipe(tmp_path):
    spec = write_spec(
        tmp_path / "s.yaml",
        seeds=[0],
        baselines=["scratch", "scratch_tuned"],
        variants={"pretrain.mask_ratio": [0.4, 0.6], "scratch.finetune.lr": [5e-4, 2e-3]},
    )
    runs = plan(load_spec(spec), tmp_path / "out")
    # the recipe does not pre-train; scratch keeps the pre-trained model's fine-tune recipe
    assert [r.cell for r in runs] == [
        "mask_ratio=0.4",
        "mask_ratio=0.6",
        "scratch",
        "scratch_tuned,lr=0.0005",
        "scratch_tuned,lr=0.002",
    ]
    assert [r.config["scratch"] for r in runs] == [{}] * 3 + [
        {"finetune.lr": 5e-4},
        {"finetune.lr": 2e-3},
    ]


def test_scratch_tuned_without_a_recipe_is_left_out_with_a_note(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", seeds=[0], baselines=["scratch", "scratch_tuned"])
    assert [r.kind for r in plan(load_spec(spec), tmp_path / "out")] == ["variant", "scratch"]
    assert cli.main(["grid", str(spec), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert (
        "note: baseline scratch_tuned left out: no tuned scratch recipe" in capsys.readouterr().out
    )
    recipe = tmp_path / "recipe.yaml"  # what `vitmim report` of a recipe search writes
    recipe.write_text("scratch: {finetune.drop_path: 0.0}\n")
    runs = plan(load_spec(spec), tmp_path / "out", files=[str(recipe)])
    assert runs[-1].kind == "scratch_tuned"
    assert runs[-1].config["scratch"] == {"finetune.drop_path": 0.0}
    assert runs[0].config["finetune"]["drop_path"] == 0.1  # only the tuned side changes


def test_cross_repeats_every_cell_and_baseline_per_class_subset(tmp_path):
    spec = write_spec(
        tmp_path / "s.yaml",
        seeds=[0, 1],
        baselines=["scratch"],
        config={**TINY, "data.classes": 1},
        cross={"data.class_subset": [3, 4]},
        variants={"pretrain.mask_ratio": [0.4, 0.6]},
    )
    runs = plan(load_spec(spec), tmp_path / "out")
    assert sorted({r.cell for r in runs}) == sorted(
        [
            "class_subset=3,mask_ratio=0.4",
            "class_subset=3,mask_ratio=0.6",
            "class_subset=4,mask_ratio=0.4",
            "class_subset=4,mask_ratio=0.6",
            "scratch,class_subset=3",
            "scratch,class_subset=4",
        ]
    )
    assert len(runs) == 12
    assert {r.config["data"]["class_subset"] for r in runs} == {3, 4}


@pytest.mark.parametrize(
    "cross, message",
    [
        ({"data.class_subset": []}, "key cross.data.class_subset: expected a non-empty list"),
        ({"pretrain.mask_ratio": [0.4]}, "key cross.pretrain.mask_ratio: expected a key the"),
        ([1, 2], "key cross: expected a mapping"),
    ],
)
def test_bad_cross_is_refused(tmp_path, cross, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"cross": cross, "variants": {"pretrain.mask_ratio": [0.6]}}))
    with pytest.raises(UserError, match=message):
        load_spec(path)


# ---------------------------------------------------------------------------------------------
# running


def untimed(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "time_s"}


def test_grid_runs_every_cell_and_records_it(smoke_grid, tmp_path):
    rows = grid_rows(smoke_grid)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"done"}
    seed_dir = smoke_grid / "mask_ratio=0.4" / "seed1"
    for stage in ("pretrain", "finetune"):
        assert (seed_dir / stage / "model.json").exists()
        assert yaml.safe_load((seed_dir / stage / "config.yaml").read_text())[stage]["seed"] == 1
    assert (seed_dir / "pretrain" / "images" / "recon_epoch001.png").exists()
    probe = json.loads((seed_dir / "pretrain" / "probe.json").read_text())
    # the probe of this run's own backbone: probing a copy of the run again gives the same numbers
    again = probe_run(shutil.copytree(seed_dir / "pretrain", tmp_path / "pretrain"), device="cpu")
    assert probe["n_val"] == 12 and untimed(again) == untimed(probe)
    assert (smoke_grid / "scratch" / "seed0" / "probe_random_init.json").exists()


def test_equal_compute_baseline_matches_total_steps(smoke_grid):
    def last(path: Path) -> dict:
        return json.loads(path.read_text().splitlines()[-1])

    seed_dir = smoke_grid / "mask_ratio=0.6" / "seed0"
    pre = last(seed_dir / "pretrain" / "metrics.jsonl")["step"]
    ft = last(seed_dir / "finetune" / "metrics.jsonl")["step"]
    long = last(smoke_grid / "scratch_equal_compute" / "seed0" / "finetune" / "metrics.jsonl")
    short = last(smoke_grid / "scratch" / "seed0" / "finetune" / "metrics.jsonl")
    assert short["step"] == ft
    assert long["step"] == pre + ft  # 48 images / 16 per batch: steps divide evenly


def test_equal_flops_cell_runs_and_reports(tmp_path, tiny_tin):
    spec = write_spec(
        tmp_path / "s.yaml", baselines=["scratch", "scratch_equal_flops"], probe=False
    )
    out = tmp_path / "out"
    assert (
        cli.main(
            ["grid", str(spec), "--out", str(out), "--data", str(tiny_tin), "--executor", "inline"]
        )
        == 0
    )
    epochs = {
        c: yaml.safe_load((out / c / "seed0" / "finetune" / "config.yaml").read_text())["finetune"][
            "epochs"
        ]
        for c in ("pretrained", "scratch", "scratch_equal_flops")
    }
    assert epochs["pretrained"] == epochs["scratch"] < epochs["scratch_equal_flops"]
    assert cli.main(["report", str(out)]) == 0
    table = (out / "report" / "report.md").read_text()
    assert "Δ scratch equal-FLOPs" in table and "scratch (equal training FLOPs)" in table


def test_report_pairs_each_variant_with_its_equal_flops_baseline(tmp_path, tiny_tin):
    spec = write_spec(
        tmp_path / "s.yaml",
        baselines=["scratch_equal_flops"],
        probe=False,
        seeds=[0],
        variants={"pretrain.mask_patch": [4, 8], "pretrain.mask_ratio": [0.4, 0.6]},
    )
    out = tmp_path / "out"
    assert (
        cli.main(
            ["grid", str(spec), "--out", str(out), "--data", str(tiny_tin), "--executor", "inline"]
        )
        == 0
    )
    rows = group(collect(out))
    paired = {
        r.cell: baseline_row(r, "scratch_equal_flops", rows).cell
        for r in rows
        if r.kind == "variant"
    }
    full, fast4, fast6 = (
        "scratch_equal_flops,fast=False",
        "scratch_equal_flops,mask_patch=8,mask_ratio=0.4",
        "scratch_equal_flops,mask_patch=8,mask_ratio=0.6",
    )
    assert paired == {
        "mask_patch=4,mask_ratio=0.4": full,
        "mask_patch=4,mask_ratio=0.6": full,
        "mask_patch=8,mask_ratio=0.4": fast4,
        "mask_patch=8,mask_ratio=0.6": fast6,
    }
    # each baseline trains at its variants' restorer FLOPs per image, although the base config's
    # 8 px cells would put the 4 px cells' baseline on the fast path
    configs = {
        c: load_config(base=json.loads((out / c / "seed0" / "cell.json").read_text())["config"])
        for c in [*paired, full, fast4, fast6]
    }
    flops = {c: training_flops_per_image(cfg, 4)[0] for c, cfg in configs.items()}
    assert all(flops[v] == flops[b] for v, b in paired.items())
    assert len({flops[full], flops[fast4], flops[fast6]}) == 3
    assert cli.main(["report", str(out)]) == 0
    assert "Δ scratch equal-FLOPs" in (out / "report" / "report.md").read_text()


def test_second_invocation_skips_finished_and_resumes_interrupted(
    smoke_grid, tiny_tin, tmp_path, capsys
):
    out = tmp_path / "copy"
    shutil.copytree(smoke_grid, out)
    interrupted = out / "scratch" / "seed1" / "finetune"
    (interrupted / "model.json").unlink()  # as if killed after its last checkpoint
    (interrupted / "model.safetensors").unlink()
    status = interrupted.parent / "status.json"  # what the interrupted invocation spent
    status.write_text(json.dumps({"status": "failed", "wall_s": 100.0, "cpu_s": 50.0}))
    before = (out / "mask_ratio=0.4" / "seed0" / "pretrain" / "model.safetensors").stat()
    capsys.readouterr()
    assert (
        cli.main(
            [
                "grid",
                str(SMOKE),
                "--out",
                str(out),
                "--data",
                str(tiny_tin),
                "--set",
                "data.classes=null",
                "--executor",
                "inline",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "grid: 8 runs, 7 already finished" in text
    assert "[1/1] scratch seed1" in text
    rows = {r["dir"]: r["status"] for r in grid_rows(out)}
    assert rows.pop("scratch/seed1") == "done" and set(rows.values()) == {"skipped"}
    assert (interrupted / "model.json").exists()
    spent = json.loads(status.read_text())  # the run's cost: both invocations
    assert spent["status"] == "done" and spent["wall_s"] > 100.0 and spent["cpu_s"] > 50.0
    after = (out / "mask_ratio=0.4" / "seed0" / "pretrain" / "model.safetensors").stat()
    assert after.st_mtime_ns == before.st_mtime_ns


def test_failed_run_is_recorded_and_the_others_go_on(tmp_path, tiny_tin, capsys):
    """Real subprocesses (the local executor): the 1000-image batch cannot be made from 48."""
    spec = write_spec(
        tmp_path / "fail.yaml",
        variants={"pretrain.batch_size": [1000, 16]},
        seeds=[0],
        baselines=[],
        probe=False,
    )
    out = tmp_path / "out"
    rc = cli.main(["grid", str(spec), "--out", str(out), "--data", str(tiny_tin)])
    assert rc == 2
    assert "1 of 2 runs failed" in capsys.readouterr().err
    rows = {r["cell"]: r for r in grid_rows(out)}
    assert rows["batch_size=1000"]["status"] == "failed"
    assert (
        "pretrain.batch_size: 1000 is larger than the 48 training images"
        in rows["batch_size=1000"]["error"]
    )
    assert rows["batch_size=16"]["status"] == "done"
    assert (out / "batch_size=16" / "seed0" / "finetune" / "model.json").exists()
    assert "is larger than" in (out / "batch_size=1000" / "seed0" / "log.txt").read_text()
    status = json.loads((out / "batch_size=1000" / "seed0" / "status.json").read_text())
    assert status["status"] == "failed"


def test_submitit_local_executor_runs_a_job_array(tmp_path, tiny_tin):
    spec = write_spec(tmp_path / "one.yaml", seeds=[0], baselines=[], probe=False)
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "grid",
                str(spec),
                "--out",
                str(out),
                "--data",
                str(tiny_tin),
                "--executor",
                "submitit-local",
                "--slurm",
                "timeout_min=10",
            ]
        )
        == 0
    )
    rows = grid_rows(out)
    assert [r["status"] for r in rows] == ["done"]
    assert all(r.get("job_id") for r in rows)
    runs = plan(load_spec(spec), out, ["data.path=" + str(tiny_tin)])
    assert all(run_finished(r) for r in runs)
    assert list((out / ".submitit").iterdir())  # submitit's own logs live beside the runs


@pytest.mark.parametrize(
    "spec", sorted((REPO / "configs" / "grids").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_grid_spec_plans(tmp_path, spec):
    grid = load_spec(spec)
    runs = plan(grid, tmp_path / "out")
    assert runs and all(r.seed in grid.seeds for r in runs)
    assert len({r.dir for r in runs}) == len(runs)  # no two runs share a folder


def test_jobs_run_cells_at_once_each_with_its_share_of_the_cores(tmp_path, tiny_tin, capsys):
    spec = write_spec(
        tmp_path / "two.yaml",
        variants={"pretrain.mask_ratio": [0.4, 0.6]},
        seeds=[0],
        baselines=[],
        probe=False,
    )
    out = tmp_path / "out"
    args = ["grid", str(spec), "--out", str(out), "--data", str(tiny_tin), "--jobs", "2"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    started = [i for i, ln in enumerate(lines) if re.match(r"\[\d/2\] .* -> ", ln)]
    ended = [i for i, ln in enumerate(lines) if re.match(r"\[\d/2\] .* done in \d+ s", ln)]
    assert len(started) == len(ended) == 2 and max(started) < min(ended)  # both ran at once
    assert "ETA" in lines[ended[0]] and "ETA" not in lines[ended[1]]  # nothing left after
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for cell in ("mask_ratio=0.4", "mask_ratio=0.6"):
        for stage in ("pretrain", "finetune"):
            manifest = json.loads((out / cell / "seed0" / stage / "manifest.json").read_text())
            assert manifest["threads"] == threads
    assert cli.main(args) == 0  # resumable as ever: nothing left to do
    assert "grid: 2 runs, 2 already finished" in capsys.readouterr().out
    assert cli.main([*args, "--executor", "inline"]) == 2
    assert "--jobs 2: " in capsys.readouterr().err


def default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: a shell starts background jobs (a CI runner's, say) with
    SIGINT ignored, and the grid under test would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_says_how_to_continue_and_the_same_command_does(tmp_path, tiny_tin):
    spec = write_spec(
        tmp_path / "slow.yaml",
        variants={"pretrain.mask_ratio": [0.4, 0.6]},
        seeds=[0],
        baselines=[],
        probe=False,
        config={**TINY, "pretrain.epochs": 120},
    )  # still running at Ctrl-C
    out = tmp_path / "out"
    cmd = [
        *cliproc.FRESH,
        "grid",
        str(spec),
        "--out",
        str(out),
        "--data",
        str(tiny_tin),
        "--jobs",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    started = [
        out / c / "seed0" / "pretrain" / "metrics.jsonl"  # both have trained an epoch
        for c in ("mask_ratio=0.4", "mask_ratio=0.6")
    ]
    deadline = time.time() + 300
    while not all(p.exists() for p in started) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the grid ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)  # both jobs are running; Ctrl-C reaches the grid alone
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to continue" in err.splitlines()[-1]
    assert "--resume" not in err.splitlines()[-1]
    assert not any(
        (out / c / "seed0" / "finetune" / "model.json").exists()
        for c in ("mask_ratio=0.4", "mask_ratio=0.6")
    )
    refused = cliproc.vitmim(*cmd[len(cliproc.FRESH) :], "--resume")
    assert refused.returncode == 2 and "--resume" in refused.stderr
    again = cliproc.vitmim(*cmd[len(cliproc.FRESH) :])
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r["status"] for r in grid_rows(out)] == ["done", "done"]
    for cell in ("mask_ratio=0.4", "mask_ratio=0.6"):  # each epoch recorded once, resumed
        metrics = (out / cell / "seed0" / "pretrain" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(ln)["epoch"] for ln in metrics] == list(range(1, 121))


def test_a_cell_may_name_its_own_seeds_which_its_baselines_follow(tmp_path):
    spec = write_spec(
        tmp_path / "s.yaml",
        seeds=[0, 1],
        baselines=["scratch"],
        probe=False,
        variants=[
            {"pretrain.mask_ratio": 0.4},
            {"pretrain.epochs": 2, "finetune.epochs": 2, "seeds": [0]},
        ],
    )
    runs = plan(load_spec(spec), tmp_path / "out")
    assert [(r.cell, r.seed) for r in runs] == [
        ("mask_ratio=0.4", 0),
        ("mask_ratio=0.4", 1),
        ("pretrain.epochs=2,finetune.epochs=2", 0),
        ("scratch", 0),
        ("scratch", 1),
        ("scratch,epochs=2", 0),
    ]
    bad = write_spec(tmp_path / "b.yaml", variants=[{"pretrain.epochs": 2, "seeds": "0"}])
    with pytest.raises(UserError, match=r"variants\[0\].seeds"):
        load_spec(bad)


def test_variants_that_differ_only_in_fine_tuning_share_one_restorer(tmp_path, tiny_tin, capsys):
    """Real subprocesses, two at once: the second variant waits for the first one's restorer
    and links it instead of pre-training again."""
    spec = write_spec(
        tmp_path / "share.yaml",
        seeds=[0],
        baselines=[],
        probe=False,
        variants=[
            {"pretrain.mask_ratio": 0.4},
            {"pretrain.mask_ratio": 0.4, "data.label_fraction": 0.5, "finetune.epochs": 2},
        ],
    )
    out = tmp_path / "out"
    assert (
        cli.main(["grid", str(spec), "--out", str(out), "--data", str(tiny_tin), "--jobs", "2"])
        == 0
    )
    text = capsys.readouterr().out
    first = out / "mask_ratio=0.4" / "seed0"
    second = out / "mask_ratio=0.4,label_fraction=0.5,epochs=2" / "seed0"
    assert f"pre-training shared with {first}" in text
    a, b = (d / "pretrain" / "model.safetensors" for d in (first, second))
    assert a.read_bytes() == b.read_bytes() and a.stat().st_ino == b.stat().st_ino
    assert "already finished" in (second / "log.txt").read_text()
    tuned = second / "finetune_lf0.5"  # its own share of labels, as the report reads it
    epochs = [json.loads(ln) for ln in (tuned / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]  # its own fine-tuning, on the shared restorer
    manifest = json.loads((tuned / "manifest.json").read_text())
    assert manifest["labelled_images"] == manifest["train_images"] // 2
    assert epochs[0]["step"] == manifest["labelled_images"] // 16  # batches of the labelled half
    assert load_config([tuned / "config.yaml"]).data.label_fraction == 0.5
    assert not (second / "finetune").exists()
    full = json.loads((first / "finetune" / "manifest.json").read_text())
    assert full["labelled_images"] == full["train_images"] == manifest["train_images"]


def test_equal_flops_baselines_that_train_alike_train_once(tmp_path, tiny_tin, capsys):
    """Two regimes that pre-train differently but as much (3 epochs of a 2-class subset, 1 of
    the 4-class pool: 3 steps of the same images' size each) give their equal-FLOPs baselines
    the same training. Real subprocesses, two at once: the second waits for the first and links
    its classifier instead of training it again; a regime that pre-trains more trains its own."""
    spec = write_twins_spec(tmp_path / "twins.yaml", {"pretrain.epochs": 12})
    out = tmp_path / "out"
    first, second, longer = (
        out / f"scratch_equal_flops,{cell}" / "seed0"
        for cell in ("epochs=3", "pool=all,epochs=1", "epochs=12")
    )
    runs = plan(load_spec(spec), out, [f"data.path={tiny_tin}"])
    assign_twins(runs, {r.dir for r in runs})
    assert {r.dir: r.twin for r in runs if r.kind != "variant"} == {
        first: None,
        second: first,
        longer: None,
    }
    planned = {r.dir: Ledger(None).planned(r, runs) for r in runs}
    assert (planned[second].pretrain, planned[second].classify) == (0.0, 0.0)  # its twin trains it
    assert planned[longer].classify > 0
    args = ["grid", str(spec), "--out", str(out), "--data", str(tiny_tin), "--jobs", "2"]
    assert cli.main(args) == 0
    said = capsys.readouterr().out
    assert f"trains as {first}, whose classifiers it shares" in said
    assert said.count("whose classifiers it shares") == 1
    a, b, c = (d / "finetune" / "model.safetensors" for d in (first, second, longer))
    assert a.stat().st_ino == b.stat().st_ino != c.stat().st_ino  # trained once, linked
    assert "already finished" in (second / "log.txt").read_text()
    epochs = [
        load_config([d / "finetune" / "config.yaml"]).finetune.epochs for d in (first, longer)
    ]
    assert epochs[0] < epochs[1]  # pre-training 4x as long asks for a longer baseline
    lines = (first / "finetune" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == list(range(1, epochs[0] + 1))
    # a second invocation finds every run done, the shared one among them
    assert cli.main(args) == 0
    assert "6 runs, 6 already finished" in capsys.readouterr().out


def test_a_pool_of_every_class_pre_trains_one_restorer_for_every_class_subset(
    tmp_path, tiny_tin, capsys
):
    """pretrain.pool: all: the restorer learns from the training images of every class (the
    labels unused) and serves each class subset's fine-tuning; a baseline is unchanged by it."""
    spec = write_spec(
        tmp_path / "pool.yaml",
        config={**TINY, "data.classes": 2},
        cross={"data.class_subset": [0, 1]},
        variants=[{"pretrain.pool": "all"}],
        seeds=[0],
        baselines=[],
        probe=False,
    )
    out = tmp_path / "out"
    assert cli.main(["grid", str(spec), "--out", str(out), "--data", str(tiny_tin)]) == 0
    first, second = (out / f"class_subset={k},pool=all" / "seed0" for k in (0, 1))
    assert f"pre-training shared with {first}" in capsys.readouterr().out
    pre, tuned = (
        json.loads((second / stage / "manifest.json").read_text())
        for stage in ("pretrain", "finetune")
    )
    assert (pre["train_images"], tuned["train_images"]) == (4 * 12, 2 * 12)
    assert pre["data_fingerprint"] != tuned["data_fingerprint"]
    assert pre["data"]["fingerprint"] == pre["data_fingerprint"]
    classes = {
        json.loads((d / "finetune" / "manifest.json").read_text())["classes"][0]
        for d in (first, second)
    }
    assert len(classes) == 2  # two different class subsets, one restorer
