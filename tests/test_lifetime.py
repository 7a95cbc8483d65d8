"""Nothing waits forever and nothing is left running: kill -9 (and SIGTERM) of every
multi-process command, with real processes, then a rerun that finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vitmim.lab.grid import _killed

TINY = {
    "model.embed_dim": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "model.decoder_dim": 32,
    "pretrain.batch_size": 16,
    "finetune.batch_size": 16,
    "data.classes": None,
    "device": "cpu",
}

# a cache build whose decoders are slow enough to be killed midway (each image sleeps)
SLOW_BUILD = """
import sys, time
from vitmim.config import load_config
from vitmim.data import cache, load_splits
cache.MIN_PARALLEL, cache.CHUNK = 1, 2  # decoder workers even for a few images
decode = cache._decode
def slow(*args):
    time.sleep(float(sys.argv[2]))
    return decode(*args)
cache._decode = slow
cfg = load_config(overrides=[f"data.path={sys.argv[1]}", "data.classes=null"])
load_splits(cfg.data, cfg.model.img_size, progress=False)
print("built", flush=True)
"""


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture()
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "VITMIM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl")
def test_killed_cache_build_leaves_no_decoder_and_the_waiting_build_takes_over(
    tin_tools, tmp_path, env
):
    data = tin_tools.write_folder_set(tmp_path / "set", n_train=8)
    holder = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, str(data), "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(children(holder.pid)) >= 1, 120, "the decoder workers")
    workers = children(holder.pid)
    err = tmp_path / "waiter.err"
    with open(err, "w") as f:
        waiter = subprocess.Popen(
            [sys.executable, "-c", SLOW_BUILD, str(data), "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
        )
    wait_for(lambda: "waiting for process" in err.read_text(), 120, "the wait message")
    assert f"waiting for process {holder.pid}, which is building this data cache" in err.read_text()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    wait_for(lambda: not any(alive(w) for w in workers), 30, "the decoders to die")
    out, _ = waiter.communicate(timeout=300)
    assert waiter.returncode == 0 and out.strip() == "built", err.read_text()[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_grid_leaves_no_training_child_and_the_rerun_finishes(sig, tiny_tin, tmp_path, env):
    spec = tmp_path / "slow.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": "smoke",
                "config": {**TINY, "pretrain.epochs": 60},
                "seeds": [0],
                "variants": {"pretrain.mask_ratio": [0.4]},
                "baselines": [],
                "probe": False,
            }
        )
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "vitmim.cli",
        "grid",
        str(spec),
        "--out",
        str(out),
        "--data",
        str(tiny_tin),
    ]
    grid = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "mask_ratio=0.4" / "seed0" / "pretrain" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() or grid.poll() is not None, 300, "the first epoch")
    assert grid.poll() is None, "the grid ended before it could be killed"
    jobs = children(grid.pid)
    assert jobs
    grid.send_signal(sig)
    _, err = grid.communicate(timeout=120)
    wait_for(lambda: not any(alive(j) for j in jobs), 60, "the training job to stop")
    if sig == signal.SIGTERM:  # handled as Ctrl-C: says how to continue
        assert grid.returncode == 130 and "rerun the same command" in err.splitlines()[-1]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = json.loads((out / "grid.json").read_text())["runs"]
    assert [r["status"] for r in rows] == ["done"]


def test_a_job_ended_by_a_signal_is_reported_by_it():
    assert _killed(-signal.SIGKILL).startswith("killed by SIGKILL (out of memory")
    assert _killed(0) is None and _killed(2) is None
