"""Build progress: turns the engine's log events into step lines and keeps what a failure needs.

Progress goes to stderr so that stdout holds only the result (the tag, or the --json summary).
A step's line is printed when it ends, with whether the engine's cache served it and how long it
took; the last lines of the raw log are kept for `BuildError`.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["BuildLog", "Progress", "Step"]

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_TAIL = 40


@dataclass
class Step:
    """One Dockerfile instruction as the engine ran it."""

    index: int
    total: int
    instruction: str
    cached: bool = False
    seconds: float = 0.0


class Progress:
    """Prints host stages and build steps; silent when `quiet`."""

    def __init__(
        self, out: TextIO, *, quiet: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.out = out
        self.quiet = quiet
        self.clock = clock

    def stage(self, message: str) -> None:
        """A host-side stage (validation, staging, rendering) has finished."""
        if not self.quiet:
            print(f"==> {message}", file=self.out, flush=True)

    def step(self, label: str, step: Step) -> None:
        """A build step has finished."""
        if not self.quiet:
            state = "cached" if step.cached else f"{step.seconds:.1f}s"
            print(
                f"    {label} [{step.index}/{step.total}] {step.instruction} ({state})",
                file=self.out,
                flush=True,
            )

    def detail(self, line: str) -> None:
        """A line worth showing from inside the build (e.g. the in-image check's verdict)."""
        if not self.quiet:
            print(f"        {line}", file=self.out, flush=True)


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
        elif line.strip() == "---> Using cache" and self.steps:
            self.steps[-1].cached = True
        elif line.startswith("pulsarfunc check"):
            self.progress.detail(line)

    def close(self) -> None:
        """The stream has ended: report the last step."""
        self._finish_step()

    def step_for(self, instruction_prefix: str) -> Step | None:
        """The first step whose instruction starts with `instruction_prefix`."""
        return next((s for s in self.steps if s.instruction.startswith(instruction_prefix)), None)
