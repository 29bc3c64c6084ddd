"""`pulsarfunc init NAME`: a function directory that passes its test and builds as it is."""

from __future__ import annotations

import re
from pathlib import Path

from pulsarfunc.builder.errors import PlanError
from pulsarfunc.builder.render import render_template

__all__ = ["SCAFFOLD", "scaffold"]

#: Template under templates/init/ -> file written in the new directory.
SCAFFOLD: tuple[tuple[str, str], ...] = (
    ("handler.py.j2", "handler.py"),
    ("test_handler.py.j2", "test_handler.py"),
    ("requirements.txt.j2", "requirements.txt"),
    ("README.md.j2", "README.md"),
    ("dockerignore.j2", ".dockerignore"),
)


def image_name(name: str) -> str:
    """A valid image repository name derived from the directory name."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return f"{cleaned or 'function'}:dev"


def scaffold(directory: Path, *, force: bool = False) -> list[Path]:
    """Write the scaffold into `directory`; refuses to touch a non-empty one unless `force`."""
    if directory.exists() and not directory.is_dir():
        raise PlanError(f"{directory} exists and is not a directory", hint="choose another NAME")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise PlanError(
            f"{directory} already exists and is not empty",
            hint="choose another NAME, or pass --force to write the scaffold into it",
        )
    name = directory.resolve().name
    values = {"name": name, "image": image_name(name)}
    written = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for template, filename in SCAFFOLD:
            path = directory / filename
            path.write_text(render_template(f"init/{template}", values), encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise PlanError(
            f"cannot write the scaffold into {directory}: {exc.strerror or exc}",
            hint="choose a NAME in a directory you can write to",
        ) from exc
    return written
