"""vitmim.inference: loading a finished run, predicting, evaluating and the image loader."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vitmim.augment import normalize
from vitmim.errors import CheckpointError, ConfigError, DataError
from vitmim.inference import (
    evaluate_run,
    load,
    load_classifier,
    load_images,
    load_restorer,
    predict,
)
from vitmim.models.classifier import Classifier


def test_load_classifier_logits_rank_classes_as_predict_does(tin2, tin2_runs):
    model, cfg, meta = load_classifier(tin2_runs.ft.run_dir)
    assert isinstance(model, Classifier) and not model.training
    assert len(meta["classes"]) == 2 and len(meta["class_names"]) == 2
    x = normalize(load_images(tin2.images, cfg.model.img_size))
    with torch.no_grad():
        logits = model(x).float()
    got = predict(tin2_runs.ft.run_dir, [str(p) for p in tin2.images], topk=2, device="cpu")
    assert len(got) == len(tin2.images)
    for row, image_logits in zip(got, logits):
        order = image_logits.argsort(descending=True).tolist()
        assert [name for name, _ in row] == [meta["class_names"][j] for j in order]
        probs = image_logits.softmax(-1)[order]
        assert [p for _, p in row] == pytest.approx(probs.tolist(), abs=1e-6)
    with pytest.raises(ConfigError, match="--topk 0: expected an integer >= 1"):
        predict(tin2_runs.ft.run_dir, [str(tin2.images[0])], topk=0, device="cpu")


def test_evaluate_run_reproduces_the_recorded_accuracy(tin2_runs):
    got = evaluate_run(tin2_runs.ft.run_dir, device="cpu")
    assert got["val_top1"] == pytest.approx(tin2_runs.ft.metrics["val_top1"], abs=1e-9)
    assert got["val_loss"] == pytest.approx(tin2_runs.ft.metrics["val_loss"], rel=1e-4)


def test_load_gives_the_model_and_the_transform_of_each_kind(tin2, tin2_runs):
    model, preprocess = load(tin2_runs.ft.run_dir, device="cpu")
    assert model.class_names == load_classifier(tin2_runs.ft.run_dir)[2]["class_names"]
    image = tin2.images[0]
    expected = normalize(load_images([image], preprocess.img_size, preprocess.resize))[0]
    assert torch.equal(preprocess(image), expected)
    with Image.open(image) as pil:
        assert torch.equal(preprocess(pil.convert("RGB")), expected)
    restorer, _ = load(tin2_runs.pre.run_dir, device="cpu")
    assert type(restorer) is type(load_restorer(tin2_runs.pre.run_dir)[0])
    with pytest.raises(CheckpointError, match="holds a restorer, not a fine-tuned classifier"):
        load_classifier(tin2_runs.pre.run_dir)


def test_load_restorer_refuses_a_changed_model(tin2_runs):
    with pytest.raises(ConfigError, match=r"--set model.embed_dim=128: .* was trained with"):
        load_restorer(tin2_runs.pre.run_dir, ["model.embed_dim=128"])


def test_load_images_brings_files_to_the_size(tin2, tmp_path):
    x = load_images(tin2.images[:2], img_size=32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8
    with pytest.raises(DataError, match="image not found"):
        load_images([tmp_path / "missing.jpg"])
    with pytest.raises(DataError, match=r"image not found \(a folder\)"):
        load_images([tmp_path])
