"""A thread of its own that runs what client callbacks hand it, so that nothing runs on the
Pulsar client's IO thread but the recording of an outcome."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

_log = logging.getLogger("pulsarfunc.instance")


class Handoff:
    """Runs callables one at a time, in the order they were handed over, on one thread."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def __call__(self, job: Callable[[], None]) -> None:
        """Run `job` on the thread (any thread may hand one over)."""
        self._jobs.put(job)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop once what was handed over is done (waiting at most `timeout_s`)."""
        self._jobs.put(None)
        self._thread.join(timeout_s)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                _log.exception("%s: a handed-over job failed", self._thread.name)
