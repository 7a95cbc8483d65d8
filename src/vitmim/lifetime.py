"""Nothing outlives the command that started it, and a SIGTERM stops a command like Ctrl-C.

A worker process (a decoder of the data cache, a grid's training job) asks the kernel to end it
when its parent dies, however the parent dies (``kill -9``, the OOM killer): a worker left behind
would hold the parent's locks and memory with nobody waiting for its result.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """In a child process: receive ``sig`` when the parent ``parent_pid`` dies; exit at once
    when it is already gone. Elsewhere than Linux nothing is done (no such kernel call)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the call above took effect
        os._exit(1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """Handle SIGTERM (``kill``, a scheduler's stop) as Ctrl-C: the command cleans up, stops its
    children and says how to continue. Only the main thread may set a handler (a command run
    from another thread keeps the default)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
