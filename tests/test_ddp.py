"""Multi-process data-parallel training (torchrun, gloo on the CPU) against a single process.

Every process builds the same global batch from the same per-step generators and trains on its
share, and DDP averages the gradients, so two processes must follow the single-process run with
the same global batch up to float rounding: equal per-epoch losses and equal final weights.
Drop-path is off here because its per-sample draws depend on the local batch shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitmim.checkpoint import load_weights
from vitmim.config import StageConfig
from vitmim.engine import Trainer
from vitmim.env import Env
from vitmim.errors import UserError

# 48 fake training images, global batch 16: 3 steps per epoch, 2 epochs per stage
SETTINGS = [
    "--preset",
    "smoke",
    "--set",
    "device=cpu",
    "--set",
    "data.classes=4",
    "--set",
    "pretrain.batch_size=16",
    "--set",
    "pretrain.epochs=2",
    "--set",
    "finetune.batch_size=16",
    "--set",
    "finetune.epochs=2",
    "--set",
    "finetune.drop_path=0.0",
]
LOSS_RTOL = 1e-4  # relative, per-epoch mean training loss
WEIGHT_ATOL = 1e-4  # absolute, every final weight


def vitmim(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    """Run the CLI in one process, or in ``nproc`` under torchrun."""
    launcher = [sys.executable, "-m"]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
        ]
    proc = subprocess.run(
        launcher + ["vitmim.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["train_loss"] for ln in lines if ln.strip()]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_weights(a / "model.safetensors"), load_weights(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        diff = (wa[k].float() - wb[k].float()).abs().max().item()
        assert diff < WEIGHT_ATOL, f"{k}: max |diff| {diff:.2e}"


@pytest.fixture(scope="module")
def runs(tiny_tin: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`vitmim run` (pretrain -> finetune -> scratch) once alone and once in 2 processes."""
    root = tmp_path_factory.mktemp("ddp")
    vitmim(["run", "--data", str(tiny_tin), "--out", str(root / "single"), *SETTINGS])
    vitmim(["run", "--data", str(tiny_tin), "--out", str(root / "ddp"), *SETTINGS], nproc=2)
    return root / "single", root / "ddp"


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "scratch"])
def test_two_processes_match_one(runs: tuple[Path, Path], stage: str):
    single, ddp = runs
    one, two = losses(single / stage), losses(ddp / stage)
    assert len(one) == len(two) == 2  # one record per epoch, written once (rank 0 only)
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    assert_same_weights(single / stage, ddp / stage)


def test_run_folder_written_by_main_process_only(runs: tuple[Path, Path]):
    _, ddp = runs
    manifest = json.loads((ddp / "finetune" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert (ddp / "summary.md").read_text().count("| finetune |") == 1


def test_uneven_split_of_the_batch_is_refused(tmp_path: Path):
    class Task:
        n_train = 64

    st = StageConfig(batch_size=15)
    with pytest.raises(UserError, match="finetune.batch_size: 15 does not split evenly"):
        Trainer(
            Task(),
            torch.nn.Linear(2, 2),
            st,
            run_dir=tmp_path,
            env=Env(torch.device("cpu"), world=2),
            stage="finetune",
        )
