"""Host-side handler validation: the runtime's own rules, before any Docker work.

The handler is imported and inspected exactly as the image will do it (the runtime's
`discovery.load` and `handler.inspect_handler`), so a typo, a syntax error or an unusable
signature fails in well under a second with the runtime's message. An import that needs a
declared dependency the host lacks is checked again once the wheels are staged (when the host
can import them), and otherwise inside the image.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pulsarfunc.builder.plan import BuildPlan
from pulsarfunc.runtime.discovery import load
from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.handler import inspect_handler

__all__ = ["HostCheck", "host_runs_target", "validate_on_host", "validate_with_deps"]


@dataclass(frozen=True)
class HostCheck:
    """The outcome: the attribute the entrypoint will load, and what was found or deferred."""

    attr: str | None
    description: str
    file: Path | None = None
    deferred: bool = False


def _missing_module(error: BaseException) -> str | None:
    """The module a ModuleNotFoundError anywhere in the cause chain names, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            return seen.name
        seen = seen.__cause__ or seen.__context__
    return None


def validate_on_host(plan: BuildPlan) -> HostCheck:
    """Load and inspect the handler; raise the runtime's HandlerError when it is unusable."""
    try:
        loaded = load(plan.host_ref, cwd=plan.root)
    except HandlerError as exc:
        missing = _missing_module(exc)
        if missing is None or not plan.requirements:
            raise
        return HostCheck(
            attr=plan.attr,
            description=f"import needs {missing!r} (not installed here): checked later",
            deferred=True,
        )
    handler = inspect_handler(loaded.obj, where=loaded.where)
    return HostCheck(
        attr=loaded.attr or plan.attr, description=handler.describe(), file=Path(loaded.path)
    )


# Run in a fresh interpreter with the staged dependencies first on sys.path; prints one JSON line.
_PROBE = """\
import json, sys
from pulsarfunc.runtime.discovery import load
from pulsarfunc.runtime.errors import PulsarFuncError
from pulsarfunc.runtime.handler import inspect_handler
try:
    loaded = load(sys.argv[1])
    found = {"path": loaded.path, "attr": loaded.attr,
             "description": inspect_handler(loaded.obj, where=loaded.where).describe()}
except PulsarFuncError as exc:
    found = {"problem": exc.problem, "hint": exc.hint, "import_failed": exc.__cause__ is not None}
print("\\n" + json.dumps(found))
"""


def host_runs_target(python_version: str, platform_tag: str) -> bool:
    """Whether wheels staged for the image also import here (same Python, Linux, same CPU)."""
    return (
        sys.platform == "linux"
        and f"{sys.version_info[0]}.{sys.version_info[1]}" == python_version
        and platform_tag.endswith(platform.machine())
    )


def validate_with_deps(plan: BuildPlan, deps: Path, env: Mapping[str, str]) -> HostCheck:
    """The host check again, with the staged dependencies importable (a fresh interpreter).

    A signature or lookup error fails here, before any image is built. An import that still
    fails (e.g. a system library the host lacks) stays deferred to the in-image check, where
    the image's own libraries decide.
    """
    path = os.pathsep.join(p for p in (str(deps), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, plan.host_ref],
        capture_output=True,
        text=True,
        cwd=plan.root,
        env={**env, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if result.returncode == 0 and lines else None
    except json.JSONDecodeError:
        found = None
    if not isinstance(found, dict):
        return HostCheck(plan.attr, "not checked on the host: checked in the image", deferred=True)
    if "problem" in found:
        if found["import_failed"]:
            return HostCheck(
                plan.attr, "import fails on this host: checked in the image", deferred=True
            )
        raise HandlerError(str(found["problem"]), str(found["hint"]))
    return HostCheck(str(found["attr"]), str(found["description"]), file=Path(found["path"]))
