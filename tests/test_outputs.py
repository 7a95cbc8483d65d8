"""The one rule of every writer: create new files, or replace only files vitmim wrote; never into
a run folder, onto an input, or outside the output folder. Every writer x every kind of target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from local_http import Server

import vitmim
from vitmim import outputs
from vitmim.config import load_config, to_dict
from vitmim.data import load_splits, pack
from vitmim.data.archive import download
from vitmim.errors import UserError
from vitmim.lab.report import build_report

USER_TEXT = "the user's own notes\n"


@pytest.fixture(scope="module")
def runs(tin2_runs, tmp_path_factory):
    """A `vitmim run`-shaped folder (pretrain/ + finetune/) copied from the shared tin2 runs."""
    run = tmp_path_factory.mktemp("outputs") / "run"
    shutil.copytree(tin2_runs.pre.run_dir, run / "pretrain")
    shutil.copytree(tin2_runs.ft.run_dir, run / "finetune")
    return run


def _image(tin2) -> Path:
    return tin2.images[0]


# each writer: (name, function writing to a target path, the target's kind: file or folder)
def _reconstruct(runs, tin2, target):
    return vitmim.reconstruct(runs / "pretrain", [str(_image(tin2))], target)


def _export_file(runs, tin2, target):
    return vitmim.export(runs / "finetune", target, format="file")


def _export_timm(runs, tin2, target):
    return vitmim.export(runs / "finetune", target, format="timm")


def _report(runs, tin2, target):
    return build_report(runs, target)


def _pack(runs, tin2, target):
    cfg = load_config(overrides=[f"data.path={tin2.path}", "data.classes=2"])
    train, val = load_splits(cfg.data, cfg.model.img_size, progress=False)
    return pack(train, val, target, source=tin2.path)


WRITERS = {
    "reconstruct": (_reconstruct, "grid.png", "file"),
    "export-file": (_export_file, "x.safetensors", "file"),
    "export-timm": (_export_timm, "model", "folder"),
    "report": (_report, "report", "folder"),
    "pack": (_pack, "subset.zip", "file"),
}


def _user_file(target: Path, kind: str) -> Path:
    """A file of the user's exactly where the writer would write (or into the folder)."""
    path = (
        target / {"model": "README.md", "report": "report.md"}[target.name]
        if kind == "folder"
        else target
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(USER_TEXT)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("writer", WRITERS)
def test_a_users_file_is_never_replaced(writer, runs, tin2, tmp_path):
    fn, name, kind = WRITERS[writer]
    target = tmp_path / name
    user = _user_file(target, kind)
    if writer == "export-file":  # the .json beside the weights is the user's too
        user = target.with_suffix(".json")
        user.write_text(USER_TEXT)
        target.unlink()
    with pytest.raises(UserError, match="not written by vitmim.*delete it, or choose another"):
        fn(runs, tin2, target)
    assert user.read_text() == USER_TEXT


@pytest.mark.parametrize("writer", WRITERS)
def test_its_own_earlier_output_is_replaced(writer, runs, tin2, tmp_path):
    fn, name, _ = WRITERS[writer]
    target = tmp_path / name
    fn(runs, tin2, target)
    fn(runs, tin2, target)  # the second time replaces what the first wrote
    assert target.exists()


@pytest.mark.parametrize("writer", WRITERS)
def test_an_output_changed_by_the_user_is_not_replaced(writer, runs, tin2, tmp_path):
    fn, name, kind = WRITERS[writer]
    target = tmp_path / name
    fn(runs, tin2, target)
    edited = (
        target / ("README.md" if name == "model" else "report.md") if kind == "folder" else target
    )
    edited.write_text(USER_TEXT)
    with pytest.raises(UserError, match="or was changed since"):
        fn(runs, tin2, target)
    assert edited.read_text() == USER_TEXT


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("where", ["run folder", "stage folder", "checkpoints"])
def test_never_into_a_run_folder(writer, where, runs, tin2):
    fn, name, _ = WRITERS[writer]
    folder = {
        "run folder": runs,
        "stage folder": runs / "finetune",
        "checkpoints": runs / "pretrain" / "checkpoints",
    }[where]
    before = _snapshot(runs)
    with pytest.raises(UserError, match="run folder"):
        fn(runs, tin2, folder / f"new_{name}")
    assert _snapshot(runs) == before


@pytest.mark.parametrize("writer", ["reconstruct", "pack"])
def test_never_onto_its_input(writer, runs, tin2, tmp_path):
    fn, _, _ = WRITERS[writer]
    source = tmp_path / "input"
    shutil.copy(_image(tin2) if writer == "reconstruct" else tin2.path, source)
    before = source.read_bytes()
    if writer == "reconstruct":
        with pytest.raises(UserError, match="is the input"):
            vitmim.reconstruct(runs / "pretrain", [str(source)], source)
    else:
        cfg = load_config(overrides=[f"data.path={source}", "data.classes=2"])
        train, val = load_splits(cfg.data, cfg.model.img_size, progress=False)
        with pytest.raises(UserError, match="is the input"):
            pack(train, val, source, source=source)
    assert source.read_bytes() == before


def test_pack_never_into_its_data_folder(tin_tools, tmp_path):
    data = tin_tools.write_folder_set(tmp_path / "set")
    cfg = load_config(overrides=[f"data.path={data}", "data.classes=null"])
    train, val = load_splits(cfg.data, cfg.model.img_size, progress=False)
    with pytest.raises(UserError, match="lies inside the input"):
        pack(train, val, data / "train" / "subset.zip", source=data)


def test_export_never_onto_the_weights_it_reads(runs, tmp_path):
    weights = tmp_path / "w" / "model.safetensors"
    shutil.copytree(runs / "finetune", weights.parent, ignore=shutil.ignore_patterns("*.jsonl"))
    for name in ("config.yaml", "manifest.json"):
        (weights.parent / name).unlink()
    shutil.rmtree(weights.parent / "checkpoints")
    before = weights.read_bytes()
    with pytest.raises(UserError):
        vitmim.export(weights, weights, format="file")
    assert weights.read_bytes() == before


def test_download_never_replaces_a_users_file(tmp_path, tiny_tin):
    dest = tmp_path / "mine.zip"
    dest.write_text(USER_TEXT)
    with Server(tiny_tin.parent) as s, pytest.raises(UserError, match="not written by vitmim"):
        download(
            f"{s.url}/{tiny_tin.name}", dest, sha256="0" * 64, progress=False, allow_local_http=True
        )
    assert dest.read_text() == USER_TEXT


def test_download_records_what_it_wrote(tmp_path, tiny_tin):
    from vitmim.checkpoint import sha256

    dest, digest = tmp_path / "t.zip", sha256(tiny_tin)
    with Server(tiny_tin.parent) as s:
        url = f"{s.url}/{tiny_tin.name}"
        download(url, dest, sha256=digest, progress=False, allow_local_http=True)
        assert outputs.recorded(dest)
        download(url, dest, sha256=digest, progress=False, allow_local_http=True)
    assert sha256(dest) == digest


def test_report_cell_names_do_not_leave_the_report_folder(runs, tmp_path):
    grid = tmp_path / "grid"
    seed = grid / "c" / "seed0"
    shutil.copytree(runs / "pretrain", seed / "pretrain")
    shutil.copytree(runs / "finetune", seed / "finetune")
    cfg = to_dict(load_config())
    (seed / "cell.json").write_text(
        json.dumps(
            {
                "cell": "../../../../escaped",
                "kind": "variant",
                "axes": {},
                "seed": 0,
                "label_fractions": [1.0],
                "probe": False,
                "config": cfg,
            }
        )
    )
    with pytest.raises(UserError, match="lies outside"):
        build_report(grid, tmp_path / "rep")
    assert not list(tmp_path.rglob("escaped*"))


def test_training_refuses_an_out_inside_its_unlabelled_data(tin_tools, tmp_path):
    photos = tin_tools.write_unlabelled(tmp_path / "photos")
    with pytest.raises(UserError, match="lies inside .*input of this run"):
        vitmim.pretrain(data=photos, out=photos / "run", preset="smoke", progress=False)
    assert not (photos / "run").exists()


def test_finetune_refuses_an_out_that_is_its_init(runs, tin2, tmp_path):
    init = tmp_path / "pre"
    shutil.copytree(runs / "pretrain", init)
    with pytest.raises(UserError, match="input of this run"):
        vitmim.finetune(init=init, out=init, data=tin2.path, preset="smoke", progress=False)


def test_grid_status_never_replaces_a_users_file(tmp_path):
    from vitmim.lab.grid import write_grid_status

    mine = tmp_path / "grid.json"
    mine.write_text(USER_TEXT)
    with pytest.raises(UserError, match="grid.json: exists and was not written by vitmim"):
        write_grid_status(tmp_path, [], {})
    assert mine.read_text() == USER_TEXT
    mine.unlink()
    write_grid_status(tmp_path, [], {})
    write_grid_status(tmp_path, [], {})  # its own status, rewritten as the grid goes
