"""A function's declared dependencies, read from `requirements.txt` and/or `pyproject.toml`.

Only what pip can resolve to wheels on the host belongs here; editable installs, nested
requirement files and local paths are refused up front with a clear error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulsarfunc.builder.errors import PlanError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["ProjectMeta", "read_project", "read_requirements_file"]

#: pip options that may appear in a requirements file (they only steer where wheels come from).
_ALLOWED_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "-i ", "--pre")


def read_requirements_file(path: Path) -> list[str]:
    """Requirement lines of `path`, without comments and blanks; refuses what can't be staged."""
    lines: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if line.startswith("-") and not line.startswith(_ALLOWED_OPTIONS):
            raise PlanError(
                f"{where}: the requirement option {line.split()[0]!r} is not supported",
                hint="list plain requirements (name, version specifier, extras, markers); "
                "vendor local code into the function directory instead of -e/-r/-c",
            )
        if line.startswith((".", "/", "file:")):
            raise PlanError(
                f"{where}: local path requirement {line!r} is not supported",
                hint="copy that code into the function directory, or publish it as a wheel",
            )
        lines.append(line)
    return lines


@dataclass(frozen=True)
class ProjectMeta:
    """What a `pyproject.toml` tells the builder: name, version and dependencies."""

    name: str = ""
    version: str = ""
    dependencies: tuple[str, ...] = ()


def read_project(path: Path) -> ProjectMeta:
    """Read `[project]` of a pyproject.toml; a missing file gives empty metadata."""
    if not path.is_file():
        return ProjectMeta()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path}: not valid TOML: {exc}", hint="fix the file") from exc
    project = data.get("project", {})
    if not isinstance(project, dict):
        raise PlanError(f"{path}: [project] is not a table", hint="fix the file")
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise PlanError(
            f"{path}: [project].dependencies must be a list of strings, found {deps!r}",
            hint='write e.g. dependencies = ["requests>=2,<3"]',
        )
    name = project.get("name", "")
    version = project.get("version", "")
    return ProjectMeta(
        name=name if isinstance(name, str) else "",
        version=version if isinstance(version, str) else "",
        dependencies=tuple(d.strip() for d in deps if d.strip()),
    )
