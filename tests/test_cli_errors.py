"""No traceback from any command: damaged run folders, grid folders and specs end with exit code 2
and one line on stderr naming the file; Ctrl-C ends with 130 and says how to continue.

Each command runs in-process through ``vitmim.cli.main`` (the same code path as the console
script, without a second interpreter per case); a few cases also run through a real subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import TIN_CLASSES, TIN_WORDS, image_bytes

from vitmim import checkpoint, cli
from vitmim.config import dump, load_config, to_dict
from vitmim.lab.grid import CELL_KEYS
from vitmim.models import build_classifier, build_restorer

TQDM = re.compile(r"\d+/\d+ \[")  # a progress-bar frame (data decoding), not a message
TINY = [
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_dim=32",
    "data.classes=null",
    "device=cpu",
]


def save_model(folder: Path, kind: str, data: Path) -> Path:
    """A run folder as a finished stage leaves it: model.safetensors + model.json."""
    cfg = load_config(overrides=[*TINY, f"data.path={data}"])
    model = (
        build_restorer(cfg.model, cfg.pretrain)
        if kind == "restorer"
        else build_classifier(cfg.model, len(TIN_CLASSES))
    )
    classes = sorted(TIN_CLASSES)
    checkpoint.save_weights(
        folder / "model.safetensors",
        model.state_dict(),
        meta={
            "kind": kind,
            "config": to_dict(cfg),
            "classes": classes,
            "class_names": [TIN_WORDS[c] for c in classes],
            "metrics": {},
        },
    )
    return folder


def save_grid(folder: Path, data: Path) -> Path:
    """A grid folder with one finished scratch run, as `vitmim grid` writes it."""
    cfg = load_config(overrides=[*TINY, f"data.path={data}"])
    seed_dir = folder / "scratch" / "seed0"
    save_model(seed_dir / "finetune", "classifier", data)
    job = {
        "cell": "scratch",
        "kind": "scratch",
        "axes": {},
        "seed": 0,
        "label_fractions": [1.0],
        "probe": True,
        "config": to_dict(cfg),
    }
    assert set(job) == set(CELL_KEYS)
    checkpoint.write_json(seed_dir / "cell.json", job)
    checkpoint.write_json(seed_dir / "probe_random_init.json", {"knn_top1": 30.0})
    (seed_dir / "finetune" / "config.yaml").write_text(dump(cfg))
    (seed_dir / "finetune" / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "epoch": e,
                    "step": 3 * e,
                    "train_loss": 1.0,
                    "val_top1": 25.0 + e,
                    "val_top5": 100.0,
                }
            )
            + "\n"
            for e in (1, 2)
        )
    )
    return folder


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory, tiny_tin: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("intact")
    image = root / "cat.png"
    image.write_bytes(image_bytes(3, fmt="PNG"))
    return {
        "fin": save_model(root / "fin", "classifier", tiny_tin),
        "pre": save_model(root / "pre", "restorer", tiny_tin),
        "grid": save_grid(root / "grid", tiny_tin),
        "image": image,
        "data": tiny_tin,
    }


# ---------------------------------------------------------------------------------------------
# damage: name -> (relative file, what to do to it)


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def make_folder(p: Path) -> None:
    p.unlink()
    p.mkdir()


def put(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def edit_json(**changes) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))

    return edit


def edit_yaml(**changes) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        raw = yaml.safe_load(p.read_text())
        raw["finetune"] = {**raw["finetune"], **changes}
        p.write_text(yaml.safe_dump(raw))

    return edit


BINARY = bytes(range(128, 256)) * 4  # not UTF-8
INVALID_JSON = "model.json: not valid JSON"
MODEL_JSON_DAMAGE = {  # name: (damage, text the line must contain)
    "truncated model.json": (truncate, INVALID_JSON),
    "empty model.json": (put(b""), INVALID_JSON),
    "model.json a list": (put(b"[1, 2]"), "model.json: model description: expected a JSON"),
    "model.json config of a wrong type": (edit_json(config=3), "key config: expected an object"),
    "model.json classes of a wrong type": (
        edit_json(classes="n01"),
        "key classes: expected a list",
    ),
    "model.json class names missing": (edit_json(class_names=["a"]), "4 classes but 1 class names"),
    "model.json binary": (put(BINARY), "model.json: model description is not UTF-8 text"),
    "model.json a folder": (
        make_folder,
        "model.json: expected a model description, found a folder",
    ),
    "model.json bad config value": (
        edit_json(config={"model": {"depth": -1}}),
        "model.json: config key model.depth: expected an integer",
    ),
}
WEIGHTS_DAMAGE = {
    "truncated model.safetensors": (truncate, "model.safetensors: not a readable safetensors"),
    "empty model.safetensors": (put(b""), "model.safetensors: not a readable safetensors"),
    "model.safetensors text": (
        put(b"hello, not weights\n"),
        "model.safetensors: not a readable safetensors",
    ),
    "model.safetensors a folder": (make_folder, "model.safetensors"),
}


def run_commands(c: dict[str, Path]) -> dict[str, list[str]]:
    """Each command that reads a run folder, on ``c``'s copies."""
    return {
        "eval": ["eval", str(c["fin"]), "--data", str(c["data"])],
        "predict": ["predict", str(c["fin"]), str(c["image"])],
        "export": ["export", str(c["fin"]), "--out", str(c["tmp"] / "timm.safetensors")],
        "reconstruct": [
            "reconstruct",
            str(c["pre"]),
            str(c["image"]),
            "--out",
            str(c["tmp"] / "r.png"),
        ],
        "probe": ["probe", str(c["pre"]), "--data", str(c["data"])],
    }


def init_command(c: dict[str, Path]) -> list[str]:
    return [
        "finetune",
        "--out",
        str(c["tmp"] / "ft"),
        "--init",
        str(c["pre"]),
        "--data",
        str(c["data"]),
        *(a for t in TINY for a in ("--set", t)),
        "--set",
        "finetune.batch_size=16",
    ]


# name -> (command given the folders, file damaged, damage, text the line must contain)
CASES: dict[
    str, tuple[Callable[[dict], list[str]], str | None, Callable[[Path], None] | None, str]
] = {}
for _cmd in ("eval", "predict", "export", "reconstruct", "probe"):
    _run = "pre" if _cmd in ("reconstruct", "probe") else "fin"
    for _file, _table in (("model.json", MODEL_JSON_DAMAGE), ("model.safetensors", WEIGHTS_DAMAGE)):
        for _name, (_damage, _text) in _table.items():
            CASES[f"{_cmd}: {_name}"] = (
                lambda c, k=_cmd: run_commands(c)[k],
                f"{_run}/{_file}",
                _damage,
                _text,
            )
for _name, (_damage, _text) in WEIGHTS_DAMAGE.items():
    CASES[f"finetune --init: {_name}"] = (init_command, "pre/model.safetensors", _damage, _text)
CELL = "grid/scratch/seed0/cell.json"
STAGE = "grid/scratch/seed0/finetune"
for _name, _damage, _text in [
    ("truncated cell.json", truncate, "cell.json: not valid JSON"),
    ("empty cell.json", put(b""), "cell.json: not valid JSON"),
    ("cell.json a list", put(b"[]"), "cell.json: grid cell: expected a JSON object"),
    ("cell.json seed of a wrong type", edit_json(seed="0"), "key seed: expected an integer"),
    ("cell.json binary", put(BINARY), "cell.json: grid cell is not UTF-8 text"),
    ("cell.json a folder", make_folder, "cell.json: expected a grid cell, found a folder"),
]:
    CASES[f"report: {_name}"] = (lambda c: ["report", str(c["grid"])], CELL, _damage, _text)
for _file, _name, _damage, _text in [
    (
        "metrics.jsonl",
        "truncated metrics.jsonl",
        lambda p: p.write_bytes(p.read_bytes()[:-5]),
        "metrics.jsonl:2: metrics log",
    ),
    ("metrics.jsonl", "metrics.jsonl a list", put(b"[1]\n"), "metrics.jsonl:1: metrics log"),
    ("config.yaml", "empty config.yaml", put(b""), "config.yaml: run config is empty"),
    ("config.yaml", "config.yaml binary", put(BINARY), "config.yaml: run config is not UTF-8"),
    (
        "config.yaml",
        "config.yaml bad value",
        edit_yaml(lr=float("nan")),
        "config.yaml: config key finetune.lr: expected a finite number",
    ),
    (
        "../probe_random_init.json",
        "truncated probe json",
        truncate,
        "probe_random_init.json: not valid JSON",
    ),
]:
    CASES[f"report: {_name}"] = (
        lambda c: ["report", str(c["grid"])],
        f"{STAGE}/{_file}",
        _damage,
        _text,
    )


def spec_case(data: bytes, text: str) -> tuple:
    def command(c: dict) -> list[str]:
        spec = c["tmp"] / "spec.yaml"
        spec.write_bytes(data)
        return ["grid", str(spec), "--out", str(c["tmp"] / "g"), "--data", str(c["data"])]

    return command, None, None, text  # the spec itself is the damaged input


CASES.update(
    {
        "grid: empty spec": spec_case(b"", "spec.yaml: grid spec is empty"),
        "grid: binary spec": spec_case(BINARY, "spec.yaml: grid spec is not UTF-8 text"),
        "grid: spec a list": spec_case(b"- 1\n", "spec.yaml: expected a mapping of keys"),
        "grid: 3,000-level spec": spec_case(
            b"config: " + b"[" * 3000 + b"]" * 3000, "spec.yaml: grid spec nests too deeply"
        ),
        "grid: spec base includes itself": spec_case(
            b"base: spec.yaml\n", "spec.yaml: base files include each other"
        ),
    }
)


def flag_case(command: str, *flags: str, text: str) -> tuple:
    """A bad command-line flag on an intact run folder."""
    return (lambda c: [*run_commands(c)[command], *flags]), None, None, text


CASES.update(
    {
        "predict: --topk -1": flag_case(
            "predict", "--topk", "-1", text="--topk -1: expected an integer >= 1"
        ),
        "probe: --k 0": flag_case("probe", "--k", "0", text="--k 0: expected an integer >= 1"),
        "probe: --device gpu": flag_case(
            "probe", "--device", "gpu", text="--device gpu: expected auto, cpu, cuda, cuda:N or mps"
        ),
    }
)


def prepare(name: str, tmp: Path, intact: dict[str, Path]) -> list[str]:
    """Copies of the intact folders under ``tmp`` with one file damaged; the CLI arguments."""
    c = {"tmp": tmp, "data": intact["data"]}
    for k in ("fin", "pre", "grid"):
        c[k] = tmp / k
        shutil.copytree(intact[k], c[k])
    c["image"] = tmp / "cat.png"
    shutil.copy(intact["image"], c["image"])
    command, rel, damage, _ = CASES[name]
    if rel is not None:
        damage((tmp / rel).resolve())
    return command(c)


def check_one_line(rc: int, err: str, text: str) -> None:
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.strip() and not TQDM.search(ln)]
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("vitmim: error: "), lines
    assert text in lines[0], lines[0]


def test_intact_folders_work(intact: dict[str, Path], tmp_path: Path, capsys) -> None:
    """The control: without damage the same commands succeed."""
    c = {**intact, "tmp": tmp_path}
    for name in ("predict", "export", "reconstruct"):
        assert cli.main(run_commands(c)[name]) == 0, capsys.readouterr().err
    assert cli.main(["report", str(intact["grid"]), "--out", str(tmp_path / "rep")]) == 0


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_input_gives_one_line(
    name: str, intact: dict[str, Path], tmp_path: Path, capsys
) -> None:
    args = prepare(name, tmp_path, intact)
    rc = cli.main(args)
    check_one_line(rc, capsys.readouterr().err, CASES[name][3])
    assert not (tmp_path / "ft").exists() and not (tmp_path / "g").exists()


def vitmim(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitmim.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=300,
        **kw,
    )


def test_truncated_model_json_and_cell_json_in_real_processes(
    intact: dict[str, Path], tmp_path: Path
) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    proc = vitmim(*prepare("eval: truncated model.json", tmp_path / "a", intact))
    check_one_line(proc.returncode, proc.stderr, INVALID_JSON)
    proc = vitmim(*prepare("report: truncated cell.json", tmp_path / "b", intact))
    check_one_line(proc.returncode, proc.stderr, "cell.json: not valid JSON")
    # the grid's own job runner reads cell.json the same way
    proc = subprocess.run(
        [sys.executable, "-m", "vitmim.lab.grid", str(tmp_path / "b" / CELL)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    check_one_line(proc.returncode, proc.stderr, "cell.json: not valid JSON")


def default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: a shell starts background jobs (a CI runner's, say) with
    SIGINT ignored, and the command under test would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_grid_says_rerun_not_resume(tmp_path: Path, tiny_tin: Path) -> None:
    """grid has no --resume: an interrupted grid continues when the same command is rerun."""
    spec = tmp_path / "spec.yaml"
    config = {k: yaml.safe_load(v) for k, v in (t.split("=") for t in TINY)}
    config.update({"pretrain.epochs": 500, "pretrain.batch_size": 16})  # still running at Ctrl-C
    spec.write_text(
        yaml.safe_dump(
            {"base": "smoke", "seeds": [0], "baselines": [], "probe": False, "config": config}
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vitmim.cli",
            "grid",
            str(spec),
            "--out",
            str(tmp_path / "g"),
            "--data",
            str(tiny_tin),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    metrics = tmp_path / "g" / "pretrained" / "seed0" / "pretrain" / "metrics.jsonl"
    deadline = time.time() + 240
    while not metrics.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # interrupt once the first run has trained an epoch
    assert proc.poll() is None, "the grid ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "rerun the same command" in err and "--resume" not in err
