"""Host-side handler validation: the runtime's own rules, before any Docker work.

The handler is imported and inspected exactly as the image will do it (the runtime's
`discovery.load` and `handler.inspect_handler`), so a typo, a syntax error or an unusable
signature fails in well under a second with the runtime's message. One case is deferred: an
import that needs a declared dependency the host lacks is checked inside the image instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pulsarfunc.builder.plan import BuildPlan
from pulsarfunc.runtime.discovery import load
from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.handler import inspect_handler

__all__ = ["HostCheck", "validate_on_host"]


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
            description=f"import needs {missing!r}, not installed here: checked in the image",
            deferred=True,
        )
    handler = inspect_handler(loaded.obj, where=loaded.where)
    return HostCheck(
        attr=loaded.attr or plan.attr, description=handler.describe(), file=Path(loaded.path)
    )
