"""Optional dependencies (install extras): without one, the option that needs it is refused
with one line naming the extra."""

from __future__ import annotations

import sys

import pytest

from vitmim.errors import ConfigError, UserError
from vitmim.lab.grid import make_executor
from vitmim.tracking import tracking


@pytest.mark.parametrize("kind", ["slurm", "submitit-local"])
def test_grid_executor_without_submitit_names_the_slurm_extra(monkeypatch, tmp_path, kind):
    monkeypatch.setitem(sys.modules, "submitit", None)  # makes `import submitit` fail
    with pytest.raises(UserError, match=r"vitmim\[slurm\]"):
        make_executor(kind, tmp_path, {})


def test_tensorboard_logging_without_tensorboard_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"vitmim\[tensorboard\]"), tracking("tensorboard"):
        pass
