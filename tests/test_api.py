"""The Python API (``import vitmim``) and the package's front door: version, cheap imports."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ}, timeout=120, check=True)


def test_version_flag_prints_the_installed_version():
    proc = subprocess.run([sys.executable, "-m", "vitmim.cli", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"vitmim {version('vitmim')}\n"


@pytest.mark.parametrize("code", [
    "import vitmim",
    "from vitmim import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass",
])
def test_import_and_help_leave_torch_unloaded(code):
    """`import vitmim` and `vitmim --help` stay fast: neither imports torch (seconds to load)."""
    proc = python(code + "\nimport sys\nprint(sorted({'torch', 'timm'} & set(sys.modules)))")
    assert proc.stdout.splitlines()[-1] == "[]"
