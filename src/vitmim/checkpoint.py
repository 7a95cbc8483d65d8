"""Checkpoints and run-folder files: safetensors weights + JSON state, written atomically.

Loading never executes code: only safetensors and JSON are read. A checkpoint's JSON carries the
sha256 of its weights file, so a truncated or corrupted checkpoint is detected and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from vitmim.errors import CheckpointError

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
KEEP = 2  # checkpoints kept per run: the newest and one fallback


_UMASK = os.umask(0o022)  # read the process umask (the only way is to set it) ...
os.umask(_UMASK)  # ... and put it back


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see a partial file.

    A failed write (disk full, no permission) leaves ``path`` as it was and raises UserError.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(
            f"{path}: cannot write ({e.strerror or e}); the previous version, if any, is kept"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # gone already after a successful rename


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> str:
    """Write tensors as safetensors (atomically); returns the file's sha256."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = save(flat, metadata={"format": "pt"})  # bytes: Python I/O reports a full disk
    atomic_write(path, lambda p: p.write_bytes(data))
    digest = hashlib.sha256(data).hexdigest()
    if meta is not None:
        write_json(path.with_suffix(".json"), {**meta, "sha256": digest})
    return digest


def load_weights(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; refuse pickles (they can run code), unreadable files and, given
    ``expected_sha256`` (recorded when it was written), a file whose checksum differs."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: weights file not found")
    if p.suffix in PICKLE_SUFFIXES or _looks_like_pickle(p):
        raise CheckpointError(
            f"{p}: refusing a pickle-based file (loading it could execute code); "
            f"vitmim reads only .safetensors weights"
        )
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from None
    # a readable file can still be damaged (a flipped byte in a tensor) or replaced
    if expected_sha256 is not None and sha256(p) != expected_sha256:
        raise CheckpointError(
            f"{p}: sha256 differs from the one recorded in "
            f"{p.with_suffix('.json').name}; the file is corrupted or was replaced"
        )
    return tensors


def _looks_like_pickle(p: Path) -> bool:
    """torch.save archives start with ``PK`` (zip), raw pickles with the protocol byte 0x80;
    a safetensors file has a JSON header (``{``) right after its 8-byte length."""
    with open(p, "rb") as f:
        head = f.read(9)
    return head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80")


# ---------------------------------------------------------------------------------------------
# training checkpoints: checkpoints/step_XXXXXXXX.{safetensors,json}


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (tensors for safetensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: Path, step: int, tensors: dict[str, torch.Tensor], state: dict
) -> Path:
    """Weights first, then the JSON that vouches for them; prune old checkpoints after."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    path = ckpt_dir / f"step_{step:08d}.safetensors"
    save_weights(path, tensors, meta=state)
    for old in sorted(ckpt_dir.glob("step_*.json"))[:-KEEP]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    # leftovers of a save killed midway (the run lock makes this process the only writer):
    # temp files, and weights whose JSON was never written
    for junk in ckpt_dir.glob(".step_*.tmp"):
        junk.unlink(missing_ok=True)
    for weights in ckpt_dir.glob("step_*.safetensors"):
        if not weights.with_suffix(".json").exists():
            weights.unlink(missing_ok=True)
    return path


def checkpoint_epoch(run_dir: Path) -> float:
    """The epochs the newest checkpoint of ``run_dir`` holds (0.0 without one), read without
    checking its weights: for estimating what a resumed stage has left, never for resuming."""
    for meta_path in sorted((Path(run_dir) / "checkpoints").glob("step_*.json"), reverse=True):
        try:
            return float(json.loads(meta_path.read_text()).get("epoch", 0.0))
        except (json.JSONDecodeError, OSError, TypeError, ValueError, AttributeError):
            continue
    return 0.0


def latest_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Newest checkpoint whose weights match the checksum in its JSON; warns on each bad one."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    for meta_path in sorted(ckpt_dir.glob("step_*.json"), reverse=True):
        weights = meta_path.with_suffix(".safetensors")
        try:
            meta = json.loads(meta_path.read_text())
            ok = weights.exists() and sha256(weights) == meta.get("sha256")
        except (json.JSONDecodeError, OSError):
            ok = False
        if ok:
            return load_weights(weights), meta
        warnings.warn(
            f"{weights}: checkpoint corrupted or incomplete, using an older one", stacklevel=2
        )
    if any(ckpt_dir.glob("step_*.json")):  # none left to fall back to: never start afresh
        raise CheckpointError(
            f"{ckpt_dir}: every checkpoint is corrupted or incomplete (none "
            f"matches its recorded sha256); remove the folder to start afresh"
        )
    return None
