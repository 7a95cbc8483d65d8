"""``python -m vitmim.cli ARGS`` in a real process, without paying for importing torch,
torchvision and timm (about 5 s of CPU) in every one.

A multiprocessing forkserver imports them once per test process; each command is a process
forked from it: its own pid, environment, working folder, exit status, stdout and stderr, and
an uncaught exception ends it with a traceback and status 1, as ``python -m`` does. Only the
interpreter's start-up is shared. Tests of start-up itself, of signals or of process groups
start :data:`FRESH` with :mod:`subprocess` instead.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping
from pathlib import Path

# the command line of a fresh interpreter, for tests of start-up, signals or process groups
FRESH = [sys.executable, "-m", "vitmim.cli"]
# what every command imports (vitmim.cli itself stays out: `python -m` runs it as __main__)
PRELOAD = ["torch", "torchvision", "timm", "vitmim.pipeline", "vitmim.inference"]

_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _exit_status(code: object) -> int:
    """What ``sys.exit(code)`` makes the interpreter return (a message goes to stderr)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _command(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """The forked process: the environment, folder and files of ``python -m vitmim.cli``."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, out, os.O_WRONLY | os.O_TRUNC),
        (2, err, os.O_WRONLY | os.O_TRUNC),
    ):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    import torch  # its thread pool was sized in the server: size it from this environment

    if env.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    from vitmim import cli

    sys.argv = [cli.__file__, *args]
    try:
        status = _exit_status(cli.main())
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def vitmim(
    *args: object,
    check: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``vitmim ARGS`` in a process of its own; ``check``: fail the test unless it exits 0."""
    argv = [str(a) for a in args]
    with tempfile.TemporaryDirectory(prefix="vitmim-cli-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        out.touch()
        err.touch()
        proc = _forkserver().Process(
            target=_command,
            args=(
                argv,
                dict(os.environ if env is None else env),
                str(cwd or os.getcwd()),
                str(out),
                str(err),
            ),
        )
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["vitmim", *argv], timeout)
        done = subprocess.CompletedProcess(
            ["vitmim", *argv],
            proc.exitcode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )
    if check and done.returncode != 0:
        raise AssertionError(f"vitmim {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return done
