"""A newcomer's path on their own images: class folders -> pre-train -> fine-tune -> predict ->
load -> export -> timm, with the files a user has (28x28 grey, mixed-size colour, palette, RGBA)
and the commands run as processes where a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cliproc
import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageOps

import vitmim

CLASSES = ("boot", "sneaker", "trouser")
TINY = {"pretrain.batch_size": 8, "finetune.batch_size": 8}


def write_own_images(root: Path, per_class: int = 12) -> Path:
    """``root/<class>/<k>.png`` (torchvision's ImageFolder layout, no train/ or val/): 28x28
    grey, wide colour, palette and RGBA images whose class is a bright vertical band."""
    rng = np.random.default_rng(0)
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            grey = rng.integers(0, 40, (28, 28))
            grey[:, ci * 9 : (ci + 1) * 9] += 200
            im = Image.fromarray(grey.astype(np.uint8), "L")
            if k % 4 == 1:
                im = im.convert("RGB").resize((40 + 7 * k, 30))
            elif k % 4 == 2:
                im = im.convert("P")
            elif k % 4 == 3:
                rgba = np.array(im.convert("RGBA"))
                rgba[:4, :, 3] = 0  # a transparent strip: white, as vitmim reads it
                im = Image.fromarray(rgba, "RGBA")
            im.save(root / c / f"{k}.png")
    return root


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return cliproc.vitmim(*args, check=check, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory):
    """Own class folders, a smoke pre-training on them (a process) and a fine-tune from it
    through the API without repeating the preset."""
    root = tmp_path_factory.mktemp("own")
    data = write_own_images(root / "clothes")
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    cli("pretrain", "--data", str(data), "--out", str(root / "pre"), "--preset", "smoke", *sets)
    ft = vitmim.finetune(
        init=root / "pre",
        data=data,
        out=root / "ft",
        overrides=TINY,
        finetune__epochs=3,
        progress=False,
    )
    return root, data, ft


def test_class_folders_are_labelled_with_a_recorded_held_out_split(own):
    root, data, ft = own
    cfg = json.loads((ft.run_dir / "model.json").read_text())["config"]
    assert cfg["data"]["classes"] is None  # auto: every class of a folder, not TIN's 10
    assert cfg["data"]["val_fraction"] == 0.1 and cfg["data"]["split_seed"] == 0
    train, val = vitmim.load_data(data, progress=False)
    assert train.classes == list(CLASSES) and len(train) + len(val) == 36
    assert torch.bincount(val.labels).tolist() == [1, 1, 1]  # round(0.1 * 12) per class
    again, val2 = vitmim.load_data(data, progress=False)
    assert torch.equal(val.images, val2.images)  # seeded: the same split every time
    _, other = vitmim.load_data(data, data__split_seed=1, progress=False)
    assert not torch.equal(other.images, val.images)
    assert "val_top1" in ft.metrics
    with pytest.raises(vitmim.DataError, match="class_subset: needs a class count"):
        vitmim.load_data(data, data__class_subset=1, progress=False)  # auto: all, no blocks


def test_finetune_from_a_run_builds_that_runs_model(own):
    root, _, ft = own
    pre = json.loads((root / "pre" / "model.json").read_text())["config"]["model"]
    mine = json.loads((ft.run_dir / "model.json").read_text())["config"]["model"]
    assert mine == pre and mine["embed_dim"] == 64  # the smoke model, not the default 192


def test_a_conflicting_model_setting_is_one_checkpoint_error_line(own, tmp_path):
    root, data, _ = own
    with pytest.raises(
        vitmim.CheckpointError,
        match=r"model.embed_dim=64, the config sets "
        r"model.embed_dim=192",
    ):
        vitmim.finetune(init=root / "pre", data=data, out=tmp_path / "x", model__embed_dim=192)
    proc = cli(
        "finetune",
        "--init",
        str(root / "pre"),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "y"),
        "--set",
        "model.patch_size=4",
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "model.patch_size=8, the config sets model.patch_size=4" in proc.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_unlabelled_folder_is_refused_for_fine_tuning_before_decoding(tmp_path):
    flat = tmp_path / "flat"
    write_own_images(tmp_path / "own", per_class=2)
    flat.mkdir()
    for p in (tmp_path / "own").rglob("*.png"):
        p.rename(flat / f"{p.parent.name}_{p.name}")
    cache = tmp_path / "cache"
    with pytest.raises(
        vitmim.DataError,
        match=r"no class folders; fine-tuning needs labels: "
        r"arrange them as <class>/<image>",
    ):
        vitmim.finetune(data=flat, out=tmp_path / "ft", data__cache_dir=str(cache))
    assert not cache.exists()  # refused before any image was decoded


def test_restorer_pretrained_without_labels_is_probed_on_labelled_data(own, tmp_path):
    root, data, _ = own
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(data.rglob("*.png"))[::3]:
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    pre = vitmim.pretrain(
        data=flat, out=tmp_path / "pre", preset="smoke", overrides=TINY, progress=False
    )
    result = json.loads(cli("probe", str(pre.run_dir), "--data", str(data)).stdout)
    assert result["n_train"] + result["n_val"] == 36
    again = vitmim.probe(pre.run_dir, data=data, device="cpu")  # in-process: the same numbers
    assert {k: v for k, v in again.items() if k != "time_s"} == {
        k: v for k, v in result.items() if k != "time_s"
    }


def test_predict_takes_one_path_or_a_list_and_a_device(own):
    _, data, ft = own
    one = data / "boot" / "3.png"
    single = vitmim.predict(ft.run_dir, one, topk=2, device="cpu")
    assert single == vitmim.predict(ft.run_dir, str(one), topk=2)
    assert vitmim.predict(ft.run_dir, [one], topk=2) == [single]
    assert [name for name, _ in single][0] in CLASSES
    with pytest.raises(vitmim.ConfigError, match="--device tpu"):
        vitmim.predict(ft.run_dir, one, device="tpu")
    out = cli("predict", str(ft.run_dir), str(one), "--device", "cpu", "--topk", "1").stdout
    assert out.startswith(f"{one}\t{single[0][0]} (")


def test_load_gives_the_model_and_the_transform_predict_uses(own):
    _, data, ft = own
    model, transform = vitmim.load(ft.run_dir, device="cpu")
    paths = sorted(data.rglob("*.png"))[:8]
    with torch.no_grad():
        probs = model(torch.stack([transform(p) for p in paths])).softmax(-1)
        from_pil = model(torch.stack([transform(Image.open(p)) for p in paths])).softmax(-1)
    torch.testing.assert_close(probs, from_pil)
    ours = vitmim.predict(ft.run_dir, paths, topk=1)
    assert [model.class_names[i] for i in probs.argmax(1)] == [row[0][0] for row in ours]


def timm_top1(model: torch.nn.Module, path: Path, letterbox: bool = False) -> int:
    """timm's standard pipeline, as the exported card shows it (transparency on white first;
    for a pad run the card's white letterbox)."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    img = Image.open(path)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    if letterbox:
        img = ImageOps.pad(img.convert("RGB"), (64, 64), Image.Resampling.BICUBIC, color="white")
    with torch.no_grad():
        return int(model(transform(img.convert("RGB"))[None]).argmax())


@pytest.mark.parametrize("resize", ["fit", "crop", "pad"])
def test_timm_pipeline_on_the_export_gives_predicts_top1(own, tmp_path, resize):
    """Non-square, palette and RGBA files through timm's own preprocessing of the exported
    folder predict what `vitmim predict` does."""
    root, data, ft = own
    run = ft.run_dir
    if resize != "fit":  # the folder default; crop trained anew (on these tiny images: seconds)
        run = vitmim.finetune(
            init=root / "pre",
            data=data,
            out=tmp_path / "ft",
            overrides=TINY,
            data__resize=resize,
            finetune__epochs=3,
            progress=False,
        ).run_dir
    out = tmp_path / "export"
    assert cli("export", str(run), "--format", "timm", "--out", str(out)).returncode == 0
    config = json.loads((out / "config.json").read_text())
    modes = {"fit": "squash", "crop": "center", "pad": "border"}
    assert config["pretrained_cfg"]["crop_mode"] == modes[resize]
    assert config["architecture"] == "vit_small_patch8_224"  # nearest registered to 64-d, p8
    assert config["model_name"] == "vitmim-vit-d64-l2-h2-p8-64px"
    card = (out / "README.md").read_text()
    for fact in (
        "license:",
        "training images",
        "transparency composited on white",
        "clothes",
        config["pretrained_cfg"]["crop_mode"],
    ):
        assert fact in card
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    files = [
        data / "boot" / "1.png",
        data / "sneaker" / "5.png",  # non-square colour
        data / "trouser" / "2.png",
        data / "boot" / "6.png",  # palette
        data / "sneaker" / "3.png",
        data / "trouser" / "7.png",
    ]  # RGBA
    names = model.pretrained_cfg["label_names"]
    ours = [row[0][0] for row in vitmim.predict(run, files, topk=1)]
    assert [names[timm_top1(model, f, resize == "pad")] for f in files] == ours
    assert ("ImageOps.pad" in card) == (resize == "pad")


def test_a_bad_config_key_is_refused_before_torch_loads(tmp_path):
    t0 = time.perf_counter()
    proc = cli("pretrain", "--out", str(tmp_path / "x"), "--set", "model.bogus=1", check=False)
    took = time.perf_counter() - t0
    assert proc.returncode == 2 and "unknown config key model.bogus" in proc.stderr
    assert took < 5, took  # 0.2 s on a quiet 2-core machine; torch alone takes 3-10 s here
    for call in (
        "vitmim.finetune(out='x', model__bogus=1)",
        "vitmim.predict('run', 'cat.jpg', device='tpu')",
    ):
        code = (
            f"import sys, vitmim\ntry:\n    {call}\nexcept vitmim.ConfigError:\n"
            f"    print(sorted({{'torch', 'timm'}} & set(sys.modules)))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
        ).stdout
        assert out.strip() == "[]", call


def test_readme_notebook_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, with DATA a user's own folder (enough images for the default
    batch sizes) and cat.jpg one of its images, runs unchanged (the smoke preset is given once,
    to pre-training only)."""
    data = write_own_images(tmp_path / "clothes", per_class=50)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    Image.open(data / "boot" / "1.png").convert("RGB").save(tmp_path / "cat.jpg")
    namespace = {"DATA": str(data)}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert (tmp_path / "export" / "ft" / "config.json").is_file()


def test_reconstruction_sheet_is_titled_readable_and_keeps_grey_grey(own, tmp_path):
    root, data, _ = own
    png = vitmim.reconstruct(
        root / "pre", data / "boot" / "0.png", tmp_path / "r.png", device="cpu"
    )
    with Image.open(png) as im:
        sheet = np.asarray(im.convert("RGB")).astype(int)
    assert sheet.shape == (24 + 132 + 4, 4 + 3 * 132, 3)  # a title row, 128 px tiles
    assert (sheet[:24] < 128).any()  # the column titles are drawn
    restored = sheet[24 : 24 + 128, 4 + 2 * 132 : 4 + 2 * 132 + 128]
    assert (restored.max(2) == restored.min(2)).all()  # a grey input's restoration is grey


def test_a_restorer_learns_from_a_pool_of_unlabelled_images_beside_the_labelled_ones(own, tmp_path):
    """Many unlabelled images, few labelled ones: pretrain.pool names the unlabelled folder; the
    labelled classes are what fine-tuning learns."""
    root, data, _ = own
    pool = tmp_path / "unlabelled"
    pool.mkdir()
    images = sorted(data.rglob("*.png"))
    for k, p in enumerate(images + images[:12]):  # more images than the labelled set holds
        (pool / f"{k}.png").write_bytes(p.read_bytes())
    overrides = {**TINY, "pretrain.pool": str(pool), "pretrain.epochs": 1}
    pre = vitmim.pretrain(
        data=data, out=tmp_path / "pre", preset="smoke", overrides=overrides, progress=False
    )
    man = json.loads((pre.run_dir / "manifest.json").read_text())
    assert man["data"]["path"] == str(pool) and man["train_images"] == 43  # 48, 10 % held out
    assert man["classes"] == []  # the pool has no labels, and pre-training needs none
    ft = vitmim.finetune(
        init=pre.run_dir,
        data=data,
        out=tmp_path / "ft",
        overrides=TINY,
        finetune__epochs=1,
        progress=False,
    )
    assert json.loads((ft.run_dir / "manifest.json").read_text())["classes"] == list(CLASSES)
