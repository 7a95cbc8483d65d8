"""A reused result is checked wherever it is reused: every reuse point x every kind of change.

Reuse points: ``--resume`` of a stopped run, a rerun into its folder, the data cache. Changes:
config.yaml or manifest.json deleted or damaged, another config, other data, another --init,
an image replaced with its size and mtime kept, deleted checkpoints.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

import vitmim
from vitmim.config import load_config
from vitmim.data import load_splits
from vitmim.errors import UserError

TINY = {
    "model.embed_dim": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "model.decoder_dim": 32,
    "data.classes": None,
    "device": "cpu",
    "pretrain.epochs": 1,
    "finetune.epochs": 1,
    "pretrain.batch_size": 16,
    "finetune.batch_size": 16,
}


def _pretrain(data, out, **more):
    return vitmim.pretrain(
        data=data, out=out, preset="smoke", overrides={**TINY, **more}, progress=False
    )


@pytest.fixture(scope="module")
def stopped(tiny_tin, tmp_path_factory) -> Path:
    """A pre-training stopped after its checkpoints were written (its final model removed)."""
    run = tmp_path_factory.mktemp("reuse") / "pre"
    _pretrain(tiny_tin, run)
    (run / "model.safetensors").unlink()
    (run / "model.json").unlink()
    return run


@pytest.fixture()
def run(stopped, tmp_path) -> Path:
    copy = tmp_path / "pre"
    shutil.copytree(stopped, copy)
    return copy


def _resume(run, data, **more):
    return vitmim.pretrain(
        data=data, out=run, preset="smoke", overrides={**TINY, **more}, resume=True, progress=False
    )


@pytest.mark.parametrize("damage", ["deleted", "damaged"])
def test_resume_without_a_readable_config_compares_the_manifest(run, tiny_tin, damage):
    if damage == "deleted":
        (run / "config.yaml").unlink()
    else:
        (run / "config.yaml").write_text("{{{ not yaml")
    with pytest.raises(UserError, match="made with another config"):
        _resume(run, tiny_tin, **{"pretrain.mask_ratio": 0.5})
    _resume(run, tiny_tin)  # the same config continues


@pytest.mark.parametrize("missing", ["manifest.json", "both"])
def test_resume_without_a_record_of_the_data_is_refused(
    run, tiny_tin, tin_tools, tmp_path, missing
):
    (run / "manifest.json").unlink()
    if missing == "both":
        (run / "config.yaml").unlink()
    other = tin_tools.zip_dir(tin_tools.write_tin(tmp_path, n_train=13), tmp_path / "other.zip")
    with pytest.raises(UserError, match="so whether it is this one cannot be told; delete"):
        _resume(run, other)


def test_resume_on_other_data_is_refused(run, tin_tools, tmp_path):
    other = tin_tools.zip_dir(tin_tools.write_tin(tmp_path, n_train=13), tmp_path / "other.zip")
    with pytest.raises(UserError, match="holds a run on other data"):
        _resume(run, other)


def test_a_changed_init_is_refused(stopped, tiny_tin, tmp_path):
    pre_a, pre_b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(stopped, pre_a)
    _resume(pre_a, tiny_tin)
    _pretrain(tiny_tin, pre_b, **{"pretrain.seed": 1})
    ft = tmp_path / "ft"
    kw = dict(data=tiny_tin, out=ft, preset="smoke", overrides=TINY, progress=False)
    vitmim.finetune(init=pre_a, **kw)
    (ft / "model.safetensors").unlink()  # stopped: its checkpoints remain
    with pytest.raises(UserError, match="started from .*not from these weights; pass the same"):
        vitmim.finetune(init=pre_b, resume=True, **kw)
    with pytest.raises(UserError, match="not from random weights"):
        vitmim.finetune(resume=True, **kw)
    vitmim.finetune(init=pre_a, resume=True, **kw)


def test_a_stage_never_trains_in_the_folder_of_another(run, tiny_tin):
    _resume(run, tiny_tin)
    with pytest.raises(UserError, match="holds a pretrain run, not a finetune run"):
        vitmim.finetune(data=tiny_tin, out=run, preset="smoke", overrides=TINY, progress=False)


def test_a_rerun_after_its_checkpoints_were_deleted_does_not_mix_metrics(run, tiny_tin):
    before = (run / "metrics.jsonl").read_text().splitlines()
    shutil.rmtree(run / "checkpoints")
    _pretrain(tiny_tin, run)
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert len(after) == len(before) == TINY["pretrain.epochs"]


@pytest.mark.parametrize("dtype", ["int8", "bool"])
def test_integer_init_weights_are_refused(run, tiny_tin, tmp_path, dtype):
    import torch

    from vitmim.checkpoint import load_weights, save_weights

    _resume(run, tiny_tin)
    tensors = load_weights(run / "model.safetensors")
    weights = tmp_path / "w.safetensors"
    save_weights(weights, {k: v.to(getattr(torch, dtype)) for k, v in tensors.items()})
    with pytest.raises(UserError, match=f"holds torch.{dtype} values, not floating-point"):
        vitmim.finetune(
            init=weights,
            data=tiny_tin,
            out=tmp_path / "ft",
            preset="smoke",
            overrides=TINY,
            progress=False,
        )


def test_non_finite_init_weights_are_refused_before_the_folder_is_used(run, tiny_tin, tmp_path):
    import torch

    from vitmim.checkpoint import load_weights, save_weights

    _resume(run, tiny_tin)
    tensors = load_weights(run / "model.safetensors")
    key = next(k for k in tensors if k.startswith("backbone."))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    weights = tmp_path / "nan.safetensors"
    save_weights(weights, tensors)
    ft = tmp_path / "ft"
    kw = dict(data=tiny_tin, out=ft, preset="smoke", overrides=TINY, progress=False)
    with pytest.raises(UserError, match=f"{key} holds NaN or infinite values") as e:
        vitmim.finetune(init=weights, **kw)
    assert ".lr" not in str(e.value)
    assert not ft.exists() or not any(p.name != ".lock" for p in ft.iterdir())
    vitmim.finetune(init=run, **kw)  # the corrected command is not trapped by the folder


def test_one_class_is_refused_for_classification(tin_tools, tmp_path):
    data = tin_tools.write_folder_set(tmp_path / "one", classes=("cat",))
    with pytest.raises(UserError, match="1 class; a classifier needs at least 2"):
        vitmim.finetune(
            data=data, out=tmp_path / "ft", preset="smoke", overrides=TINY, progress=False
        )


def test_val_images_outside_class_folders_are_refused(tin_tools, tmp_path):
    data = tin_tools.write_folder_set(tmp_path / "set")
    shutil.move(data / "val" / "cat" / "v0.jpg", data / "val" / "v0.jpg")
    cfg = load_config(overrides=[f"data.path={data}", "data.classes=null"])
    with pytest.raises(UserError, match="v0.jpg: a validation image outside a class folder"):
        load_splits(cfg.data, cfg.model.img_size, progress=False)


def _folder_set(tin_tools, root: Path):
    data = tin_tools.write_folder_set(root)
    cfg = load_config(overrides=[f"data.path={data}", "data.classes=null"])
    return data, lambda: load_splits(cfg.data, cfg.model.img_size, progress=False)


def test_an_image_replaced_with_size_and_mtime_kept_is_decoded_again(tin_tools, tmp_path):
    data, load = _folder_set(tin_tools, tmp_path / "set")
    img = data / "train" / "cat" / "0.bmp"  # BMP: every 64x64 image has the same size
    Image.new("RGB", (64, 64), (255, 0, 0)).save(img)
    first, _ = load()
    st = img.stat()
    blue = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 255)).save(blue, format="BMP")
    with open(img, "r+b") as f:  # written in place, as cp -p does: same inode, size, mtime
        f.write(blue.getvalue())
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (img.stat().st_size, img.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second, _ = load()
    files = sorted(p for p in (data / "train" / "cat").iterdir())
    row = first.labels.tolist().index(0) + files.index(img)
    assert second.fingerprint != first.fingerprint
    assert second.images[row, 2].float().mean() > 250 > first.images[row, 2].float().mean()


def test_a_hidden_file_appearing_is_not_other_data(tin_tools, tmp_path):
    data, load = _folder_set(tin_tools, tmp_path / "set")
    first, _ = load()
    (data / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    second, _ = load()
    assert second.fingerprint == first.fingerprint


def test_run_refuses_an_unknown_equal_compute(tiny_tin, tmp_path):
    with pytest.raises(UserError, match="equal_compute='bogus': expected None or one of"):
        vitmim.run(out=tmp_path / "r", data=tiny_tin, equal_compute="bogus")
    assert not (tmp_path / "r").exists()


def test_manifest_records_the_init_weights(stopped, tiny_tin, tmp_path):
    ft = tmp_path / "ft"
    pre = tmp_path / "pre"
    shutil.copytree(stopped, pre)
    _resume(pre, tiny_tin)
    vitmim.finetune(init=pre, data=tiny_tin, out=ft, preset="smoke", overrides=TINY, progress=False)
    from vitmim.checkpoint import sha256

    assert json.loads((ft / "manifest.json").read_text())["init_sha256"] == sha256(
        pre / "model.safetensors"
    )
