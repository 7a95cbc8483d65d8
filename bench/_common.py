"""What the benches share: command-line basics, the config, timing, the reference data folder."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from vitmim.config import Config, load_config
from vitmim.data import resolve_data_path
from vitmim.env import Env, setup_env


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="Tiny ImageNet zip (default: $VITMIM_DATA)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: every core this process may use)",
    )
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        help="config override, e.g. --set model.depth=12",
    )


def setup(args: argparse.Namespace) -> tuple[Config, Env]:
    """Config (defaults, TIN-10, --set overrides), threads, device; prints what runs where."""
    overrides = list(args.overrides) + [f"device={args.device}", f"compile={args.compile}"]
    if args.data:
        overrides.append(f"data.path={args.data}")
    cfg = load_config([], overrides)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    torch.set_float32_matmul_precision("high")
    env = setup_env(cfg.device, cfg.amp)
    name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "CPU"
    m = cfg.model
    print(
        f"device: {env.device} ({name}), torch threads {torch.get_num_threads()}, "
        f"bf16 autocast {env.amp}, compile {cfg.compile}; model: ViT embed {m.embed_dim}, "
        f"depth {m.depth}, heads {m.num_heads}, patch {m.patch_size}, image {m.img_size}",
        flush=True,
    )
    return cfg, env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(
    step: Callable[[], None], batch: int, seconds: float, warmup: int, device: torch.device
) -> float:
    """Training images per second of ``step`` (one optimiser step on ``batch`` images), timed
    for about ``seconds`` after ``warmup`` untimed steps."""
    for _ in range(warmup):
        step()
    sync(device)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    sync(device)
    return n * batch / (time.perf_counter() - t0)


def compare(
    steps: dict[str, Callable[[], None]],
    batch: int,
    seconds: float,
    warmup: int,
    device: torch.device,
    rounds: int = 4,
) -> dict[str, float]:
    """images/s of each step, timed in ``rounds`` alternating slices of ``seconds / rounds``:
    on a shared machine the load drifts, and alternating spreads the drift over every side."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    done = {k: [0, 0.0] for k in steps}  # steps, seconds
    for _ in range(rounds):
        for k, step in steps.items():
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds / rounds:
                step()
                n += 1
            sync(device)
            done[k][0] += n
            done[k][1] += time.perf_counter() - t0
    return {k: n * batch / t for k, (n, t) in done.items()}


def extract_class_folders(data: str | None, classes: list[str], dest: Path) -> Path:
    """The train JPEGs of ``classes`` from the TIN zip as ``dest/<wnid>/*.JPEG`` (ImageFolder)."""
    zf = zipfile.ZipFile(resolve_data_path(data))
    wanted = set(classes)
    for name in zf.namelist():
        parts = name.split("/")  # [...,] train, <wnid>, images, <file>
        if len(parts) >= 4 and parts[-4:-1:2] == ["train", "images"] and parts[-3] in wanted:
            (dest / parts[-3]).mkdir(parents=True, exist_ok=True)
            (dest / parts[-3] / parts[-1]).write_bytes(zf.read(name))
    return dest


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)


def ratio_line(name: str, ours: float, ref: float) -> str:
    return f"{name:<34} {ref:>10.1f} {ours:>10.1f} {ours / ref:>8.2f}x"
