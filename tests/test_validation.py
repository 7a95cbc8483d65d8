"""Every config key has a declared range, and every value outside it is refused up front.

The generic test walks every key of :class:`Config` (so a key added later is covered, or fails
here for want of a range) and tries bad values of each kind that applies to it (wrong type,
negative, zero, NaN, inf, out of range, huge) through ``vitmim pretrain --set``: exit code 2, one
line on stderr naming the key, and no output folder. The cases users reported, and the YAML
hazards, run through a real subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pytest

from vitmim import cli
from vitmim.config import Config, Range, config_keys, load_config

KEYS = config_keys()


def options(tp: Any) -> list[Any]:
    """The non-null alternatives of an annotation."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [t for t in typing.get_args(tp) if t is not type(None)]
    return [tp]


def number_cases(rule: Range, integer: bool) -> list[tuple[str, str]]:
    """Values outside ``rule``'s bounds: below, at an open end, above, huge."""
    cases = []
    step = 1 if integer else 0.5
    if rule.lo is not None:
        cases.append(
            ("below the range", f"{rule.lo - step:g}" if not integer else str(int(rule.lo) - 1))
        )
        if rule.lo > 0:
            cases.append(("negative", "-1"))
        if rule.lo_open:
            cases.append(("at the open lower end", f"{rule.lo:g}"))
    if rule.hi is not None:
        cases.append(
            (
                "above the range",
                str(int(rule.hi) + 1) if integer else f"{rule.hi + max(step, rule.hi / 2):g}",
            )
        )
        cases.append(("huge", "1" + "0" * 30 if integer else "1.0e+300"))
        if rule.hi_open:
            cases.append(("at the open upper end", f"{rule.hi:g}"))
    return cases


FLOAT_KINDS = [
    ("NaN", ".nan"),
    ("NaN as text", "nan"),
    ("inf", ".inf"),
    ("-inf", "-.inf"),
    ("inf as text", "1e400"),
    ("huge integer", "1" + "0" * 400),
]


def bad_values(tp: Any, rule: Range) -> list[tuple[str, str]]:
    """(kind, --set text) pairs that ``tp`` with ``rule`` must refuse."""
    opts = options(tp)
    cases = [("wrong type: mapping", "{a: 1}")]
    if type(None) not in typing.get_args(tp) and tp is not type(None):
        cases.append(("null", "null"))
    scalar = [t for t in opts if t in (int, float, bool, str)]
    lists = [typing.get_args(t)[0] for t in opts if typing.get_origin(t) is list]
    if int in scalar:
        cases += [
            ("wrong type: text", "abc"),
            ("wrong type: bool", "true"),
            ("wrong type: fraction", "2.5"),
            ("NaN", ".nan"),
            ("inf", ".inf"),
        ]
        cases += number_cases(rule, integer=True)
    if float in scalar:
        cases += [
            ("wrong type: text", "abc"),
            ("wrong type: bool", "true"),
            ("wrong type: list", "[1]"),
            *FLOAT_KINDS,
        ]
        cases += number_cases(rule, integer=False)
    if bool in scalar:
        cases += [("wrong type: text", "maybe"), ("wrong type: int", "1")]
    if str in scalar:
        cases += [("wrong type: list", "[1, 2]"), ("empty text", '""'), ("NUL in text", '"a\\0b"')]
    if any(typing.get_origin(t) is Literal for t in opts):
        cases += [("not a choice", "nonsense")]
        cases += [] if int in scalar else [("wrong type: int", "1")]  # auto or a count
    if lists:
        item = lists[0]
        cases += [("empty list", "[]")] if rule.nonempty else []
        if item is int:
            cases += [
                ("item: wrong type", "[abc]"),
                ("item: bool", "[true]"),
                ("item: NaN", "[.nan]"),
                ("item: zero", "[0]"),
                ("item: negative", "[-8]"),
            ]
        if item is str:
            cases += [("item: empty text", '[""]'), ("item: wrong type", "[[a]]")]
            cases += [("repeated items", "[a, a]")] if rule.distinct else []
    return list({text: (kind, text) for kind, text in reversed(cases)}.values())[::-1]


CASES = [
    (key, kind, text) for key, tp, rule in KEYS for kind, text in bad_values(tp, rule or Range())
]


def test_every_key_declares_a_range() -> None:
    """A key without a declared range fails here: declare it with vitmim.config.setting."""
    missing = [key for key, _, rule in KEYS if rule is None]
    assert not missing, f"config keys declared without setting(default, range): {missing}"
    assert len(KEYS) >= 45 and len(CASES) > 8 * len(KEYS)


@pytest.mark.parametrize("key, kind, text", CASES, ids=[f"{k}={t}" for k, _, t in CASES])
def test_every_bad_value_of_every_key_is_refused(key, kind, text, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    rc = cli.main(["pretrain", "--out", str(out), "--set", "device=cpu", "--set", f"{key}={text}"])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert rc == 2, (kind, err)
    assert len(lines) == 1 and lines[0].startswith("vitmim: error: config key "), (kind, err)
    assert f"config key {key}" in lines[0], (kind, err)
    assert not out.exists()


def test_defaults_and_edges_inside_the_ranges_are_accepted() -> None:
    cfg = load_config(
        overrides=[
            "pretrain.ema=0",
            "finetune.ema=0.9999",
            "finetune.layer_decay=1",
            "finetune.drop_path=0",
            "finetune.augment.erasing=1",
            "finetune.augment.crop_pad=0",
            "pretrain.min_lr=0",
            "pretrain.warmup_epochs=0",
            "data.label_fraction=1",
            "device=cuda:1",
            "device=mps",
            "model.decoder_depth=0",
            "finetune.label_smoothing=0",
            "checkpoint_every=0",
        ]
    )
    assert cfg.device == "mps" and cfg.finetune.ema == 0.9999
    assert Config() == load_config()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.embed_dim=190", "model.embed_dim: 190; expected a multiple of 4"),
        ("model.mlp_ratio=0.001", "model.mlp_ratio: 0.001 gives MLPs of 0 units"),
        ("model.num_heads=5", "model.num_heads: 5 does not divide model.embed_dim 192"),
        ("model.decoder_dim=100", "model.decoder_dim: 100; expected a multiple of 4 that splits"),
        ("pretrain.min_lr=0.01", "pretrain.min_lr: 0.01 is above pretrain.lr 0.0015"),
        ("finetune.augment.crop_pad=64", "finetune.augment.crop_pad: 64 px; expected less than"),
        ("pretrain.mask_patch=64", "pretrain.mask_ratio: 0.75 of 1 cells masks 1"),
        (
            "data.classes=[n01, n01]",
            "data.classes: expected a count >= 1, a non-empty list of distinct class ids",
        ),
    ],
)
def test_constraints_between_keys_name_the_key_and_value(override, message) -> None:
    from vitmim.errors import UserError

    with pytest.raises(UserError, match=re.escape(message)):
        load_config(overrides=[override])


def test_conv_stem_needs_a_power_of_two_patch() -> None:
    from vitmim.errors import UserError

    with pytest.raises(UserError, match="model.patch_size: 16 with model.conv_stem"):
        load_config(
            overrides=[
                "model.conv_stem=true",
                "model.patch_size=16",
                "model.embed_dim=8",
                "model.num_heads=1",
            ]
        )


# ---------------------------------------------------------------------------------------------
# reported cases and YAML hazards, each through a real subprocess


def nested_yaml(tmp: Path) -> list[str]:
    path = tmp / "deep.yaml"
    path.write_text("model: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n")
    return ["-c", str(path)]


def self_base(tmp: Path) -> list[str]:
    path = tmp / "self.yaml"
    path.write_text("base: self.yaml\nmodel: {depth: 2}\n")
    return ["-c", str(path)]


def base_cycle(tmp: Path) -> list[str]:
    (tmp / "a.yaml").write_text("base: b.yaml\n")
    (tmp / "b.yaml").write_text("base: sub/../a.yaml\n")
    (tmp / "sub").mkdir()
    return ["-c", str(tmp / "a.yaml")]


def write_file(name: str, data: bytes):
    def make(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(data)
        return ["-c", str(tmp / name)]

    return make


def base_not_text(tmp: Path) -> list[str]:
    (tmp / "bin.yaml").write_bytes(bytes([0xFF]) * 9)
    return write_file("top.yaml", b"base: bin.yaml\n")(tmp)


def set_(text: str):
    return lambda tmp: ["--set", text]


# name: (build -> CLI arguments after `pretrain --out OUT`, text the one line must contain)
REPORTED = {
    "device=gpu": (set_("device=gpu"), "config key device: expected auto, cpu, cuda, cuda:N"),
    "patch_size=0": (set_("model.patch_size=0"), "model.patch_size: expected an integer >= 1"),
    "num_heads=0": (set_("model.num_heads=0"), "model.num_heads: expected an integer >= 1"),
    "embed_dim=-6": (
        set_("model.embed_dim=-6"),
        "model.embed_dim: expected an integer in [1, 16384], got -6",
    ),
    "lr=nan": (set_("pretrain.lr=nan"), "pretrain.lr: expected a finite number, got 'nan'"),
    "warmup=nan": (
        set_("pretrain.warmup_epochs=nan"),
        "pretrain.warmup_epochs: expected a finite number",
    ),
    "erasing=2": (
        set_("finetune.augment.erasing=2"),
        "finetune.augment.erasing: expected a number in [0, 1], got 2",
    ),
    "crop_pad=-4": (
        set_("finetune.augment.crop_pad=-4"),
        "finetune.augment.crop_pad: expected an integer >= 0, got -4",
    ),
    "drop_path=2": (
        set_("finetune.drop_path=2"),
        "finetune.drop_path: expected a number in [0, 1), got 2",
    ),
    "label_smoothing=1.5": (
        set_("finetune.label_smoothing=1.5"),
        "finetune.label_smoothing: expected a number in [0, 1), got 1.5",
    ),
    "weight_decay=-1": (
        set_("pretrain.weight_decay=-1"),
        "pretrain.weight_decay: expected a number >= 0, got -1",
    ),
    "ema=1.5": (set_("finetune.ema=1.5"), "finetune.ema: expected a number in [0, 1), got 1.5"),
    "layer_decay=-1": (
        set_("finetune.layer_decay=-1"),
        "finetune.layer_decay: expected a number in (0, 1], got -1",
    ),
    "3,000-level YAML": (nested_yaml, "deep.yaml: config file nests too deeply"),
    "self-including base": (self_base, "self.yaml: base files include each other"),
    "base cycle": (base_cycle, "base files include each other"),
    "binary -c file": (
        write_file("w.safetensors", bytes(range(256)) * 8),
        "w.safetensors: config file is not UTF-8 text",
    ),
    "binary file that is UTF-8": (write_file("z.bin", bytes(64)), "z.bin: not valid YAML"),
    "empty -c file": (write_file("empty.yaml", b""), "empty.yaml: config file is empty"),
    "comments only": (write_file("c.yaml", b"# nothing\n"), "c.yaml: config file is empty"),
    "YAML list": (
        write_file("list.yaml", b"- 1\n- 2\n"),
        "list.yaml: expected a mapping of keys at the top level, got [1, 2]",
    ),
    "YAML scalar": (
        write_file("s.yaml", b"42\n"),
        "s.yaml: expected a mapping of keys at the top level, got 42",
    ),
    "Latin-1 file": (
        write_file("l1.yaml", "model: {arch: vït}\n".encode("latin-1")),
        "l1.yaml: config file is not UTF-8 text",
    ),
    "-c a folder": (lambda tmp: ["-c", str(tmp)], "expected a config file, found a folder"),
    "base not text": (base_not_text, "bin.yaml: config file is not UTF-8 text"),
    "base of wrong type": (
        write_file("bt.yaml", b"base: [1, 2]\n"),
        "bt.yaml: key base: expected a file name",
    ),
    "deep --set value": (
        set_("model.depth=" + "[" * 3000 + "]" * 3000),
        "--set model.depth: value nests too deeply",
    ),
    "huge int for a float": (
        set_("pretrain.lr=" + "9" * 400),
        "pretrain.lr: expected a finite number",
    ),
}


def check_one_line(rc: int, err: str, expected: str) -> None:
    lines = err.splitlines()
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("vitmim: error: "), lines
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("name", list(REPORTED))
def test_reported_case_is_one_line_exit_2(name: str, tmp_path: Path, capsys) -> None:
    args = REPORTED[name][0](tmp_path)
    rc = cli.main(["pretrain", "--out", str(tmp_path / "out"), *args])
    check_one_line(rc, capsys.readouterr().err, REPORTED[name][1])
    assert not (tmp_path / "out").exists()


def run_real(name: str, root: Path) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = root / "".join(c if c.isalnum() else "-" for c in name)
    tmp.mkdir()
    args = REPORTED[name][0](tmp)
    return tmp, subprocess.run(
        [sys.executable, "-m", "vitmim.cli", "pretrain", "--out", str(tmp / "out"), *args],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=300,
    )


def test_reported_cases_through_the_real_command(tmp_path: Path) -> None:
    """A few of the cases above in a real process: the entry point, stderr and exit code."""
    names = ["device=gpu", "lr=nan", "3,000-level YAML", "binary -c file"]
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(lambda n: run_real(n, tmp_path), names))
    for name, (tmp, proc) in zip(names, results):
        check_one_line(proc.returncode, proc.stderr, REPORTED[name][1])
        assert not (tmp / "out").exists()
