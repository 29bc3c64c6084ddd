"""Build progress: host stages, wheel staging and engine builds as lines or live bars.

Progress goes to stderr so that stdout holds only the result (the tag, or the --json summary).
Every stage says how long it took and, where there is one, its size. Two displays behind one
seam: `Lines` (CI, a pipe, --json: one plain line per event) and `Bars` (a terminal: `rich`
progress bars above the same lines; `rich` is in the `builder` extra and never in an image).
A step's line is printed when it ends, with whether the engine's cache served it and how long it
took; the last lines of the raw log are kept for `BuildError`.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

__all__ = ["Bars", "BuildLog", "Display", "Lines", "Progress", "Step", "human_size", "is_live"]

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_TAIL = 40


def human_size(size: float) -> str:
    """Bytes in decimal units, as pip and Docker print them: 980 B, 64.0 kB, 12.3 MB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def is_live(out: TextIO, env: Mapping[str, str], *, quiet: bool, as_json: bool) -> bool:
    """Bars only on a terminal, outside CI, without --quiet/--json, and with rich installed."""
    if quiet or as_json or not getattr(out, "isatty", lambda: False)():
        return False
    if env.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return False
    if env.get("TERM") == "dumb":
        return False
    try:
        import rich  # noqa: F401  (the builder extra's; a missing one falls back to lines)
    except ImportError:
        return False
    return True


@dataclass
class Step:
    """One Dockerfile instruction as the engine ran it."""

    index: int
    total: int
    instruction: str
    cached: bool = False
    seconds: float = 0.0


class Display(Protocol):
    """Where progress goes: printed lines, and optionally a live bar per task."""

    def line(self, text: str) -> None: ...

    def task(self, key: str, description: str, total: float | None, unit: str) -> None: ...

    def advance(
        self, key: str, amount: float, *, description: str = "", total: float | None = None
    ) -> None: ...

    def finish(self, key: str) -> None: ...


class Lines:
    """Plain lines only (CI, pipes, --json)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def task(self, key: str, description: str, total: float | None, unit: str) -> None:
        return None

    def advance(
        self, key: str, amount: float, *, description: str = "", total: float | None = None
    ) -> None:
        return None

    def finish(self, key: str) -> None:
        return None


class Bars:
    """`rich` progress bars on a terminal; the same lines print above them."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        console = Console(file=out, highlight=False)
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
        )
        self._bars = {
            "bytes": RichProgress(
                *columns[:3], DownloadColumn(), columns[3], console=console, transient=True
            ),
            "steps": RichProgress(
                *columns[:3], MofNCompleteColumn(), columns[3], console=console, transient=True
            ),
        }
        self._tasks: dict[str, tuple[Any, Any]] = {}
        self.console = console

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, soft_wrap=True)

    def task(self, key: str, description: str, total: float | None, unit: str) -> None:
        self.finish(key)
        bar = self._bars["bytes" if unit == "bytes" else "steps"]
        bar.start()
        self._tasks[key] = (bar, bar.add_task(description, total=total))

    def advance(
        self, key: str, amount: float, *, description: str = "", total: float | None = None
    ) -> None:
        if key not in self._tasks:
            return
        bar, task = self._tasks[key]
        changes: dict[str, Any] = {"advance": amount}
        if description:
            changes["description"] = description
        if total is not None:
            changes["total"] = total
        bar.update(task, **changes)

    def finish(self, key: str) -> None:
        if key in self._tasks:
            bar, task = self._tasks.pop(key)
            bar.remove_task(task)
            if not bar.tasks:
                bar.stop()


class Progress:
    """Prints host stages, wheels and build steps to one display; silent when `quiet`."""

    def __init__(
        self,
        out: TextIO,
        *,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
        display: Display | None = None,
    ) -> None:
        self.out = out
        self.quiet = quiet
        self.clock = clock
        self.display: Display = display or Lines(out)

    @classmethod
    def for_output(
        cls, out: TextIO, env: Mapping[str, str], *, quiet: bool = False, as_json: bool = False
    ) -> Progress:
        """Bars on a terminal, lines elsewhere (see `is_live`)."""
        live = is_live(out, env, quiet=quiet, as_json=as_json)
        return cls(out, quiet=quiet, display=Bars(out) if live else Lines(out))

    def stage(self, message: str, seconds: float | None = None) -> None:
        """A host-side stage (validation, staging, rendering) has finished, in `seconds`."""
        if not self.quiet:
            took = f" ({seconds:.1f}s)" if seconds is not None else ""
            self.display.line(f"==> {message}{took}")

    # wheel staging ---------------------------------------------------------------------------

    def wheels_started(self, label: str) -> None:
        """pip begins resolving and fetching the wheels for `label`."""
        if not self.quiet:
            self.display.task(f"wheels:{label}", f"{label}: resolving", None, "bytes")

    def wheel(self, label: str, filename: str, size: int, cached: bool) -> None:
        """pip fetched (or took from its cache) one wheel of `size` bytes."""
        if not self.quiet:
            source = "cached" if cached else "downloaded"
            self.display.line(f"    {label} {filename} {human_size(size)} ({source})")
            self.display.advance(f"wheels:{label}", size, description=f"{label}: {filename}")

    def wheels_done(self, label: str) -> None:
        if not self.quiet:
            self.display.finish(f"wheels:{label}")

    # engine builds ---------------------------------------------------------------------------

    def step_started(self, label: str, step: Step) -> None:
        """A build step began: the bar shows it (the line waits for its end)."""
        if self.quiet:
            return
        key = f"build:{label}"
        if step.index == 1:
            self.display.task(key, f"{label}: {step.instruction}", step.total, "steps")
        else:
            self.display.advance(key, 0, description=f"{label}: {step.instruction[:60]}")

    def step(self, label: str, step: Step) -> None:
        """A build step has finished."""
        if not self.quiet:
            state = "cached" if step.cached else f"{step.seconds:.1f}s"
            self.display.line(
                f"    {label} [{step.index}/{step.total}] {step.instruction} ({state})"
            )
            self.display.advance(f"build:{label}", 1)

    def build_done(self, label: str) -> None:
        if not self.quiet:
            self.display.finish(f"build:{label}")

    def detail(self, line: str) -> None:
        """A line worth showing from inside the build (e.g. the in-image check's verdict)."""
        if not self.quiet:
            self.display.line(f"        {line}")


class BuildLog:
    """Consumes one build's events: steps, cache hits, the image id, the error, the log tail."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label
        self.steps: list[Step] = []
        self.tail: deque[str] = deque(maxlen=_TAIL)
        self.image_id = ""
        self.error = ""
        self._started = 0.0
        self._open = False

    def _finish_step(self) -> None:
        if self._open:
            self._open = False
            step = self.steps[-1]
            step.seconds = max(self.progress.clock() - self._started, 0.0)
            self.progress.step(self.label, step)

    def feed(self, event: Mapping[str, Any]) -> None:
        """Take one decoded engine event."""
        if "error" in event:
            self.error = str(event.get("error") or "").strip()
            self.tail.append(self.error)
            return
        aux = event.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            self.image_id = str(aux["ID"])
        text = event.get("stream")
        if not isinstance(text, str):
            return
        for line in text.splitlines():
            self._line(line.rstrip())

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        self.tail.append(line)
        match = _STEP.match(line)
        if match:
            self._finish_step()
            self._started = self.progress.clock()
            self.steps.append(Step(int(match[1]), int(match[2]), match[3]))
            self._open = True
            self.progress.step_started(self.label, self.steps[-1])
        elif line.strip() == "---> Using cache" and self.steps:
            self.steps[-1].cached = True
        elif line.startswith("pulsarfunc check"):
            self.progress.detail(line)

    def close(self) -> None:
        """The stream has ended: report the last step."""
        self._finish_step()
        self.progress.build_done(self.label)

    def step_for(self, instruction_prefix: str) -> Step | None:
        """The first step whose instruction starts with `instruction_prefix`."""
        return next((s for s in self.steps if s.instruction.startswith(instruction_prefix)), None)
