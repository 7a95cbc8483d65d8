"""What vitmim may write: the one rule every writer follows.

A command creates new files, or replaces a file only when it can prove that vitmim wrote it:
every file written by export, reconstruct, report, data pack and data download is recorded
with its sha256 in a ledger, ``outputs.json`` in the cache folder (so no folder of outputs
holds vitmim's bookkeeping), and an existing file is replaced only while its content still
matches that record. A command never writes into a run folder (the training run's own excepted,
see :func:`claim_run`, and a run's ``report/``), onto or inside one of its inputs, or, given
``inside``, outside its output folder (a cell named ``../../x`` stays where the report is).
A refusal is one line naming the path and the way out.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from vitmim import checkpoint
from vitmim.data.cache import cache_root
from vitmim.errors import CheckpointError, ConfigError, UserError
from vitmim.runs import PARENT_MARKERS, is_run, json_object

LEDGER = "outputs.json"  # in the cache folder: {real path: sha256} of every file written
# the one folder inside a run folder that a command other than training writes: `vitmim report
# RUN` writes RUN/report/ by default
REPORT = "report"


def _holds_runs(folder: Path) -> bool:
    """``folder`` is a run folder or a folder of stage folders (``vitmim run``, a grid cell)."""
    return is_run(folder) or any((folder / m).is_file() for m in PARENT_MARKERS)


def _run_or_stages(folder: Path) -> bool:
    """:func:`_holds_runs`, or a folder with a stage folder of ``vitmim run`` (``pretrain/``,
    ``finetune_lf0.1/``, ...) that holds a run: a ``vitmim run`` folder before its summary is
    written. A folder of runs of other names (``runs/pre``, ``runs/ft``) is the user's."""
    from vitmim.pipeline import RUN_DIRS  # the pipeline writes through this module: imported on use

    names = set(RUN_DIRS.values())
    return _holds_runs(folder) or any(
        (folder / name).is_dir() and name.split("_lf")[0] in names and is_run(folder / name)
        for name in _child_names(folder)
    )


def _child_names(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir()]
    except OSError:
        return []


def _within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies under it, links resolved (the real place it writes)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _ledger() -> Path:
    return cache_root() / LEDGER


def _key(path: Path) -> str:
    return os.path.realpath(path)


def recorded(path: Path) -> bool:
    """vitmim wrote ``path`` and nobody changed it since: its sha256 matches the ledger."""
    digest = json_object(_ledger()).get(_key(path))
    try:
        return isinstance(digest, str) and path.is_file() and checkpoint.sha256(path) == digest
    except OSError:
        return False


def record(path: Path) -> None:
    """Add ``path`` (just written) to the ledger; entries of files gone since are dropped. An
    unwritable ledger costs only the right to replace the file later: a note, not an error."""
    ledger = _ledger()
    try:
        digest = checkpoint.sha256(path)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(ledger.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # commands writing at once each keep their entries
            entries = {k: v for k, v in json_object(ledger).items() if os.path.isfile(k)}
            checkpoint.write_json(ledger, {**entries, _key(path): digest})
    except (OSError, UserError) as e:
        print(
            f"note: {ledger}: cannot record {path} ({e}); a later command will not replace it",
            file=sys.stderr,
        )


def check_file(
    path: str | Path,
    inputs: Iterable[str | Path] = (),
    inside: str | Path | None = None,
    ours: Callable[[Path], bool] | None = None,
) -> Path:
    """Refuse, before anything is written, an output file that breaks the rule; returns it.

    Args:
        path: the file about to be written.
        inputs: files and folders the command reads (never written onto, or into).
        inside: the output folder ``path`` must stay in.
        ours: for a file rewritten as a command goes (a grid's status), what proves by its
            content that vitmim wrote it, besides the ledger.
    """
    path = Path(path).expanduser()
    if inside is not None and not _within(path, Path(inside)):
        raise ConfigError(
            f"{path}: lies outside {inside}, where this command writes; rename what "
            f"leads there (a cell or file name with '..' or a link)"
        )
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --out names the file to write")
    _check_not_in_run(path)
    for src in inputs:
        src = Path(src).expanduser()
        if src.exists() and (
            _within(path, src) if src.is_dir() else path.exists() and path.samefile(src)
        ):
            raise ConfigError(
                f"{path}: {'lies inside' if src.is_dir() else 'is'} the input "
                f"{src} of this command; choose an --out elsewhere"
            )
    if (
        (path.exists() or path.is_symlink())
        and not recorded(path)
        and not (ours is not None and path.is_file() and ours(path))
    ):
        raise ConfigError(
            f"{path}: exists and was not written by vitmim (or was changed since); "
            f"delete it, or choose another --out"
        )
    return path


def _check_not_in_run(path: Path) -> None:
    for folder in Path(os.path.abspath(path)).parents:
        if not _run_or_stages(folder):
            continue
        rel = Path(os.path.abspath(path)).relative_to(folder)
        if rel.parts[0] != REPORT:
            raise ConfigError(
                f"{path}: would write into the run folder {folder}; choose an --out "
                f"outside it (a new folder, or a subfolder such as {folder}/report)"
            )


def write_file(
    path: str | Path,
    write: Callable[[Path], object],
    inputs: Iterable[str | Path] = (),
    inside: str | Path | None = None,
) -> Path:
    """Check ``path`` (:func:`check_file`), call ``write(tmp)`` and rename it into place
    atomically, then record it in the ledger; returns the path."""
    path = check_file(path, inputs, inside)
    checkpoint.atomic_write(path, write)
    record(path)
    return path


def write_text(
    path: str | Path, text: str, inputs: Iterable[str | Path] = (), inside: str | Path | None = None
) -> Path:
    return write_file(path, lambda p: p.write_text(text, encoding="utf-8"), inputs, inside)


def check_folder(
    folder: str | Path, names: Iterable[str], inputs: Iterable[str | Path] = ()
) -> None:
    """:func:`check_file` for every file a folder writer (report, export --format timm) is
    about to write, before the first is written: a refusal leaves no half-written folder."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: is a file; --out names the folder to write")
    for name in names:
        check_file(folder / name, inputs, inside=folder)


def claim_run(
    folder: str | Path,
    stages: tuple[str, ...] = (),
    inputs: Iterable[str | Path | None] = (),
    inside: str | Path | None = None,
) -> None:
    """Refuse, before anything is written there, to train in a folder that holds files but no
    vitmim run (a run folder, or with ``stages`` a folder of stage folders), in a folder that
    is one of the run's inputs or lies inside one (the data it reads, the weights it starts
    from), or, given ``inside``, outside that folder (a grid cell stays in its grid)."""
    folder = Path(folder).expanduser()
    if inside is not None and not _within(folder, Path(inside)):
        raise ConfigError(
            f"{folder}: lies outside {inside}, where this command writes; rename "
            f"what leads there (a cell name with '..' or a link)"
        )
    for src in (p for p in inputs if p):  # an unset data path reads nothing here
        src = Path(src).expanduser()
        if src.is_dir() and _within(folder, src) or src.is_file() and _within(src, folder):
            raise ConfigError(
                f"{folder}: {'lies inside' if src.is_dir() else 'holds'} {src}, an "
                f"input of this run; choose an --out outside it"
            )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: is a file, not a run folder; choose another --out")
    if folder.is_dir() and not _is_ours(folder, stages):
        raise ConfigError(
            f"{folder}: holds files that are not a vitmim run; choose a new or empty --out"
        )


def _is_ours(folder: Path, stages: tuple[str, ...]) -> bool:
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError as e:
        raise CheckpointError(f"{folder}: cannot read the run folder ({e.strerror})") from None
    return (
        names <= {".lock"}  # new, or a run stopped before it wrote its config
        or _holds_runs(folder)
        or any((folder / s).is_dir() and _is_ours(folder / s, ()) for s in stages)
    )
