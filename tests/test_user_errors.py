"""No traceback and no plain Python error a user can reach: wrong types through the Python API,
settings that contradict a run's weights, names that are not UTF-8, a cell of an unknown kind,
a YAML alias bomb. Each is refused in one line naming what to change."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import vitmim
from vitmim import cli
from vitmim.config import MAX_YAML_VALUES, YAMLTooLarge, load_yaml
from vitmim.errors import UserError

BOMB = (
    "\n".join(
        [f"a: &a [{','.join(['lol'] * 9)}]"]
        + [  # "billion laughs", 9 ** 9 values
            f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")
        ]
    )
    + "\n"
)


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda r, img, tmp: vitmim.reconstruct(r.pre.run_dir, [img], out=123),
            "out=123: expected a path",
        ),
        (
            lambda r, img, tmp: vitmim.reconstruct(r.pre.run_dir, [], tmp / "g.png"),
            "images: an empty list",
        ),
        (
            lambda r, img, tmp: vitmim.reconstruct(r.pre.run_dir, 7, tmp / "g.png"),
            "images=7: expected a list of paths",
        ),
        (
            lambda r, img, tmp: vitmim.reconstruct(
                r.pre.run_dir, [img], tmp / "g.png", overrides="pretrain.mask_ratio=0.4"
            ),
            "overrides='pretrain.mask_ratio=0.4': expected a dict",
        ),
        (
            lambda r, img, tmp: vitmim.predict(r.ft.run_dir, [img], topk=1.5),
            "topk=1.5: expected an integer",
        ),
        (lambda r, img, tmp: vitmim.predict(r.ft.run_dir, {img}), "expected a list of paths"),
        (lambda r, img, tmp: vitmim.export(r.ft.run_dir, out=123), "out=123: expected a path"),
        (lambda r, img, tmp: vitmim.evaluate(123), "run=123: expected a path"),
        (lambda r, img, tmp: vitmim.report(["a"]), "runs_dir=['a']: expected a path"),
        (
            lambda r, img, tmp: vitmim.pretrain(out=tmp / "p", config="x.yaml"),
            "config='x.yaml': expected a list",
        ),
        (lambda r, img, tmp: vitmim.finetune(out=tmp / "f", init=7), "init=7: expected a path"),
        (lambda r, img, tmp: vitmim.pretrain(out=tmp / "p", data=3.5), "data=3.5: expected a path"),
    ],
)
def test_api_wrong_types_are_one_line(call, message, tin2_runs, tin2, tmp_path):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")) as e:
        call(tin2_runs, tin2.images[0], tmp_path)
    assert "\n" not in str(e.value)


def test_a_single_image_path_is_one_image_not_its_characters(tin2_runs, tin2, tmp_path):
    img = tin2.images[0]
    assert (
        vitmim.predict(tin2_runs.ft.run_dir, str(img))
        == vitmim.predict(tin2_runs.ft.run_dir, [img])[0]
    )
    one = vitmim.reconstruct(tin2_runs.pre.run_dir, Path(img), tmp_path / "one.png")
    two = vitmim.reconstruct(tin2_runs.pre.run_dir, [img], tmp_path / "two.png")
    assert one.read_bytes() == two.read_bytes()


@pytest.mark.parametrize("key, value", [("model.embed_dim", 32), ("model.depth", 1)])
def test_reconstruct_refuses_settings_that_contradict_the_weights(
    tin2_runs, tin2, tmp_path, capsys, key, value
):
    code, err = run_cli(
        [
            "reconstruct",
            tin2_runs.pre.run_dir,
            tin2.images[0],
            "--out",
            tmp_path / "g.png",
            "--set",
            f"{key}={value}",
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1, err
    assert f"--set {key}={value}: " in err and f"was trained with {key}=" in err
    assert not (tmp_path / "g.png").exists()


def test_report_refuses_a_cell_of_an_unknown_kind(tin2_runs, tmp_path, capsys):
    seed = tmp_path / "grid" / "c" / "seed0"
    shutil.copytree(tin2_runs.ft.run_dir, seed / "finetune")
    from vitmim.config import load_config, to_dict

    (seed / "cell.json").write_text(
        json.dumps(
            {
                "cell": "c",
                "kind": "mystery",
                "axes": {},
                "seed": 0,
                "label_fractions": [1.0],
                "probe": False,
                "config": to_dict(load_config()),
            }
        )
    )
    code, err = run_cli(["report", tmp_path / "grid"], capsys)
    assert code == 2 and "kind 'mystery' is not one vitmim writes" in err
    assert not (tmp_path / "grid" / "report").exists()  # no half a report


@pytest.mark.parametrize("where", ["class folder", "image", "output"])
def test_names_that_are_not_utf8_are_one_line(tin_tools, tmp_path, capsys, where):
    data = tin_tools.write_folder_set(tmp_path / "set")
    root = os.fsencode(data)
    if where == "class folder":
        os.rename(root + b"/train/cat", root + b"/train/c\xffat")
        shutil.rmtree(data / "val")
    if where == "image":
        os.rename(root + b"/train/dog/0.jpg", root + b"/train/dog/\xfe0.jpg")
    out = os.fsdecode(os.fsencode(tmp_path) + (b"/out\xff" if where == "output" else b"/out"))
    code, err = run_cli(
        [
            "pretrain",
            "--data",
            data,
            "--out",
            out,
            "--preset",
            "smoke",
            "--set",
            "model.embed_dim=32",
            "--set",
            "model.depth=1",
            "--set",
            "model.num_heads=2",
            "--set",
            "model.decoder_dim=32",
            "--set",
            "data.classes=null",
            "--set",
            "pretrain.epochs=1",
            "--set",
            "pretrain.batch_size=8",
        ],
        capsys,
    )
    assert "Traceback" not in err
    if where == "output":  # a path is bytes to the file system: such a run folder works
        assert code == 0 and (Path(out) / "model.json").exists(), err[-2000:]
        return
    last = err.strip().splitlines()[-1]
    assert code == 2 and "not valid UTF-8; rename it" in last, err[-2000:]


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 400
    t0 = time.time()
    with pytest.raises(YAMLTooLarge):
        load_yaml(BOMB)
    assert time.time() - t0 < 2
    code, err = run_cli(["pretrain", "-c", bomb, "--out", tmp_path / "r"], capsys)
    assert code == 2 and f"more than {MAX_YAML_VALUES:,} values" in err
    code, err = run_cli(
        ["pretrain", "--set", f"data.classes={BOMB.splitlines()[0][4:]}", "--out", tmp_path / "r"],
        capsys,
    )
    assert code == 2
    assert not Path(tmp_path / "r").exists()


def test_anchors_within_reason_still_load():
    assert load_yaml("a: &x {k: 1}\nb: *x\n") == {"a": {"k": 1}, "b": {"k": 1}}
