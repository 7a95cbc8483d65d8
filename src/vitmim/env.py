"""Where training runs, and the seeds its random draws come from.

:class:`Env` is the device, the precision and this process's place among the processes of a
torchrun job; :func:`derive_seed` turns (seed, purpose, step...) into the seed of one generator,
which is what makes a run reproducible and resumable bit-exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vitmim.config import Config
from vitmim.errors import ConfigError


@dataclass
class Env:
    """Where training runs: device, precision, and this process's place among ``world``."""

    device: torch.device
    amp: bool = False  # bf16 autocast
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (a no-op in a single process)."""
        if self.world > 1:
            dist.barrier()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``t`` over the processes; ``t`` itself in a single process."""
        if self.world == 1:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world


def setup_env(device: str = "auto", amp: bool = True) -> Env:
    """Pick the device; join the process group when started by torchrun (gloo CPU, NCCL GPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device}: no CUDA GPU is visible")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    dev = torch.device(device)
    return Env(dev, amp=amp and dev.type == "cuda", rank=rank, world=world)


def env_for(cfg: Config) -> Env:
    """The process set-up of a command: TF32 matmuls allowed, then :func:`setup_env`."""
    torch.set_float32_matmul_precision("high")
    return setup_env(cfg.device, cfg.amp)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers; distinct tuples give unrelated streams."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h
