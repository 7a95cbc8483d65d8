"""The Python API (``import vitmim``) and the package's front door: version, cheap imports."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import types
from importlib.metadata import version

import pytest
import yaml
from PIL import Image

import vitmim


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
        check=True,
    )


def test_version_flag_prints_the_installed_version():
    proc = subprocess.run(
        [sys.executable, "-m", "vitmim.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout == f"vitmim {version('vitmim')}\n"


def test_import_leaves_torch_unloaded():
    """`import vitmim` stays fast for notebooks and the CLI: torch (seconds to load) and timm
    come only with the first function that needs them."""
    proc = python("import vitmim, sys\nprint(sorted({'torch', 'timm'} & set(sys.modules)))")
    assert proc.stdout.splitlines()[-1] == "[]"


def test_training_results_are_typed_and_match_the_run_folder(tin2_runs):
    for result in (tin2_runs.pre, tin2_runs.ft):
        assert isinstance(result, vitmim.RunResult) and result.model_path.is_file()
        last = json.loads(result.metrics_path.read_text().splitlines()[-1])
        assert result.metrics == last
    assert tin2_runs.ft.metrics["epoch"] == 2  # finetune__epochs=2 overrode the preset's 1
    cfg = yaml.safe_load((tin2_runs.ft.run_dir / "config.yaml").read_text())
    assert cfg["data"]["classes"] == 2 and cfg["finetune"]["batch_size"] == 8
    manifest = json.loads((tin2_runs.ft.run_dir / "manifest.json").read_text())
    assert manifest["init"] == str(tin2_runs.pre.run_dir)


def test_evaluate_predict_reconstruct_on_a_finished_run(tin2_runs, tin2, tmp_path):
    metrics = vitmim.evaluate(tin2_runs.ft.run_dir)
    assert metrics["val_top1"] == tin2_runs.ft.metrics["val_top1"]  # same model, same images
    names = json.loads(tin2_runs.ft.model_path.with_suffix(".json").read_text())["class_names"]
    top = vitmim.predict(tin2_runs.ft.run_dir, tin2.images, topk=2)
    assert len(top) == len(tin2.images)
    for row in top:
        assert {name for name, _ in row} == set(names)
        assert sum(p for _, p in row) == pytest.approx(1.0, abs=1e-5)
    png = vitmim.reconstruct(
        tin2_runs.pre.run_dir, tin2.images[:2], tmp_path / "r.png", pretrain__mask_ratio=0.5
    )
    with Image.open(png) as im:
        assert im.size == (4 + 3 * 132, 24 + 2 * 132 + 4)  # a title row, 2 rows of 128 px


def test_run_returns_every_stage_and_the_summary(tin2, tmp_path):
    result = vitmim.run(data=tin2.path, out=tmp_path, preset="smoke", overrides=tin2.overrides)
    assert isinstance(result, vitmim.PipelineResult)
    assert list(result.runs) == ["pretrain", "finetune", "scratch"]
    assert all(r.model_path.is_file() for r in result.runs.values())
    assert "| finetune |" in result.summary
    assert result.summary in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"preset": "nope"}, vitmim.ConfigError),
        ({"overrides": {"pretrain.mask_ratio": 1.5}}, vitmim.ConfigError),
        ({"pretrain__no_such_key": 1}, vitmim.ConfigError),
    ],
)
def test_bad_arguments_raise_before_any_work(tin2, tmp_path, kwargs, error):
    with pytest.raises(error):
        vitmim.pretrain(data=tin2.path, out=tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_errors_are_user_errors():
    for cls in (vitmim.ConfigError, vitmim.DataError, vitmim.CheckpointError, vitmim.TrainingError):
        assert issubclass(cls, vitmim.UserError) and cls.exit_code == 2


def test_refusals_raise_the_type_of_their_cause(tin2, tin2_runs, tiny_unlabelled, tmp_path):
    """``except vitmim.ConfigError`` (or DataError, CheckpointError) catches every refusal of
    that cause, whichever module finds it; the finished runs are left as they were."""
    smoke = {"data": tin2.path, "preset": "smoke"}
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(vitmim.ConfigError, match="holds files that are not a vitmim run"):
        vitmim.pretrain(out=foreign, overrides=tin2.overrides, **smoke)
    big = {**tin2.overrides, "pretrain.batch_size": 4096}
    with pytest.raises(vitmim.ConfigError, match="pretrain.batch_size: 4096 is larger than"):
        vitmim.pretrain(out=tmp_path / "big", overrides=big, **smoke)
    with pytest.raises(vitmim.CheckpointError, match="holds a pretrain run, not a finetune"):
        vitmim.finetune(out=tin2_runs.pre.run_dir, overrides=tin2.overrides, **smoke)
    (tmp_path / "empty").mkdir()
    with pytest.raises(vitmim.CheckpointError, match="no run folders found"):
        vitmim.report(tmp_path / "empty", out=tmp_path / "report")
    with pytest.raises(vitmim.DataError, match="labelled"):
        vitmim.finetune(out=tmp_path / "ft", data=tiny_unlabelled, preset="smoke")


@pytest.mark.parametrize(
    "name",
    [
        "pretrain",
        "finetune",
        "run",
        "evaluate",
        "predict",
        "reconstruct",
        "export",
        "report",
        "probe",
        "grid",
        "load",
        "load_data",
        "pack_data",
        "download_data",
    ],
)
def test_api_functions_survive_importing_every_submodule(name):
    """Importing a submodule sets it as an attribute of the package: a module named like an API
    function would replace the function."""
    for mod in pkgutil.walk_packages(vitmim.__path__, "vitmim."):
        importlib.import_module(mod.name)
    assert isinstance(getattr(vitmim, name), types.FunctionType)


def test_report_writes_the_html_page(smoke_grid, tmp_path):
    grid = tmp_path / "grid"
    shutil.copytree(smoke_grid, grid, ignore=shutil.ignore_patterns("report"))
    page = vitmim.report(grid)
    assert page == grid / "report" / "report.html" and "<table" in page.read_text()


def test_data_and_checkpoint_errors_are_typed(tin2, tmp_path):
    with pytest.raises(vitmim.DataError):
        vitmim.pretrain(data=tmp_path / "no-such-archive.zip", out=tmp_path / "x", preset="smoke")
    (tmp_path / "w.safetensors").write_bytes(b"not weights")
    with pytest.raises(vitmim.CheckpointError):
        vitmim.finetune(
            init=tmp_path / "w.safetensors",
            data=tin2.path,
            out=tmp_path / "y",
            preset="smoke",
            overrides=tin2.overrides,
        )
