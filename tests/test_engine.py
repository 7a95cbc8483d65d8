"""The training step: EMA as one multi-tensor lerp, the optimiser's kernels, a compiled step that
agrees with the eager one, the fallback when compiling fails, no host sync inside a GPU step."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vitmim.config import Config, load_config
from vitmim.data import ImageSet
from vitmim.engine import EMA, Trainer
from vitmim.env import Env
from vitmim.errors import TrainingError
from vitmim.models import build_classifier
from vitmim.tasks import FinetuneTask


def tiny_config(**overrides: object) -> Config:
    """A 32 px, one-block ViT: small enough to compile on one CPU core in seconds."""
    sets = {
        "model.img_size": 32,
        "model.patch_size": 8,
        "model.embed_dim": 32,
        "model.depth": 1,
        "model.num_heads": 2,
        "finetune.batch_size": 16,
        "finetune.drop_path": 0.0,
        "finetune.epochs": 1,
        **overrides,
    }
    return load_config([], [f"{k}={v}" for k, v in sets.items()])


def image_set(n: int = 64, classes: int = 4) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    names = [f"c{i}" for i in range(classes)]
    return ImageSet(images, torch.arange(n) % classes, names, names, "test")


def trainer(cfg: Config, run_dir: Path, compile: bool = False) -> Trainer:
    env = Env(torch.device("cpu"))
    torch.manual_seed(0)
    model = build_classifier(cfg.model, 4, 0.0)
    task = FinetuneTask(image_set(), None, cfg, env)
    return Trainer(
        task,
        model,
        cfg.finetune,
        run_dir=run_dir,
        env=env,
        stage="finetune",
        compile=compile,
        progress=False,
    )


def run_steps(t: Trainer, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        losses.append(t.train_step(torch.arange(t.st.batch_size) + t.step).item())
        t.step += 1
    return losses


def test_non_finite_weights_stop_training_with_a_training_error(tmp_path: Path):
    t = trainer(tiny_config(), tmp_path)
    with torch.no_grad():
        next(t.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="finetune: loss became non-finite at step 4"):
        t.fit()  # 64 images in batches of 16: checked at the end of the first epoch
    assert not any(tmp_path.glob("checkpoints/step_*"))


def test_ema_is_the_lerp_of_every_float_tensor(tmp_path: Path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, 0.9)
    before = copy.deepcopy(ema.state)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 4))  # batch-norm running stats and its int64 counter move
    ema.update()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(ema.state[k], before[k] + 0.1 * (v - before[k]), atol=1e-6), k
        else:
            assert torch.equal(ema.state[k], v), k  # copied, not averaged


def test_ema_follows_the_model_after_loading_weights(tmp_path: Path):
    model = torch.nn.Linear(3, 3)
    ema = EMA(model, 0.0)  # decay 0: the average is the model itself
    model.load_state_dict({k: torch.full_like(v, 2.0) for k, v in model.state_dict().items()})
    ema.update()
    assert all(torch.equal(v, torch.full_like(v, 2.0)) for v in ema.state.values())


def test_optimizer_uses_multi_tensor_kernels_on_the_cpu(tmp_path: Path):
    t = trainer(tiny_config(), tmp_path)
    assert t.opt.defaults["foreach"] is True and not t.opt.defaults["fused"]


def test_compiled_step_agrees_with_the_eager_step(tmp_path: Path):
    """Five optimiser steps (TrivialAugment and erasing, forward, loss, backward, AdamW) of a
    compiled and an eager trainer from the same weights and seeds: losses and weights agree to
    1e-4 (fused kernels round differently; an augmented pixel may differ by one grey level)."""
    cfg = tiny_config(**{"finetune.augment.trivial_augment": True, "finetune.augment.erasing": 0.5})
    eager, compiled = trainer(cfg, tmp_path / "e"), trainer(cfg, tmp_path / "c", compile=True)
    a, b = run_steps(eager, 5), run_steps(compiled, 5)
    assert compiled.compiled is not None  # still compiled
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    for (k, v), w in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        assert torch.allclose(v, w, rtol=1e-4, atol=1e-5), k


def test_failed_compile_warns_once_and_trains_eagerly(tmp_path: Path, capsys):
    import torch._inductor.config as inductor

    torch._dynamo.reset()  # nothing compiled earlier in this process is reused
    cfg = tiny_config()
    eager, broken = trainer(cfg, tmp_path / "e"), trainer(cfg, tmp_path / "b", compile=True)
    # inductor's own patch restores its config on exit (monkeypatch's undo leaves it broken for
    # every later compile in the process)
    with inductor.patch({"cpp.cxx": ("no-such-compiler-vitmim",)}):
        assert run_steps(broken, 2) == run_steps(eager, 2)  # the same step, run eagerly
    assert broken.compiled is None  # the compiled step is dropped for good
    torch._dynamo.reset()
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1 and "training without compile" in err
    assert len([ln for ln in err.splitlines() if "torch.compile" in ln]) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "stage,fast", [("pretrain", False), ("pretrain", True), ("finetune", False)]
)
def test_gpu_steps_never_wait_for_the_device(tmp_path: Path, stage: str, fast: bool):
    """TrivialAugment, erasing, mixup/cutmix, masks, bf16, grad clipping, fused AdamW and EMA,
    on both pre-training paths: no step after the first makes the host wait (a blocking copy to
    the device would too)."""
    aug = {
        f"{stage}.augment.trivial_augment": True,
        f"{stage}.augment.erasing": 0.25,
        f"{stage}.ema": 0.99,
        f"{stage}.grad_clip": 1.0,
        f"{stage}.batch_size": 16,
        "finetune.augment.mixup": 0.8,
        "finetune.augment.cutmix": 1.0,
        "pretrain.fast": fast,
    }
    cfg = tiny_config(**aug)
    env = Env(torch.device("cuda"), amp=True)
    if stage == "pretrain":
        from vitmim.models import build_restorer
        from vitmim.tasks import PretrainTask

        model = build_restorer(cfg.model, cfg.pretrain)
        task = PretrainTask(image_set(), None, cfg, env, tmp_path)
    else:
        model = build_classifier(cfg.model, 4, 0.0)
        task = FinetuneTask(image_set(), None, cfg, env)
    t = Trainer(
        task, model, getattr(cfg, stage), run_dir=tmp_path, env=env, stage=stage, progress=False
    )
    idx = torch.arange(16, device="cuda")
    t.train_step(idx)  # first-call set-up (cached tables, optimiser state) may copy from the host
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            t.step += 1
            t.train_step(idx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
