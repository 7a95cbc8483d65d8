"""The scripts that run studies on the GPU machine, run here on the CPU: the archive rebuilt
from the parts that travel one per call, and the campaign's new records packed for the trip
back. A GPU changes where the jobs train, not what these steps do."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from grid_specs import REPO, write_spec


def script_env(tmp_path: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VITMIM_DATA", "OUT")}
    return {**env, "PYTHON": sys.executable, "PARTS_DIR": str(tmp_path / "parts"), **more}


def cut(archive: Path, parts: Path, size: int) -> None:
    """What ../shared/tools/device-data.sh does: numbered parts and the archive's sha256."""
    parts.mkdir(parents=True)
    data = archive.read_bytes()
    for k in range(0, len(data), size):
        (parts / f"tin.part-{k // size:02d}").write_bytes(data[k : k + size])
    digest = hashlib.sha256(data).hexdigest()
    (parts / "tin.sha256").write_text(f"{digest}  tiny-imagenet-200.zip\n")


def write_study(tmp_path: Path) -> tuple[Path, Path]:
    """A study spec on the generated data set and its records folder."""
    study = tmp_path / "records" / "study"
    spec = write_spec(
        tmp_path / "study.yaml", seeds=[0], baselines=["scratch"], probe=False, records=str(study)
    )
    return spec, study


def test_the_archive_is_rebuilt_from_its_parts_and_checked(tmp_path, tiny_tin):
    cut(tiny_tin, tmp_path / "parts", 20_000)
    assert len(list((tmp_path / "parts").glob("tin.part-*"))) > 2
    cmd = ["bash", "scripts/gpu_campaign.sh", str(tmp_path / "runs")]
    spec, study = write_study(tmp_path)
    env = script_env(tmp_path, DRY="1", SPEC=str(spec), STUDY=str(study))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rebuilt = tmp_path / "parts" / "tiny-imagenet-200.zip"
    assert rebuilt.read_bytes() == tiny_tin.read_bytes()
    assert f"data {rebuilt}" in done.stdout
    assert done.stdout.strip().endswith("2 runs, 2 to do")  # the grid, planned on it

    bad = tmp_path / "bad"
    cut(tiny_tin, bad, 20_000)
    part = bad / "tin.part-01"
    part.write_bytes(part.read_bytes()[:-1] + b"x")
    env = {**env, "PARTS_DIR": str(bad)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "checksum mismatch" in done.stdout
    assert not (bad / "tiny-imagenet-200.zip").exists()


def test_the_campaign_on_the_device_packs_the_records_of_the_runs_it_finished(tmp_path, tiny_tin):
    """A real grid through the script: the records of the runs it finished (and the progress
    line) come back in records.tgz; a second call finds them recorded and packs none."""
    spec, study = write_study(tmp_path)
    out = tmp_path / "out"
    cmd = ["bash", "scripts/gpu_campaign.sh", str(tmp_path / "runs")]
    env = script_env(
        tmp_path,
        VITMIM_DATA=str(tiny_tin),
        SPEC=str(spec),
        STUDY=str(study),
        OUT=str(out),
        JOBS="2",
        OMP_NUM_THREADS="1",
        BUDGET="400",
    )
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 new records" in done.stdout
    with tarfile.open(out / "records.tgz") as tar:
        names = set(tar.getnames())
    assert {"study/README.md", "study/pretrained/seed0/record.json"} <= names
    assert "study/scratch/seed0/finetune/metrics.jsonl" in names
    assert not any(n.endswith((".safetensors", ".pt")) for n in names)  # records: no weights
    assert "**Progress:** 2 / 2 runs recorded" in (study / "README.md").read_text()

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "0 new records" in done.stdout
    with tarfile.open(out / "records.tgz") as tar:
        assert tar.getnames() == ["study/README.md"]
