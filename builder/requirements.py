"""A function's declared dependencies, read from `requirements.txt` and/or `pyproject.toml`.

Only what pip can resolve to wheels on the host belongs here; editable installs, nested
requirement files and local paths are refused up front with a clear error. `pulsarfunc` itself
is in the runtime base image: a function that lists it gets only the extras it names
(`pulsarfunc[otel]`), as this pulsarfunc declares them.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from pulsarfunc.builder.errors import PlanError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["ProjectMeta", "read_project", "read_requirements_file", "without_runtime"]

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


def without_runtime(
    requirements: Sequence[str],
    declared: Sequence[str] | None = None,
    extras: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """`requirements` with `pulsarfunc` replaced by the requirements of the extras it names.

    The runtime base image has pulsarfunc already, without extras: `pulsarfunc[otel]` stands
    for OpenTelemetry's packages, plain `pulsarfunc` for nothing. `declared` and `extras` are
    pulsarfunc's own requirements and extras (default: this installation's metadata, the
    runtime the base image holds).
    """
    if declared is None or extras is None:
        meta = importlib.metadata.metadata("pulsarfunc")
        declared = meta.get_all("Requires-Dist") or []
        extras = meta.get_all("Provides-Extra") or []
    kept: list[str] = []
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:  # pip's own options pass through as they are
            kept.append(line)
            continue
        if canonicalize_name(requirement.name) != "pulsarfunc":
            kept.append(line)
            continue
        unknown = sorted(requirement.extras - set(extras))
        if unknown:
            raise PlanError(
                f"{line!r}: pulsarfunc has no extra {unknown[0]!r}",
                hint=f"its extras are {', '.join(extras)}: pulsarfunc[otel] adds tracing",
            )
        kept += _extra_requirements(requirement.extras, declared)
    return tuple(dict.fromkeys(kept))


def _extra_requirements(wanted: set[str], declared: Sequence[str]) -> list[str]:
    """The requirements of pulsarfunc's `wanted` extras (an extra naming another: both)."""
    found: list[str] = []
    todo, seen = sorted(wanted), set(wanted)
    while todo:
        extra = todo.pop(0)
        for line in declared:
            dep = Requirement(line)
            if dep.marker is None or not dep.marker.evaluate({"extra": extra}):
                continue
            dep.marker = None
            if canonicalize_name(dep.name) != "pulsarfunc":
                found.append(str(dep))
            for more in sorted(dep.extras - seen):
                todo.append(more)
                seen.add(more)
    return found
