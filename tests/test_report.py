"""Report: statistics, tables, CSV, plots and a self-contained HTML page from real run folders."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vitmim import cli
from vitmim.errors import UserError
from vitmim.lab.report import build_report, compare, mean_std

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(smoke_grid, tmp_path_factory) -> Path:
    """The report of the shared smoke grid (conftest), built from a copy of its folders."""
    runs_dir = tmp_path_factory.mktemp("report") / "grid"
    shutil.copytree(smoke_grid, runs_dir)
    assert cli.main(["report", str(runs_dir)]) == 0
    return runs_dir / "report"


def test_mean_std_is_the_sample_statistic():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5), 2)
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


def test_csv_parses_with_numbers_per_cell(report):
    rows = list(csv.DictReader(io.StringIO((report / "report.csv").read_text())))
    assert [r["kind"] for r in rows] == ["variant", "variant", "scratch",
                                         "scratch_equal_compute"]
    for r in rows:
        assert r["n"] == "2" and 0 <= float(r["top1_mean"]) <= 100 and float(r["top1_std"]) >= 0
        assert float(r["label_fraction"]) == 1.0
    assert rows[0]["pretrain.mask_ratio"] == "0.4"
    assert rows[0]["vs_scratch_verdict"] in ("> spread", "within spread")
    assert float(rows[0]["knn_mean"]) >= 0 and float(rows[0]["l1_mean"]) > 0
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


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="headless chromium not installed")
def test_html_renders_offline_in_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1200,2000",
                    (report / "report.html").as_uri()], check=True, timeout=60,
                   capture_output=True)
    assert shot.read_bytes()[:8] == PNG


def test_cells_with_different_axes_are_plotted_one_point_per_cell():
    from vitmim.lab.report import CELL_AXIS, Row, _series, _x_axis
    mixed = [Row("arch=vit", "variant", {"model.arch": "vit"}, 1.0, []),
             Row("arch=unet-vit,skips=none", "variant",
                 {"model.arch": "unet-vit", "model.skips": "none"}, 1.0, [])]
    assert _x_axis(mixed) == CELL_AXIS
    assert list(_series(mixed, CELL_AXIS)) == ["pre-trained"]
    grid = [Row(f"c{i}", "variant", {"pretrain.mask_patch": p, "pretrain.mask_ratio": r}, 1.0, [])
            for i, (p, r) in enumerate([(4, 0.2), (4, 0.6), (8, 0.2), (8, 0.6)])]
    assert _x_axis(grid) == "pretrain.mask_ratio"
    assert list(_series(grid, "pretrain.mask_ratio")) == ["mask_patch=4", "mask_patch=8"]
