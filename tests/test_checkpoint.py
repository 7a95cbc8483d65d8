"""Checkpoints and run folders: checksummed fallback, no pickles, atomic writes, the run lock, and
divergence (stop with the last good checkpoint untouched, or roll back with a lower lr).

The process-level tests run real ``vitmim`` processes through the fault hook of test_resume.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import time
from pathlib import Path

import pytest
import torch
from test_resume import COMMON, output, run, start

from vitmim import checkpoint
from vitmim.checkpoint import atomic_write, latest_checkpoint, load_weights, save_checkpoint
from vitmim.errors import UserError


def save_steps(run_dir: Path, steps: tuple[int, ...]) -> None:
    for s in steps:
        save_checkpoint(run_dir, s, {"model.w": torch.full((64,), float(s))}, {"step": s})


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:40])


def flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: the file still parses, only the checksum tells
    p.write_bytes(bytes(data))


def drop_checksum(p: Path) -> None:
    meta = json.loads(p.read_text())
    del meta["sha256"]
    p.write_text(json.dumps(meta))


CORRUPTIONS = {  # name: (file of the newest checkpoint to damage, damage)
    "truncated weights": ("safetensors", truncate),
    "one byte flipped in weights": ("safetensors", flip_byte),
    "weights missing": ("safetensors", Path.unlink),
    "truncated JSON": ("json", truncate),
    "JSON without checksum": ("json", drop_checksum),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_damaged_checkpoint_falls_back_to_previous_with_warning(tmp_path: Path, name: str) -> None:
    save_steps(tmp_path, (2, 4))
    suffix, damage = CORRUPTIONS[name]
    damage(tmp_path / "checkpoints" / f"step_00000004.{suffix}")
    with pytest.warns(UserWarning, match="step_00000004.safetensors: checkpoint corrupted"):
        tensors, meta = latest_checkpoint(tmp_path)
    assert meta["step"] == 2 and torch.equal(tensors["model.w"], torch.full((64,), 2.0))


def test_no_good_checkpoint_left_is_a_user_error_not_a_fresh_start(tmp_path: Path) -> None:
    save_steps(tmp_path, (2, 4))
    for step in (2, 4):
        flip_byte(tmp_path / "checkpoints" / f"step_{step:08d}.safetensors")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="every checkpoint is corrupt"):
        latest_checkpoint(tmp_path)


def test_keeps_two_checkpoints_and_clears_leftovers_of_a_killed_save(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    save_steps(tmp_path, (1, 2))
    (ckpt / ".step_00000003.safetensors.abc.tmp").write_bytes(b"half")  # killed in the write
    (ckpt / "step_00000003.safetensors").write_bytes(b"x")  # killed before its JSON
    save_steps(tmp_path, (4, 5))
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "step_00000004.json",
        "step_00000004.safetensors",
        "step_00000005.json",
        "step_00000005.safetensors",
    ]


def test_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    class Evil:  # unpickling this would create the sentinel file
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    for name in ("weights.pt", "weights.pth", "weights.safetensors", "weights"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"w": Evil()}))
        with pytest.raises(UserError, match="pickle"):
            load_weights(path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.safetensors")  # a zip with pickles
    with pytest.raises(UserError, match="refusing a pickle-based file"):
        load_weights(tmp_path / "torch.safetensors")
    assert not (tmp_path / "pwned").exists()


def test_garbage_weights_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_weights(tmp_path / "w.safetensors")


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")

    def half_then_crash(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.jsonl"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_disk_errors_become_one_line_user_errors(
    tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_steps(tmp_path, (2,))
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}

    def fail(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(UserError, match=os.strerror(code)) as e:
        save_steps(tmp_path, (4,))
    assert "step_00000004.safetensors" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before


# ---------------------------------------------------------------------------------------------
# real processes: 6 steps per epoch, 2 epochs; checkpoints at steps 0, 4, 6, 8 and 12

PRETRAIN = ["pretrain", *COMMON, "--set", "pretrain.batch_size=8", "--set", "pretrain.epochs=2"]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("vitmim: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_second_process_on_the_same_folder_is_refused(tmp_path: Path, tiny_tin: Path) -> None:
    out, go = tmp_path / "run", tmp_path / "go"
    args = [*PRETRAIN, "--data", str(tiny_tin), "--out", str(out)]
    first = start(tmp_path, args, "wait:2", VITMIM_TEST_GO=str(go))
    try:
        while not (out / "checkpoints" / "step_00000000.json").exists():
            assert first.poll() is None, output(first)[1][-3000:]
            time.sleep(0.05)
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        rc, _, err = run(tmp_path, [*args, "--resume"])  # even --resume must wait its turn
        assert rc == 2 and "in use by another vitmim process" in one_error_line(err)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        go.touch()
    assert first.wait(180) == 0, output(first)[1][-3000:]
    assert (out / "model.safetensors").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_tin: Path
) -> None:
    out, log = tmp_path / "run", tmp_path / "sha.log"
    rc, _, err = run(
        tmp_path, [*PRETRAIN, "--data", str(tiny_tin), "--out", str(out)], f"nan:7,shalog:{log}"
    )
    line = one_error_line(err)
    assert rc == 2 and "non-finite at step 8" in line and "pretrain.lr" in line
    written = dict(ln.split() for ln in log.read_text().splitlines())  # step -> sha256
    assert list(written) == ["0", "4", "6"]  # nothing saved after the NaN (step 7)
    for meta in (out / "checkpoints").glob("step_*.json"):  # untouched since written
        step = str(json.loads(meta.read_text())["step"])
        assert checkpoint.sha256(meta.with_suffix(".safetensors")) == written[step]
    tensors, meta = latest_checkpoint(out)
    assert meta["step"] == 6 and all(t.isfinite().all() for t in tensors.values())
    assert not (out / "model.safetensors").exists()


def test_rollback_retries_from_the_last_checkpoint_with_half_the_lr(
    tmp_path: Path, tiny_tin: Path
) -> None:
    out = tmp_path / "run"
    rc, stdout, err = run(
        tmp_path,
        [
            *PRETRAIN,
            "--data",
            str(tiny_tin),
            "--out",
            str(out),
            "--set",
            "pretrain.nan_policy=rollback",
        ],
        "nan:7",
    )
    assert rc == 0, err[-3000:]
    assert "non-finite loss; rolled back to step 6 and halved the learning rate (x0.5)" in stdout
    meta = json.loads(max((out / "checkpoints").glob("step_*.json")).read_text())
    assert meta["step"] == 12 and meta["lr_factor"] == 0.5
    assert [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]


def test_rollback_gives_up_when_the_lr_cannot_help(tmp_path: Path, tiny_tin: Path) -> None:
    out = tmp_path / "run"
    proc = start(
        tmp_path,
        [
            *PRETRAIN,
            "--data",
            str(tiny_tin),
            "--out",
            str(out),
            "--set",
            "pretrain.nan_policy=rollback",
        ],
        "nanfrom:7",
    )
    try:
        rc = proc.wait(180)
    finally:
        proc.send_signal(signal.SIGKILL) if proc.poll() is None else None
    stdout, err = output(proc)
    assert rc == 2 and "non-finite" in one_error_line(err)
    assert stdout.count("rolled back to step 6") == 9  # x0.5 ... x0.00195, then below 1e-3


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Not mkstemp's 0600: a shared run folder stays readable by the group and others."""
    checkpoint.write_text(tmp_path / "config.yaml", "a: 1\n")
    mode = (tmp_path / "config.yaml").stat().st_mode & 0o777
    assert mode == 0o666 & ~checkpoint._UMASK
