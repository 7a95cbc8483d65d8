"""End to end through the command line, each command a process of its own (tests/cliproc.py):
pretrain -> finetune -> use the model."""

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import cliproc
import pytest
import timm
import torch
import yaml
from conftest import TIN_WORDS
from PIL import Image
from safetensors.torch import load_file

from vitmim import cli
from vitmim.augment import normalize
from vitmim.inference import load_classifier, load_images

TINY = [
    "--preset",
    "smoke",
    "--set",
    "data.classes=null",
    "--set",
    "pretrain.batch_size=16",
    "--set",
    "finetune.batch_size=16",
    "--set",
    "pretrain.epochs=2",
    "--set",
    "finetune.epochs=2",
]


def vitmim(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    return cliproc.vitmim(*args, check=check)


@pytest.fixture(scope="module")
def trained(tiny_tin, tmp_path_factory):
    """One tiny `vitmim run` on the generated archive, shared by the tests below."""
    out = tmp_path_factory.mktemp("run")
    proc = vitmim(
        "run", "--data", tiny_tin, "--out", out, *TINY, "--set", "finetune.layer_decay=0.8"
    )
    return out, proc


def test_run_writes_three_runs_and_a_summary(trained):
    out, proc = trained
    for stage in ("pretrain", "finetune", "scratch"):
        d = out / stage
        for name in (
            "config.yaml",
            "manifest.json",
            "metrics.jsonl",
            "model.safetensors",
            "model.json",
        ):
            assert (d / name).is_file(), f"{stage}/{name} missing"
        lines = (d / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]
    assert "transfer:" in proc.stdout and "new: head.weight, head.bias" in proc.stdout
    assert "| finetune |" in proc.stdout and (out / "summary.md").is_file()
    manifest = json.loads((out / "finetune" / "manifest.json").read_text())
    assert manifest["transfer"]["new"] == ["head.weight", "head.bias"]
    assert manifest["data_fingerprint"] and manifest["packages"]["torch"] == torch.__version__
    assert len(list((out / "pretrain" / "images").glob("recon_epoch*.png"))) == 2


def test_pretrained_and_scratch_differ_only_by_init(trained):
    out, _ = trained
    pre = load_file(out / "finetune" / "model.safetensors")
    scratch = load_file(out / "scratch" / "model.safetensors")
    assert pre.keys() == scratch.keys()
    assert not torch.equal(
        pre["backbone.blocks.0.attn.qkv.weight"], scratch["backbone.blocks.0.attn.qkv.weight"]
    )
    # layer decay protects pre-trained layers; on random weights it would only handicap scratch
    recipes = {
        run: yaml.safe_load((out / run / "config.yaml").read_text())["finetune"]
        for run in ("finetune", "scratch")
    }
    assert recipes["finetune"].pop("layer_decay") == 0.8
    assert recipes["scratch"].pop("layer_decay") == 1.0
    assert recipes["finetune"] == recipes["scratch"]


def test_run_announces_each_stage_with_an_eta(trained):
    _, proc = trained
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("== stage")]
    assert [ln.split(":")[0] for ln in lines] == ["== stage 1/3", "== stage 2/3", "== stage 3/3"]
    assert "ETA" not in lines[0]  # no pace measured before the first stage ends
    assert all(re.search(r"\(ETA \d\d:\d\d, about \d+ (s|min) left\)$", ln) for ln in lines[1:])


def test_summary_leaves_out_top5_with_five_classes_or_fewer(trained):
    """4 classes: every image's class is among the top 5, so the table has no top-5 column;
    the measurement itself stays in summary.json."""
    out, proc = trained
    header = (out / "summary.md").read_text().splitlines()[0]
    assert header.startswith("| run | what | val top-1 % | restored L1 px |")
    assert "top-5" not in proc.stdout
    assert json.loads((out / "summary.json").read_text())["finetune"]["val_top5"] == 100.0


def test_rerun_skips_finished_stages(trained, tiny_tin):
    out, _ = trained
    proc = vitmim(
        "run", "--data", tiny_tin, "--out", out, *TINY, "--set", "finetune.layer_decay=0.8"
    )  # the same command as the first run
    assert proc.stdout.count("already finished") == 3


def test_equal_flops_baseline_trains_as_many_flops(trained, tiny_tin, tmp_path):
    """`--equal-compute flops`: scratch gets the pre-training's FLOPs as extra epochs, counted
    from the FLOPs per image that each run's manifest recorded at start-up."""
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    proc = vitmim(
        "run",
        "--data",
        tiny_tin,
        "--out",
        out,
        *TINY,
        "--set",
        "finetune.layer_decay=0.8",
        "--equal-compute",
        "flops",
    )
    assert proc.stdout.count("already finished") == 3 and "| scratch_flops |" in proc.stdout

    def recorded(run: str) -> tuple[float, int]:
        flops = json.loads((out / run / "manifest.json").read_text())["model"]["flops_per_image"]
        last = json.loads((out / run / "metrics.jsonl").read_text().splitlines()[-1])
        return flops, last["step"]

    pre_flops, pre_steps = recorded("pretrain")
    ft_flops, ft_steps = recorded("finetune")
    assert pre_flops < ft_flops  # the fast path encodes only the visible tokens
    per_epoch = ft_steps // 2  # both stages use batches of 16
    extra = math.ceil(pre_steps * pre_flops / ft_flops / per_epoch)
    assert extra >= 1
    config = yaml.safe_load((out / "scratch_flops" / "config.yaml").read_text())
    assert config["finetune"]["epochs"] == 2 + extra
    assert recorded("scratch_flops")[1] == (2 + extra) * per_epoch


def assert_same_evaluation(metrics: dict, run: Path) -> None:
    """``vitmim eval`` of a fine-tuned run gives what the run recorded after its last epoch:
    the same weights on the same validation images (the loss is sensitive to any change)."""
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["val_top1"] == last["val_top1"] and metrics["val_top5"] == last["val_top5"]
    assert metrics["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5)


def test_eval_predict_reconstruct_export(trained, tiny_tin, tmp_path):
    out, _ = trained
    metrics = json.loads(vitmim("eval", out / "finetune", "--data", tiny_tin).stdout)
    assert_same_evaluation(metrics, out / "finetune")

    img = tmp_path / "cat.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(img)
    lines = vitmim("predict", out / "finetune", img, "--topk", "3").stdout.splitlines()
    model, _, meta = load_classifier(out / "finetune")  # the same top 3, computed here
    # the first name words.txt gives each class, not its wnid
    assert sorted(meta["class_names"]) == sorted(w.split(",")[0] for w in TIN_WORDS.values())
    with torch.no_grad():
        probs, idx = model(normalize(load_images([img]))).softmax(-1)[0].topk(3)
    want = [f"{meta['class_names'][j]} ({p:.1%})" for p, j in zip(probs.tolist(), idx.tolist())]
    assert lines == ["\t".join([str(img), *want])]

    grid = tmp_path / "grid.png"
    vitmim("reconstruct", out / "pretrain", img, img, "--out", grid)
    assert Image.open(grid).size[1] > Image.open(grid).size[0] / 3 * 2 * 0.9  # 2 rows x 3

    exported = tmp_path / "timm.safetensors"
    vitmim("export", out / "finetune", "--out", exported)
    meta = json.loads(exported.with_suffix(".json").read_text())
    model = timm.models.vision_transformer.VisionTransformer(**meta["kwargs"])
    model.load_state_dict(load_file(exported), strict=True)
    assert meta["class_names"][1] == "goldfish"


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, tiny_tin):
    proc = vitmim("pretrain", "--out", tmp_path / "x", "--data", tmp_path / "nowhere", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "nowhere" in proc.stderr
    proc = vitmim("run", "--set", "pretrain.mask_ratio=1.5", check=False)
    assert proc.returncode == 2 and "pretrain.mask_ratio" in proc.stderr
    proc = vitmim(
        "finetune",
        "--data",
        tiny_tin,
        "--out",
        tmp_path / "y",
        *TINY,
        "--init",
        tmp_path / "missing.safetensors",
        check=False,
    )
    assert proc.returncode == 2 and "missing.safetensors" in proc.stderr
    assert not (tmp_path / "y" / "checkpoints").exists()


@pytest.mark.real_data
def test_smoke_preset_on_real_tin10(real_tin, tmp_path):
    """The documented smoke run: TIN-10 from the real archive, pre-train + fine-tune + scratch."""
    proc = vitmim("run", "--preset", "smoke", "--data", real_tin, "--out", tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["finetune"]["val_top1"] > 10.0  # 10 classes: above chance after one epoch
    header = (tmp_path / "summary.md").read_text().splitlines()[0]
    assert "| val top-1 % | val top-5 % |" in header  # more than 5 classes: top-5 tells something
    assert len(json.loads((tmp_path / "finetune" / "model.json").read_text())["classes"]) == 10
    assert "done in" in proc.stdout


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    return proc.stderr


def files_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("command", ["pretrain", "finetune", "run"])
def test_folder_of_user_files_is_refused_before_anything_is_written(command, tiny_tin, tmp_path):
    out = tmp_path / "mine"
    (out / "photos").mkdir(parents=True)
    (out / "notes.txt").write_text("not a run\n")
    proc = vitmim(command, "--data", tiny_tin, "--out", out, *TINY, check=False)
    assert "holds files that are not a vitmim run" in one_error_line(proc)
    assert sorted(p.name for p in out.rglob("*")) == ["notes.txt", "photos"]


def test_outputs_never_replace_the_files_of_a_run(trained, tmp_path, capsys):
    out, _ = trained
    pre, ft = out / "pretrain", out / "finetune"
    img = tmp_path / "cat.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(img)
    user_folder = tmp_path / "exports"
    (user_folder / "old.txt").parent.mkdir()
    (user_folder / "old.txt").write_text("mine\n")
    before = files_under(out) | files_under(user_folder)
    inside = "would write into the run folder"
    refused = {  # arguments: what the one line must say
        ("export", ft, "--out", ft / "model.safetensors"): inside,
        ("export", ft, "--out", ft / "manifest.safetensors"): inside,
        ("export", ft, "--out", ft / "checkpoints" / "a.safetensors"): inside,
        ("export", ft, "--out", ft / "config.yaml"): inside,
        ("export", ft, "--out", tmp_path / "weights.json"): "name a .safetensors file",
        ("export", ft, "--out", user_folder): "is a folder",
        ("reconstruct", pre, img, "--out", pre / "metrics.jsonl"): inside,
        ("reconstruct", pre, img, "--out", pre / "images" / "recon_epoch001.png"): inside,
        ("reconstruct", pre, img, "--out", out / "summary.md"): inside,
        # a new name beside the run's own files is another run's folder all the same
        ("reconstruct", pre, img, "--out", pre / "my_grid.png"): inside,
        ("reconstruct", pre, img, "--out", user_folder): "is a folder",
    }
    for args, message in refused.items():  # in this process: the refusal, not start-up, is tested
        assert cli.main(list(map(str, args))) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)
    assert files_under(out) | files_under(user_folder) == before
    # the run's report folder is the one place beside its stages that other commands write
    vitmim("reconstruct", pre, img, "--out", out / "report" / "my_grid.png")
    assert (out / "report" / "my_grid.png").is_file()
    shutil.rmtree(out / "report")


@pytest.mark.parametrize(
    "change, key, stage",
    [
        ("pretrain.mask_ratio=0.5", "pretrain.mask_ratio=0.75, not 0.5", "pretrain"),
        # a fine-tune setting leaves the restorer as it is: the fine-tune stage refuses it
        ("finetune.epochs=3", "finetune.epochs=2, not 3", "finetune"),
        ("model.depth=1", "model.depth=2, not 1", "pretrain"),
        ("data.classes=2", "data.classes=None, not 2", "pretrain"),
        ("pretrain.seed=1", "pretrain.seed=0, not 1", "pretrain"),
    ],
)
def test_rerun_or_resume_with_other_settings_is_refused_naming_the_key(
    trained, tiny_tin, change, key, stage
):
    out, _ = trained
    before = files_under(out)
    same = [*TINY, "--set", "finetune.layer_decay=0.8"]
    proc = vitmim("run", "--data", tiny_tin, "--out", out, *same, "--set", change, check=False)
    assert key in one_error_line(proc) and f"{out / stage}:" in proc.stderr
    proc = vitmim(
        "finetune",
        "--data",
        tiny_tin,
        "--out",
        out / "finetune",
        "--init",
        out / "pretrain",
        "--resume",
        *same,
        "--set",
        change,
        check=False,
    )
    stage = "finetune"
    if change.startswith("model."):  # the model comes from --init: that conflict comes first
        name, value = change.split("=")
        key = f"{name}={key.split('=')[1].split(',')[0]}, the config sets {name}={value}"
        stage = "--init"
    assert key in one_error_line(proc) and stage in proc.stderr
    assert files_under(out) == before


def test_rerun_on_other_data_is_refused(trained, tiny_tin, tin_tools, tmp_path):
    out, _ = trained
    other = tin_tools.zip_dir(tin_tools.write_tin(tmp_path, n_train=13), tmp_path / "other.zip")
    before = files_under(out)
    proc = vitmim(
        "run",
        "--data",
        other,
        "--out",
        out,
        *TINY,
        "--set",
        "finetune.layer_decay=0.8",
        check=False,
    )
    # the new data is decoded (with its progress bar) to learn its fingerprint; then one line
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"holds a run on other data (made from {tiny_tin})" in proc.stderr.splitlines()[-1]
    assert files_under(out) == before
    # the same data at another path is the same run
    moved = tmp_path / "moved.zip"
    shutil.copy(tiny_tin, moved)
    proc = vitmim("run", "--data", moved, "--out", out, *TINY, "--set", "finetune.layer_decay=0.8")
    assert proc.stdout.count("already finished") == 3


def test_run_folder_records_absolute_data_and_fingerprints(trained, tiny_tin, tmp_path):
    out, _ = trained
    manifest = json.loads((out / "pretrain" / "manifest.json").read_text())
    assert manifest["data"] == {"path": str(tiny_tin), "fingerprint": manifest["data_fingerprint"]}
    assert len(manifest["config_fingerprint"]) == 64
    # a relative --data is stored absolute, so the run evaluates from any working folder
    run = tmp_path / "scratch"
    cliproc.vitmim(
        "finetune",
        "--data",
        tiny_tin.name,
        "--out",
        run,
        *TINY,
        "--set",
        "finetune.epochs=1",
        cwd=tiny_tin.parent,
        check=True,
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["path"] == str(tiny_tin)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cliproc.vitmim("eval", run, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_evaluation(json.loads(proc.stdout), run)  # the same archive, found from elsewhere


def test_corrupted_final_model_is_refused_on_load(trained, tiny_tin, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    for stage in ("pretrain", "finetune"):
        weights = out / stage / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    proc = vitmim("eval", out / "finetune", check=False)
    assert "sha256 differs" in one_error_line(proc) and "finetune" in proc.stderr
    proc = vitmim(
        "finetune",
        "--data",
        tiny_tin,
        "--out",
        tmp_path / "ft",
        *TINY,
        "--init",
        out / "pretrain",
        check=False,
    )
    assert "sha256 differs" in one_error_line(proc) and "pretrain" in proc.stderr
    assert not (tmp_path / "ft" / "checkpoints").exists()
