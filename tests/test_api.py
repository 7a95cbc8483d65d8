"""The Python API (``import vitmim``) and the package's front door: version, cheap imports."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ}, timeout=120, check=True)


def test_version_flag_prints_the_installed_version():
    proc = subprocess.run([sys.executable, "-m", "vitmim.cli", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"vitmim {version('vitmim')}\n"


def test_import_leaves_torch_unloaded():
    """`import vitmim` stays fast for notebooks and the CLI: torch (seconds to load) and timm
    come only with the first function that needs them."""
    proc = python("import vitmim, sys\nprint(sorted({'torch', 'timm'} & set(sys.modules)))")
    assert proc.stdout.splitlines()[-1] == "[]"
