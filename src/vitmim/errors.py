"""The one exception type a user can cause.

Anything the user can get wrong (a path, a file layout, a config value, a checkpoint that does not
fit) raises :class:`UserError`; the CLI prints its message on one line and exits with code 2.
Everything else is a bug and is allowed to raise with a traceback.
"""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""

    exit_code = 2


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the last line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".strip()


class ConfigError(UserError):
    """A config file, preset, override or option value that cannot be used."""


class DataError(UserError):
    """A data set or image that is missing, unreadable or in an unknown layout."""


class CheckpointError(UserError):
    """A run folder or weights file that is missing, unreadable or of the wrong kind."""
