"""In-process function metrics, counted the way Pulsar's instances count them.

The instance loop only calls the `note_*` methods; exposition (Prometheus, with Pulsar's metric
names) reads `snapshot()`. Counting is under one lock: increments come from worker threads and
from the client's callback thread.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Pulsar's Python instance reports an exception's text as a gauge label at most 5 times a
# minute; the distinct texts kept are bounded too, so the label's cardinality is.
ERRORS_PER_MINUTE = 5
ERRORS_KEPT = 50


@dataclass
class Summary:
    """Count and sum of observed values (a Prometheus summary without quantiles)."""

    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value


@dataclass
class Snapshot:
    """A consistent copy of every counter."""

    received: int = 0
    processed_successfully: int = 0
    user_exceptions: int = 0
    system_exceptions: int = 0
    dead_lettered: int = 0
    copies_skipped: int = 0  # redelivered copies of settled messages, acked unprocessed
    windows_fired: int = 0  # window functions: windows given to the handler
    window_late: int = 0  # event-time data older than the watermark (dropped or diverted)
    window_overflow: int = 0  # messages refused: --max-window-messages were held already
    window_skipped: int = 0  # messages that left the window manager in no window
    process_latency_ms: Summary = field(default_factory=Summary)
    last_invocation_ms: int = 0
    user_metrics: dict[str, Summary] = field(default_factory=dict)
    user_errors: tuple[str, ...] = ()  # recent exception texts (the `error` gauge label)
    system_errors: tuple[str, ...] = ()


class _RecentErrors:
    """Exception texts, rate-limited per minute and bounded, newest last."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._texts: collections.OrderedDict[str, None] = collections.OrderedDict()

    def add(self, text: str) -> None:
        now = self._clock()
        while self._times and now - self._times[0] >= 60.0:
            self._times.popleft()
        if len(self._times) >= ERRORS_PER_MINUTE:
            return
        self._times.append(now)
        self._texts[text] = None
        self._texts.move_to_end(text)
        if len(self._texts) > ERRORS_KEPT:
            self._texts.popitem(last=False)

    def texts(self) -> tuple[str, ...]:
        return tuple(self._texts)


class Metrics:
    """Thread-safe counters for one instance."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._s = Snapshot()
        self._user_errors = _RecentErrors(clock)
        self._system_errors = _RecentErrors(clock)

    def note_received(self, count: int = 1) -> None:
        with self._lock:
            self._s.received += count
            self._s.last_invocation_ms = int(time.time() * 1000)

    def note_processed(self, latency_ms: float) -> None:
        with self._lock:
            self._s.processed_successfully += 1
            self._s.process_latency_ms.observe(latency_ms)

    def note_processed_many(self, count: int, total_latency_ms: float) -> None:
        """`count` successes at once (batch mode): one lock for a whole batch."""
        with self._lock:
            self._s.processed_successfully += count
            self._s.process_latency_ms.count += count
            self._s.process_latency_ms.total += total_latency_ms

    def note_user_exception(self, error: str | None = None) -> None:
        with self._lock:
            self._s.user_exceptions += 1
            if error is not None:
                self._user_errors.add(error)

    def note_system_exception(self, error: str | None = None) -> None:
        with self._lock:
            self._s.system_exceptions += 1
            if error is not None:
                self._system_errors.add(error)

    def note_dead_lettered(self) -> None:
        with self._lock:
            self._s.dead_lettered += 1

    def note_copies_skipped(self, count: int) -> None:
        with self._lock:
            self._s.copies_skipped += count

    def note_window(
        self, *, fired: int = 0, late: int = 0, overflow: int = 0, skipped: int = 0
    ) -> None:
        with self._lock:
            self._s.windows_fired += fired
            self._s.window_late += late
            self._s.window_overflow += overflow
            self._s.window_skipped += skipped

    def record(self, name: str, value: float) -> None:
        with self._lock:
            self._s.user_metrics.setdefault(name, Summary()).observe(value)

    def snapshot(self) -> Snapshot:
        with self._lock:
            s = self._s
            return Snapshot(
                s.received,
                s.processed_successfully,
                s.user_exceptions,
                s.system_exceptions,
                s.dead_lettered,
                s.copies_skipped,
                s.windows_fired,
                s.window_late,
                s.window_overflow,
                s.window_skipped,
                Summary(s.process_latency_ms.count, s.process_latency_ms.total),
                s.last_invocation_ms,
                {k: Summary(v.count, v.total) for k, v in s.user_metrics.items()},
                self._user_errors.texts(),
                self._system_errors.texts(),
            )
