"""The exception types a user can cause, and the one line the CLI prints for them.

Anything the user can get wrong raises a :class:`UserError`, typed by its cause: a config value
or option (:class:`ConfigError`), a data set or image (:class:`DataError`), a run folder or
weights file (:class:`CheckpointError`), or training that did not produce a result
(:class:`TrainingError`). The CLI prints its message on one line and exits with code 2.
A few library errors are just as surely the input's fault (a file the OS refuses, a damaged JSON,
YAML or safetensors file, bytes that are not text): :func:`input_error_line` turns those into one
line too. Everything else is a bug and is allowed to raise with a traceback.
"""

from __future__ import annotations

import json

import yaml
from safetensors import SafetensorError


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""

    exit_code = 2


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the last line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".strip()


class ConfigError(UserError):
    """A config file, preset, override or option value that cannot be used: an out of range
    value, an ``--out`` that may not be written, an option whose extra is not installed."""


class DataError(UserError):
    """A data set or image that is missing, unreadable or in an unknown layout."""


class CheckpointError(UserError):
    """A run folder or weights file that is missing, unreadable or of the wrong kind."""


class TrainingError(UserError):
    """Training that did not produce a result: a loss that became non-finite, a grid run or
    search trial that failed (its log says why), a search without a finished trial."""


def fold_lines(text: object) -> str:
    """``text`` (a message or an exception) on one line: line breaks and runs of spaces folded;
    an exception without a message gives its type's name."""
    folded = " ".join(str(text).split())
    return folded or (type(text).__name__ if isinstance(text, BaseException) else "")


def input_error_line(e: BaseException) -> str | None:
    """One line for an error a damaged or unreadable input causes, or None for a bug."""
    if isinstance(e, OSError) and (e.filename is not None or e.strerror):
        where = f"{e.filename}: " if e.filename is not None else ""
        return fold_lines(f"{where}{e.strerror or e}")
    if isinstance(e, json.JSONDecodeError):
        return fold_lines(f"a file is not valid JSON ({e.msg} at line {e.lineno}; truncated?)")
    if isinstance(e, UnicodeDecodeError):
        return fold_lines(f"a file is not UTF-8 text ({e.reason} at byte {e.start})")
    if isinstance(e, UnicodeEncodeError) and "surrogate" in e.reason:
        # a path from the file system whose bytes are not UTF-8 cannot be written as text
        bad = e.object[max(0, e.start - 20) : e.end + 20].encode("utf-8", "surrogateescape")
        return fold_lines(
            f"a file or folder name is not valid UTF-8 (in "
            f"{bad.decode('utf-8', 'backslashreplace')!r}); rename it"
        )
    if isinstance(e, yaml.YAMLError):
        return fold_lines(f"not valid YAML ({str(e).splitlines()[0] if str(e) else e})")
    if isinstance(e, SafetensorError):
        return fold_lines(f"not a readable safetensors file ({e})")
    return None
