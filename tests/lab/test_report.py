"""Report: statistics, tables, CSV, plots and a self-contained HTML page from real run folders."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml
from grid_specs import SMOKE

from vitmim import cli
from vitmim.baselines import BASELINES
from vitmim.errors import UserError
from vitmim.lab.report import (
    bootstrap_interval,
    build_report,
    compare,
    mean_std,
    schedule_end,
)

PNG = b"\x89PNG\r\n\x1a\n"
BASELINES_OF_UNSEEN = ("scratch", "scratch_tuned", "scratch_equal_flops")


@pytest.fixture(scope="module")
def report(smoke_grid, tmp_path_factory) -> Path:
    """The report of the shared smoke grid (conftest), built from a copy of its folders."""
    runs_dir = tmp_path_factory.mktemp("report") / "grid"
    shutil.copytree(smoke_grid, runs_dir)
    assert cli.main(["report", str(runs_dir)]) == 0
    return runs_dir / "report"


def test_mean_std_is_the_sample_statistic():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5), 2)
    assert mean_std([4.0]) == (4.0, None, 1)
    assert mean_std([]) == (None, None, 0)


def test_compare_rule():
    assert compare((50.0, 1.0, 3), (45.0, 2.0, 3)) == (5.0, "> spread")
    assert compare((50.0, 1.0, 3), (49.0, 2.0, 3)) == (1.0, "within spread")
    assert compare((50.0, None, 1), (45.0, 2.0, 3)) == (5.0, "n < 2")
    assert compare((None, None, 0), (45.0, 2.0, 3)) == (None, "n/a")


def test_markdown_table_has_mean_std_and_n(report):
    text = (report / "report.md").read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert "| n |" in table[0] and "Δ scratch equal-compute" in table[0]
    body = table[2:]
    assert len(body) == 4  # 2 variants + 2 baselines
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "2"
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", cells[3])
    assert "spread" in body[0] and "scratch (equal total steps)" in text
    assert "larger of the two seed standard deviations" in text  # the rule is stated


def final(stage_dir: Path) -> dict:
    """The last record of a stage folder's metrics.jsonl."""
    return json.loads((stage_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_csv_parses_with_numbers_per_cell(report):
    rows = list(csv.DictReader(io.StringIO((report / "report.csv").read_text())))
    assert [r["kind"] for r in rows] == ["variant", "variant", "scratch", "scratch_equal_compute"]
    grid = report.parent
    top1 = {}  # every cell's statistics are those of its two seeds' run folders
    for r in rows:
        runs = [grid / r["cell"] / f"seed{s}" / "finetune" for s in (0, 1)]
        top1[r["cell"]] = [final(d)["val_top1"] for d in runs]
        assert r["n"] == "2" and float(r["label_fraction"]) == 1.0
        assert float(r["top1_mean"]) == pytest.approx(statistics.mean(top1[r["cell"]]))
        assert float(r["top1_std"]) == pytest.approx(statistics.stdev(top1[r["cell"]]))
    first = rows[0]
    assert first["pretrain.mask_ratio"] == "0.4"
    seeds = [grid / first["cell"] / f"seed{s}" / "pretrain" for s in (0, 1)]
    knn = [json.loads((d / "probe.json").read_text())["knn_top1"] for d in seeds]
    assert float(first["knn_mean"]) == pytest.approx(statistics.mean(knn))
    l1 = [final(d)["val_pixel_l1"] for d in seeds]
    assert float(first["l1_mean"]) == pytest.approx(statistics.mean(l1))
    mine, scratch = top1[first["cell"]], top1[rows[2]["cell"]]
    diff = statistics.mean(mine) - statistics.mean(scratch)
    assert float(first["vs_scratch"]) == pytest.approx(diff, abs=1e-6)
    spread = max(statistics.stdev(mine), statistics.stdev(scratch))
    assert first["vs_scratch_verdict"] == ("> spread" if abs(diff) > spread else "within spread")
    steps = {r["kind"]: float(r["steps_mean"]) for r in rows}
    assert steps["scratch_equal_compute"] == steps["variant"]  # equal total compute
    runs = list(csv.DictReader(io.StringIO((report / "runs.csv").read_text())))
    assert len(runs) == 8 and {r["finished"] for r in runs} == {"True"}


def test_plots_and_reconstructions_are_pngs(report):
    for name in ("accuracy", "curves", "signals", "restoration"):
        assert (report / "plots" / f"{name}.png").read_bytes()[:8] == PNG
    recon = sorted((report / "recon").glob("*.png"))
    assert len(recon) == 2 and recon[0].read_bytes()[:8] == PNG


def test_html_is_self_contained(report):
    page = (report / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    images = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(images) == 6 and all(s.startswith("data:image/png;base64,") for s in images)
    assert page.count("<tr>") == 5 and "±" in page


def test_unfinished_seeds_are_not_counted(smoke_grid, tmp_path):
    copy = tmp_path / "grid"
    shutil.copytree(smoke_grid, copy, ignore=shutil.ignore_patterns("report"))
    (copy / "scratch" / "seed1" / "finetune" / "model.json").unlink()
    build_report(copy)
    rows = list(csv.DictReader(io.StringIO((copy / "report" / "report.csv").read_text())))
    scratch = next(r for r in rows if r["kind"] == "scratch")
    assert scratch["n"] == "1" and scratch["top1_std"] == ""
    assert {r["vs_scratch_verdict"] for r in rows if r["kind"] == "variant"} == {"n < 2"}


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no run folders found"):
        build_report(tmp_path)


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="headless chromium not installed",
)
def test_html_renders_offline_in_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            (report / "report.html").as_uri(),
        ],
        check=True,
        timeout=60,
        capture_output=True,
    )
    assert shot.read_bytes()[:8] == PNG


def test_cells_with_different_axes_are_plotted_one_point_per_cell():
    from vitmim.lab.report import CELL_AXIS, Row, _series, _x_axis

    mixed = [
        Row("arch=vit", "variant", {"model.arch": "vit"}, 1.0, []),
        Row(
            "arch=unet-vit,skips=none",
            "variant",
            {"model.arch": "unet-vit", "model.skips": "none"},
            1.0,
            [],
        ),
    ]
    assert _x_axis(mixed) == CELL_AXIS
    assert list(_series(mixed, CELL_AXIS)) == ["pre-trained"]
    grid = [
        Row(f"c{i}", "variant", {"pretrain.mask_patch": p, "pretrain.mask_ratio": r}, 1.0, [])
        for i, (p, r) in enumerate([(4, 0.2), (4, 0.6), (8, 0.2), (8, 0.6)])
    ]
    assert _x_axis(grid) == "pretrain.mask_ratio"
    assert list(_series(grid, "pretrain.mask_ratio")) == ["mask_patch=4", "mask_patch=8"]


def test_a_study_over_class_subsets_draws_each_regime_and_baseline_along_the_subsets():
    from vitmim.baselines import BASELINES
    from vitmim.lab.report import Row, _series, _x_axis

    def row(kind, **axes):
        axes = {k.replace("_", ".", 1): v for k, v in axes.items()}
        return Row(",".join(f"{k}={v}" for k, v in axes.items()), kind, axes, 1.0, [])

    variants = [
        *(row("variant", data_class_subset=s) for s in (3, 4, 5)),
        row("variant", data_class_subset=3, pretrain_epochs=100),
        row("variant", data_class_subset=3, pretrain_epochs=100, finetune_epochs=50),
    ]
    scratch = [row("scratch", data_class_subset=s) for s in (3, 4, 5)]
    assert _x_axis(variants) == "data.class_subset"
    lines = _series(variants, "data.class_subset", scratch)
    assert list(lines) == [
        "pre-trained",
        "pretrain.epochs=100",  # in full: finetune.epochs is an axis too
        "pretrain.epochs=100, finetune.epochs=50",
        BASELINES["scratch"].label,
    ]
    assert [r.axes["data.class_subset"] for r in lines["pre-trained"]] == [3, 4, 5]
    assert lines[BASELINES["scratch"].label] == scratch


# ---------------------------------------------------------------------------------------------
# gains per class subset, the scratch recipe search, one `vitmim run` folder

TINY = {
    "model.embed_dim": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "model.decoder_dim": 32,
    "pretrain.batch_size": 16,
    "finetune.batch_size": 16,
    "data.classes": 2,
}


def grid_report(tmp: Path, data: Path, name: str, **spec) -> Path:
    """Run a tiny grid in-process on ``data`` and report it; returns the report folder."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": "smoke", "config": TINY, "probe": False, **spec}))
    out = tmp / name
    assert (
        cli.main(
            ["grid", str(path), "--out", str(out), "--data", str(data), "--executor", "inline"]
        )
        == 0
    )
    assert cli.main(["report", str(out)]) == 0
    return out / "report"


def section(report_md: str, title: str) -> list[str]:
    """The table lines of one ``## title`` section of report.md."""
    text = report_md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [ln for ln in text.splitlines() if ln.startswith("| ")]


@pytest.fixture(scope="module")
def unseen(tmp_path_factory, tiny_tin) -> Path:
    """Default recipe on two disjoint class subsets x 2 seeds, with three baselines."""
    return grid_report(
        tmp_path_factory.mktemp("unseen"),
        tiny_tin,
        "unseen",
        config={**TINY, "scratch": {"finetune.epochs": 2}},
        cross={"data.class_subset": [0, 1]},
        seeds=[0, 1],
        baselines=list(BASELINES_OF_UNSEEN),
    )


def test_gain_per_class_subset_and_seed(unseen):
    text = (unseen / "report.md").read_text()
    table = section(text, "Gain per class subset")
    assert table[0] == (
        "| variant | labels | class_subset | seed | Δ scratch same recipe "
        "| Δ scratch tuned | Δ scratch equal-FLOPs |"
    )
    body, summary_row = table[2:-1], table[-1]
    assert [tuple(c.strip() for c in ln.strip("|").split("|")[2:4]) for ln in body] == [
        ("0", "0"),
        ("0", "1"),
        ("1", "0"),
        ("1", "1"),
    ]
    runs = list(csv.DictReader(io.StringIO((unseen / "runs.csv").read_text())))
    top1 = {(r["cell"], r["seed"]): float(r["top1"]) for r in runs}
    gains = list(csv.DictReader(io.StringIO((unseen / "gains.csv").read_text())))
    assert len(gains) == 2 * 2 * 3  # subsets x seeds x baselines
    cells = {
        "scratch": "scratch,class_subset={}",
        "scratch_tuned": "scratch_tuned,class_subset={}",
        "scratch_equal_flops": "scratch_equal_flops,class_subset={}",
    }
    for g in gains:
        mine = top1[(f"class_subset={g['subset']}", g["seed"])]
        theirs = top1[(cells[g["baseline"]].format(g["subset"]), g["seed"])]
        assert float(g["gain"]) == pytest.approx(mine - theirs)
    tuned = [float(g["gain"]) for g in gains if g["baseline"] == "scratch_tuned"]
    mean, std, n = mean_std(tuned)
    assert f"{mean:+.2f} ± {std:.2f}** (n=4)" in summary_row.split("|")[6]
    assert "Tuned scratch recipe: finetune.epochs=2." in text
    assert (unseen / "plots" / "subset_gains.png").read_bytes()[:8] == PNG
    page = (unseen / "report.html").read_text()
    assert "gain of pre-training per class subset" in page and "Δ scratch tuned" in page


def test_gain_per_regime_with_its_interval_and_cost(unseen):
    gains = list(csv.DictReader(io.StringIO((unseen / "gains.csv").read_text())))
    regimes = list(csv.DictReader(io.StringIO((unseen / "regimes.csv").read_text())))
    assert [r["baseline"] for r in regimes] == ["scratch", "scratch_tuned", "scratch_equal_flops"]
    for r in regimes:
        mine = [float(g["gain"]) for g in gains if g["baseline"] == r["baseline"]]
        assert int(r["n"]) == 4 and float(r["gain"]) == pytest.approx(sum(mine) / 4)
        lo, hi = float(r["ci95_low"]), float(r["ci95_high"])
        assert min(mine) <= lo <= float(r["gain"]) <= hi <= max(mine)
        # each arm's cost: the mean over its runs of their epochs' CPU time, pre-training included
        costs = [float(g["core_min"]) for g in gains if g["baseline"] == r["baseline"]]
        assert float(r["core_min"]) == pytest.approx(sum(costs) / 4) and min(costs) > 0
    variant = unseen.parent / "class_subset=0" / "seed0"
    epochs = [
        json.loads(ln)
        for stage in ("pretrain", "finetune")
        for ln in (variant / stage / "metrics.jsonl").read_text().splitlines()
    ]
    threads = json.loads((variant / "finetune" / "manifest.json").read_text())["threads"]
    row = next(g for g in gains if g["subset"] == "0" and g["seed"] == "0")
    assert float(row["core_min"]) == pytest.approx(sum(e["cpu_s"] for e in epochs) / 60)
    # CPU time: never more than the threads could use in the epochs' wall time
    assert sum(e["cpu_s"] for e in epochs) <= sum(e["time_s"] for e in epochs) * threads * 1.05
    table = section((unseen / "report.md").read_text(), "Gain per regime")
    assert len(table) == 2 + 3 and "scratch, tuned recipe" in table[3]
    assert (unseen / "plots" / "regime_gains.png").read_bytes()[:8] == PNG


def test_a_cost_counted_from_wall_time_is_marked_as_an_upper_bound(unseen, tmp_path):
    # the runs of one arm, as records logged before epochs carried their CPU time hold them
    grid = shutil.copytree(
        unseen.parent, tmp_path / "grid", ignore=shutil.ignore_patterns("report")
    )
    for metrics in grid.glob("scratch,class_subset=0/seed0/*/metrics.jsonl"):
        epochs = [json.loads(ln) for ln in metrics.read_text().splitlines()]
        metrics.write_text("".join(json.dumps({**e, "cpu_s": None}) + "\n" for e in epochs))
    build_report(grid)
    regimes = list(csv.DictReader(io.StringIO((grid / "report" / "regimes.csv").read_text())))
    bound = {r["baseline"]: r["baseline_core_min_upper_bound"] for r in regimes}
    assert bound == {"scratch": "True", "scratch_tuned": "False", "scratch_equal_flops": "False"}
    assert {r["core_min_upper_bound"] for r in regimes} == {"False"}
    table = section((grid / "report" / "report.md").read_text(), "Gain per regime")
    costs = {ln.split("|")[3].strip(): ln.split("|")[-2].strip() for ln in table[2:]}
    assert costs["scratch, same recipe (equal fine-tune epochs)"].startswith("≤")
    assert not any(c.startswith("≤") for k, c in costs.items() if "same recipe" not in k)
    # unchanged: what the report of the untouched runs said
    before = list(csv.DictReader(io.StringIO((unseen / "regimes.csv").read_text())))
    assert {r["baseline_core_min_upper_bound"] for r in before} == {"False"}


def test_a_schedule_run_past_its_peak_shows_against_its_best_stretch(unseen, tmp_path):
    grid = shutil.copytree(
        unseen.parent, tmp_path / "grid", ignore=shutil.ignore_patterns("report")
    )
    # one tuned-scratch run, as if its 20 epochs had peaked half-way and then lost ground
    metrics = grid / "scratch_tuned,class_subset=0" / "seed0" / "finetune" / "metrics.jsonl"
    last = [json.loads(ln) for ln in metrics.read_text().splitlines()][-1]
    peaked = [30.0 + 3 * i for i in range(1, 11)] + [60.0 - 3 * i for i in range(1, 11)]
    metrics.write_text(
        "".join(
            json.dumps({**last, "epoch": i, "val_top1": v}) + "\n" for i, v in enumerate(peaked, 1)
        )
    )
    build_report(grid)
    label = BASELINES["scratch_tuned"].label

    def schedule_table(report: Path) -> dict[str, list[str]]:
        table = section((report / "report.md").read_text(), "Did each schedule end at its best?")
        return {
            ln.split("|")[3].strip(): [c.strip() for c in ln.split("|")[4:8]] for ln in table[2:]
        }

    rows, before = schedule_table(grid / "report"), schedule_table(unseen)
    assert list(rows) == ["pre-trained", *(BASELINES[k].label for k in BASELINES_OF_UNSEEN)]
    # its best tenth (epochs 9-10 or 10-11, mean 58.5: the first, ending half-way) against its
    # last (epochs 19-20, mean 31.5)
    assert schedule_end([{"val_top1": v} for v in peaked]) == (27.0, 0.5)

    def shortfall(run: Path) -> float:  # a run too short for a tenth to span two epochs
        top = [json.loads(ln)["val_top1"] for ln in run.read_text().splitlines()]
        assert len(top) < 15
        return max(top) - top[-1]

    others = [
        shortfall(m)
        for m in grid.glob("scratch_tuned,class_subset=*/seed*/finetune/metrics.jsonl")
        if m != metrics
    ]
    assert len(others) == 3
    assert rows[label][:3] == ["4", "2", f"{(27.0 + sum(others)) / 4:.2f}, 27.00"]
    assert "27.00" not in before[label][2]
    # the other arms: as the report of the untouched runs said
    assert {k: v for k, v in rows.items() if k != label} == {
        k: v for k, v in before.items() if k != label
    }


def test_bootstrap_interval_is_seeded_and_needs_two_pairs():
    assert bootstrap_interval([1.0]) is None
    a = bootstrap_interval([1.0, 2.0, 4.0])
    assert a == bootstrap_interval([1.0, 2.0, 4.0]) and 1.0 <= a[0] < a[1] <= 4.0
    assert bootstrap_interval([2.0, 2.0]) == (2.0, 2.0)


def test_tuned_scratch_trains_with_its_own_recipe_in_a_grid(unseen):
    grid = unseen.parent
    tuned = yaml.safe_load(
        (grid / "scratch_tuned,class_subset=1" / "seed0" / "finetune" / "config.yaml").read_text()
    )
    same = yaml.safe_load(
        (grid / "scratch,class_subset=1" / "seed0" / "finetune" / "config.yaml").read_text()
    )
    assert tuned["finetune"]["epochs"] == 2 and same["finetune"]["epochs"] == 1
    assert tuned["data"]["class_subset"] == 1


def test_scratch_recipe_search_ranks_recipes_and_writes_the_best(tmp_path, tiny_tin):
    from vitmim.config import load_config

    report = grid_report(
        tmp_path,
        tiny_tin,
        "search",
        seeds=[0],
        baselines=["scratch", "scratch_tuned"],
        cross={"data.class_subset": [0, 1]},
        variants={"scratch.finetune.epochs": [2, 3]},
    )
    assert sorted(p.name for p in report.parent.iterdir() if p.name != "report") == sorted(
        [
            "class_subset=0",
            "class_subset=1",
            "scratch,class_subset=0",
            "scratch,class_subset=1",
            "scratch_tuned,class_subset=0,epochs=2",
            "scratch_tuned,class_subset=0,epochs=3",
            "scratch_tuned,class_subset=1,epochs=2",
            "scratch_tuned,class_subset=1,epochs=3",
            "grid.json",
        ]
    )
    table = section((report / "report.md").read_text(), "Scratch recipes, best first")
    recipes = [ln.strip("|").split("|") for ln in table[2:]]
    assert sorted(r[0].strip() for r in recipes) == [
        "finetune.epochs=2",
        "finetune.epochs=3",
        "the fine-tune recipe",
    ]
    means = [float(r[2].split("±")[0]) for r in recipes]
    assert means == sorted(means, reverse=True) and {r[1].strip() for r in recipes} == {"2"}
    best = load_config([report / "scratch_recipe.yaml"]).scratch
    assert recipes[0][0].strip() == (
        "the fine-tune recipe" if not best else f"finetune.epochs={best['finetune.epochs']}"
    )


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, tiny_tin) -> tuple[Path, str, str]:
    """One `vitmim run` without a tuned scratch recipe, then again with one (finished stages
    are skipped, so only the tuned baseline trains the second time)."""
    out = tmp_path_factory.mktemp("run") / "run"
    args = [
        "run",
        "--preset",
        "smoke",
        "--data",
        str(tiny_tin),
        "--out",
        str(out),
        "--set",
        "data.classes=null",
        *(f"--set={k}={v}" for k, v in TINY.items() if k != "data.classes"),
    ]
    assert cli.main(args) == 0
    before = (out / "summary.md").read_text()
    assert (
        cli.main([*args, "--set", "scratch.finetune.epochs=2", "--set", "scratch.finetune.lr=2e-3"])
        == 0
    )
    return out, before, (out / "summary.md").read_text()


def test_vitmim_run_without_a_tuned_recipe_says_so(one_run):
    _, before, _ = one_run
    assert "| scratch_tuned | no tuned recipe set (config section scratch) |" in before
    assert "| scratch | scratch, same recipe (equal fine-tune epochs) |" in before


def test_vitmim_run_trains_scratch_with_its_own_tuned_recipe(one_run):
    out, _, after = one_run
    assert "| scratch_tuned | scratch, tuned recipe (2 epochs) |" in after
    recipes = {
        run: yaml.safe_load((out / run / "config.yaml").read_text())["finetune"]
        for run in ("finetune", "scratch", "scratch_tuned")
    }
    assert recipes["finetune"] == recipes["scratch"]
    assert (recipes["scratch_tuned"]["epochs"], recipes["scratch_tuned"]["lr"]) == (2, 0.002)
    assert len((out / "scratch_tuned" / "metrics.jsonl").read_text().splitlines()) == 2


def test_report_of_one_run_folder(one_run):
    out, _, _ = one_run
    assert cli.main(["report", str(out)]) == 0
    report = out / "report"
    for name in ("curves", "restoration"):
        assert (report / "plots" / f"{name}.png").read_bytes()[:8] == PNG
    assert [p.name for p in (report / "recon").glob("*.png")] == [
        "pretrain_seed0_recon_epoch001.png"
    ]  # the pre-training's, not called finetune
    text = (report / "report.md").read_text()
    results = text.split("\n## ", 1)[0]  # the results table, before the first section
    assert "val top-1" in results and "val top-5" not in results  # 4 classes: always 100 %
    stages = section(text, "Stages")
    assert "val top-1" in stages[0] and "val top-5" not in stages[0]
    assert [ln.split("|")[1].strip() for ln in stages[2:]] == [
        "pretrain",
        "finetune",
        "scratch",
        "scratch_tuned",
    ]
    main = [ln for ln in text.split("\n## ")[0].splitlines() if ln.startswith("| ")]
    assert "Δ scratch tuned" in main[0]
    assert [ln.split("|")[1].strip() for ln in main[2:]] == [
        "finetune",
        "scratch, same recipe (equal fine-tune epochs)",
        "scratch, tuned recipe",
    ]
    assert "Tuned scratch recipe: finetune.epochs=2, finetune.lr=0.002." in text
    page = (report / "report.html").read_text()
    assert "<script" not in page and len(re.findall(r"<img [^>]*src='data:image/png", page)) == 3


def test_published_reference_figures_stand_beside_the_grid(smoke_grid, tmp_path):
    """A spec's ``reference`` reaches the report through grid.json: the paper's scratch and best
    top-1 beside this grid's, rerunning the finished grid only records it."""
    runs_dir = tmp_path / "grid"
    shutil.copytree(smoke_grid, runs_dir)
    spec = yaml.safe_load(SMOKE.read_text())
    spec["reference"] = {"source": "Terentiev & Ivanenko 2024", "scratch": 40.0, "best": 44.7}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    cell = next(runs_dir.glob("*/seed0/cell.json"))
    data = yaml.safe_load(cell.read_text())["config"]["data"]["path"]  # JSON is YAML
    assert (
        cli.main(
            [
                "grid",
                str(path),
                "--out",
                str(runs_dir),
                "--data",
                data,
                "--set",
                "data.classes=null",
                "--executor",
                "inline",
            ]
        )
        == 0
    )
    assert cli.main(["report", str(runs_dir)]) == 0
    rows = section((runs_dir / "report" / "report.md").read_text(), "Beside the published figures")
    assert "Terentiev & Ivanenko 2024" in rows[0]
    assert rows[2].startswith("| scratch | 40.0 | ") and "(n=2)" in rows[2]
    assert rows[3].startswith("| best pre-trained | 44.7 | ") and "mask_ratio=" in rows[3]
    assert rows[4].startswith("| best - scratch | +4.7 | ")


@pytest.mark.parametrize(
    "reference",
    [
        {"source": "x", "scratch": 40.0},  # best missing
        {"source": "x", "scratch": "40", "best": 44.7},
        {"source": "x", "scratch": 40.0, "best": 144.7},
        [40.0, 44.7],
    ],
)
def test_bad_reference_is_refused_naming_the_key(tmp_path, reference):
    from vitmim.lab.grid import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"base": "smoke", "reference": reference}))
    with pytest.raises(UserError, match="key reference"):
        load_spec(path)
