"""Errors of the builder, under the one `PulsarFuncError` root.

PulsarFuncError                 (pulsarfunc.runtime.errors)
├── UserError                   exit 2: the user can fix it
│   ├── PlanError               the PATH, --handler, requirements or an option is unusable
│   └── DependencyError         a requirement has no wheel for the image's platform/Python
├── EngineError                 exit 1: the Docker engine cannot be reached or refused a call
└── BuildError                  exit 1: the image build failed; keeps the failing log lines
"""

from __future__ import annotations

from collections.abc import Sequence

from pulsarfunc.runtime.errors import PulsarFuncError, UserError

__all__ = ["BuildError", "DependencyError", "EngineError", "PlanError"]


class PlanError(UserError):
    """The build input is unusable: missing PATH, bad --handler, unreadable requirements."""


class DependencyError(UserError):
    """A requirement cannot be resolved to wheels for the image's platform and Python."""

    def __init__(self, problem: str, hint: str = "", *, package: str = "") -> None:
        super().__init__(problem, hint)
        self.package = package


class EngineError(PulsarFuncError):
    """The Docker engine is unreachable or refused a request."""


class BuildError(PulsarFuncError):
    """The image build failed; `log` holds the build's last lines so the user sees why."""

    def __init__(self, problem: str, hint: str = "", *, log: Sequence[str] = ()) -> None:
        super().__init__(problem, hint)
        self.log = list(log)

    def __str__(self) -> str:
        lines = [self.problem]
        if self.log:
            lines.append("  build log (last lines):")
            lines.extend(f"    | {line}" for line in self.log)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)
