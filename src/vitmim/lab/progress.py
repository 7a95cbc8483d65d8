"""The progress line of a study folder's README, which the grid and the search keep current."""

from __future__ import annotations

from pathlib import Path

from vitmim import checkpoint

PROGRESS = "**Progress:**"


def set_progress(readme: Path, line: str, about: str) -> None:
    """Make ``PROGRESS line`` the README's progress line: replaced where the README has one,
    appended where it has none, and a README created (titled by its folder, ``about`` under
    the title) where there is none."""
    text = (
        readme.read_text()
        if readme.exists()
        else f"# {readme.parent.name}\n\n{about}\n\n{PROGRESS}\n"
    )
    lines = text.rstrip("\n").splitlines()
    if not any(ln.startswith(PROGRESS) for ln in lines):
        lines += ["", PROGRESS]
    lines = [f"{PROGRESS} {line}" if ln.startswith(PROGRESS) else ln for ln in lines]
    checkpoint.write_text(readme, "\n".join(lines) + "\n")
