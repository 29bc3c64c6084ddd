"""Window functions' pure core: Pulsar's window semantics, fed events and clock ticks, no I/O.

Pulsar Java's window functions (`WindowFunctionExecutor`, `WindowManager`, its trigger and
eviction policies) define the semantics kept here:

- A window has a length and a slide, each a count of messages or a duration; a missing slide
  is the length (tumbling). Length and slide may differ in kind, as in Pulsar.
- Processing time (the default): a message's time is when it is taken. A count slide fires
  after every N messages; a time slide fires every T ms from the start. At each firing, what
  the length no longer covers is evicted, and the rest is the window: the last N messages, or
  those of the last T ms. An empty window does not fire.
- Event time (a timestamp extractor, or each message's event time): watermarks, every
  `watermark_emit_interval_ms`, are the smallest over input topics of the newest time seen,
  minus `max_lag_ms`. Data older than the last watermark is late. Time windows end on
  multiples of the slide, and fire once the watermark passes their end, holding the messages
  of (end - length, end]; count windows fire per N messages the watermark has passed.
- A message leaves (is evicted) once no later window can hold it. The engine acknowledges it
  then, and only once every window that held it has its output persisted (engine_window.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pulsarfunc.runtime.config import WindowSettings
from pulsarfunc.runtime.errors import ConfigError

T = TypeVar("T")
DEFAULT_MAX_LAG_MS = 0  # Pulsar's WindowConfigUtils defaults
DEFAULT_WATERMARK_INTERVAL_MS = 1000


@dataclass(frozen=True)
class WindowRecord(Generic[T]):
    """One message of a window, as Pulsar Java's `Record` gives it to a `WindowFunction`:
    annotate the handler's window as `list[WindowRecord[T]]` to get these."""

    value: T
    key: str | None
    event_time: int | None  # epoch ms; None when the producer set none
    topic: str
    message_id: Any
    properties: dict[str, str]
    timestamp: int  # the time the window placed it by (processing or event time), epoch ms


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """WindowSettings with Pulsar's inferred values filled in, checked."""

    length_count: int | None
    length_ms: int | None
    slide_count: int | None
    slide_ms: int | None
    event_time: bool
    max_lag_ms: int
    watermark_interval_ms: int
    max_messages: int


class WindowConfigError(ConfigError):
    """A window configuration WindowConfigUtils (or pulsarfunc) refuses; `key` is its field."""

    def __init__(self, key: str, problem: str, hint: str) -> None:
        super().__init__(problem, hint)
        self.key = key


def spec_of(window: WindowSettings, receiver_queue_size: int) -> Spec:
    """The checked window; WindowConfigError as Pulsar's WindowConfigUtils.validate words it,
    plus what pulsarfunc refuses beyond it (a slide longer than the window)."""
    w = window
    key = "window.window_length_count"
    if w.window_length_count is None and w.window_length_duration_ms is None:
        raise WindowConfigError(key, "Window length is not specified", _LENGTH_HINT)
    if w.window_length_count is not None and w.window_length_duration_ms is not None:
        raise WindowConfigError(
            key,
            "Window length for time and count are set! Please set one or the other.",
            _LENGTH_HINT,
        )
    if w.sliding_interval_count is not None and w.sliding_interval_duration_ms is not None:
        raise WindowConfigError(
            "window.sliding_interval_count",
            "Sliding interval for time and count are set! Please set one or the other.",
            "give --sliding-interval-count or --sliding-interval-duration-ms, not both",
        )
    for name in (
        "window_length_count",
        "window_length_duration_ms",
        "sliding_interval_count",
        "sliding_interval_duration_ms",
    ):
        number = getattr(w, name)
        if number is not None and number <= 0:
            kind = "Window length" if name.startswith("window") else "Sliding interval"
            raise WindowConfigError(
                f"window.{name}", f"{kind} must be positive [{number}]", "give a number >= 1"
            )
    if w.max_lag_ms is not None and w.max_lag_ms < 0:
        raise WindowConfigError(
            "window.max_lag_ms", f"Lag duration must be positive [{w.max_lag_ms}]", "give >= 0"
        )
    if w.watermark_emit_interval_ms is not None and w.watermark_emit_interval_ms <= 0:
        raise WindowConfigError(
            "window.watermark_emit_interval_ms",
            f"Watermark interval must be positive [{w.watermark_emit_interval_ms}]",
            "give >= 1",
        )
    if w.late_data_topic and not w.event_time:
        raise WindowConfigError(
            "window.late_data_topic",
            "Late data topic can be defined only when specifying a timestamp extractor class",
            "give --timestamp-extractor-classname (or --use-event-time): only event time has "
            "late data",
        )
    slide_count = w.sliding_interval_count
    slide_ms = w.sliding_interval_duration_ms
    if slide_count is None and slide_ms is None:  # inferMissingArguments: tumbling
        slide_count, slide_ms = w.window_length_count, w.window_length_duration_ms
    for length, slide, unit in (
        (w.window_length_count, slide_count, "messages"),
        (w.window_length_duration_ms, slide_ms, "ms"),
    ):
        if length is not None and slide is not None and slide > length:
            raise WindowConfigError(
                "window.sliding_interval_count"
                if unit == "messages"
                else "window.sliding_interval_duration_ms",
                f"the sliding interval ({slide} {unit}) is longer than the window ({length} "
                f"{unit}): messages between windows would be in none",
                "make the slide at most the window length (equal: a tumbling window)",
            )
    limit = w.max_window_messages or max(10 * receiver_queue_size, 1000)
    held = (w.window_length_count or 0) + (slide_count or 0)
    if held > limit:
        raise WindowConfigError(
            "window.max_window_messages",
            f"a count window of {w.window_length_count} sliding by {slide_count} holds up to "
            f"{held} messages, more than --max-window-messages {limit}",
            f"raise --max-window-messages to {held} or more (each held message costs its "
            "payload plus about 1 KB), or shorten the window",
        )
    return Spec(
        length_count=w.window_length_count,
        length_ms=w.window_length_duration_ms,
        slide_count=slide_count,
        slide_ms=slide_ms,
        event_time=w.event_time,
        max_lag_ms=DEFAULT_MAX_LAG_MS if w.max_lag_ms is None else w.max_lag_ms,
        watermark_interval_ms=w.watermark_emit_interval_ms or DEFAULT_WATERMARK_INTERVAL_MS,
        max_messages=limit,
    )


_LENGTH_HINT = "give one of --window-length-count N or --window-length-duration-ms MS"


# --- the window manager -----------------------------------------------------------------------


@dataclass
class Event(Generic[T]):
    """One message in the window manager: what the engine attached, and its time."""

    item: T
    ts: int  # ms
    seq: int  # arrival order


@dataclass(frozen=True)
class Fired(Generic[T]):
    """A window that fired: its items in time order, and its bounds (ms; for count windows the
    first and last item's times)."""

    items: tuple[T, ...]
    start: int
    end: int


@dataclass
class Progress(Generic[T]):
    """What one step of the manager produced: windows to run, then items that left."""

    fired: list[Fired[T]] = field(default_factory=list)
    evicted: list[T] = field(default_factory=list)


class Windows(Generic[T]):
    """The window manager: `add` events, `tick` the clock; see the module docstring.

    Not thread-safe: one engine thread owns it.
    """

    def __init__(self, spec: Spec, start_ms: int) -> None:
        self.spec = spec
        self._events: list[Event[T]] = []  # in time order (event time) / arrival (processing)
        self._keys: list[tuple[int, int]] = []  # (ts, seq) of _events, for bisect
        self._seq = 0
        self._since_fire = 0  # processing-time count slide
        self._next_fire = start_ms + (spec.slide_ms or 0)  # processing-time time slide
        # event time
        self.watermark: int | None = None
        self._newest: dict[str, int] = {}  # topic -> newest time seen
        self._next_watermark = start_ms + spec.watermark_interval_ms
        self._window_end: int | None = None  # the next time window's end (event time)
        self._counted = 0  # event-time count slide: events the watermark passed, not fired yet

    def __len__(self) -> int:
        return len(self._events)

    def items(self) -> Iterator[T]:
        return (event.item for event in self._events)

    # -- input -----------------------------------------------------------------------------
    def is_late(self, ts: int) -> bool:
        """Event time: older than the last watermark (Pulsar drops or diverts it)."""
        return self.watermark is not None and ts < self.watermark

    def add(self, item: T, ts: int, topic: str = "") -> Progress[T]:
        """One message at time `ts` (check `is_late` first under event time)."""
        self._seq += 1
        event = Event(item, ts, self._seq)
        progress: Progress[T] = Progress()
        if self.spec.event_time:
            where = bisect.bisect_right(self._keys, (ts, self._seq))
            self._events.insert(where, event)
            self._keys.insert(where, (ts, self._seq))
            self._newest[topic] = max(ts, self._newest.get(topic, ts))
            return progress
        self._events.append(event)
        self._keys.append((ts, self._seq))
        if self.spec.slide_count is not None:
            self._since_fire += 1
            if self._since_fire >= self.spec.slide_count:
                self._since_fire = 0
                self._fire_processing(ts, progress)
        return progress

    # -- the clock -----------------------------------------------------------------------------
    def next_due(self) -> int | None:
        """When `tick` has something to do next (ms), if anything."""
        if self.spec.event_time:
            return self._next_watermark
        return self._next_fire if self.spec.slide_ms is not None else None

    def tick(self, now: int) -> Progress[T]:
        """Fire what the clock makes due: processing-time slides, event-time watermarks."""
        progress: Progress[T] = Progress()
        if self.spec.event_time:
            if now >= self._next_watermark:
                interval = self.spec.watermark_interval_ms
                self._next_watermark = now + interval - (now - self._next_watermark) % interval
                self._advance_watermark(progress)
            return progress
        if self.spec.slide_ms is None:
            return progress
        while now >= self._next_fire:
            self._fire_processing(self._next_fire, progress)
            self._next_fire += self.spec.slide_ms
        return progress

    def flush_watermark(self) -> Progress[T]:
        """Event time: a watermark now (as at the next interval)."""
        progress: Progress[T] = Progress()
        self._advance_watermark(progress)
        return progress

    # -- processing time -----------------------------------------------------------------------
    def _fire_processing(self, reference: int, progress: Progress[T]) -> None:
        """Evict what the length no longer covers at `reference`, fire the rest."""
        spec = self.spec
        if spec.length_count is not None:
            cut = max(0, len(self._events) - spec.length_count)
        else:
            assert spec.length_ms is not None
            cut = bisect.bisect_right(self._keys, (reference - spec.length_ms, 1 << 62))
        self._evict(cut, progress)
        if self._events:
            first, last = self._events[0].ts, self._events[-1].ts
            start = reference - spec.length_ms if spec.length_ms is not None else first
            end = reference if spec.length_ms is not None else last
            progress.fired.append(Fired(tuple(e.item for e in self._events), start, end))
        # what the next window cannot hold leaves now, not at the next firing (a tumbling
        # window's messages are acknowledged as soon as its output is persisted)
        if spec.length_count is not None and spec.slide_count is not None:
            self._evict(len(self._events) - (spec.length_count - spec.slide_count), progress)
        elif spec.length_ms is not None and spec.slide_ms is not None:
            horizon = reference + spec.slide_ms - spec.length_ms
            self._evict(bisect.bisect_right(self._keys, (horizon, 1 << 62)), progress)

    def _evict(self, count: int, progress: Progress[T]) -> None:
        if count > 0:
            progress.evicted.extend(e.item for e in self._events[:count])
            del self._events[:count], self._keys[:count]

    # -- event time ------------------------------------------------------------------------------
    def _advance_watermark(self, progress: Progress[T]) -> None:
        if not self._newest:
            return
        mark = min(self._newest.values()) - self.spec.max_lag_ms
        if self.watermark is not None and mark <= self.watermark:
            return
        self.watermark = mark
        if self.spec.slide_ms is not None:
            self._fire_event_time_windows(mark, progress)
        else:
            self._fire_event_count_windows(mark, progress)

    def _fire_event_time_windows(self, mark: int, progress: Progress[T]) -> None:
        """Windows ending on multiples of the slide, up to the watermark."""
        spec = self.spec
        assert spec.slide_ms is not None
        slide = spec.slide_ms
        while self._events:
            if self._window_end is None or self._window_end <= self._events[0].ts - (
                spec.length_ms or 0
            ):
                # the first window that can hold the oldest event: (end - length, end]
                self._window_end = -(-self._events[0].ts // slide) * slide
            end = self._window_end
            if end > mark:
                return
            if spec.length_ms is not None:
                low = bisect.bisect_right(self._keys, (end - spec.length_ms, 1 << 62))
                high = bisect.bisect_right(self._keys, (end, 1 << 62))
                if high > low:
                    window = tuple(e.item for e in self._events[low:high])
                    progress.fired.append(Fired(window, end - spec.length_ms, end))
                # nothing at or before end + slide - length is in a later window
                self._evict(
                    bisect.bisect_right(self._keys, (end + slide - spec.length_ms, 1 << 62)),
                    progress,
                )
            else:  # the last N events at or before each slide's end
                assert spec.length_count is not None
                high = bisect.bisect_right(self._keys, (end, 1 << 62))
                low = max(0, high - spec.length_count)
                if high > low:
                    items = self._events[low:high]
                    progress.fired.append(Fired(tuple(e.item for e in items), items[0].ts, end))
                self._evict(low, progress)
            self._window_end = end + slide

    def _fire_event_count_windows(self, mark: int, progress: Progress[T]) -> None:
        """Per `slide_count` events the watermark passed, the last `length` of them."""
        spec = self.spec
        assert spec.slide_count is not None
        passed = bisect.bisect_right(self._keys, (mark, 1 << 62))
        while passed - self._counted >= spec.slide_count:
            self._counted += spec.slide_count
            high = self._counted
            if spec.length_count is not None:
                low = max(0, high - spec.length_count)
                start_ts = self._events[low].ts
            else:
                assert spec.length_ms is not None
                end_ts = self._events[high - 1].ts
                low = bisect.bisect_right(self._keys, (end_ts - spec.length_ms, 1 << 62))
                start_ts = end_ts - spec.length_ms
            items = self._events[low:high]
            progress.fired.append(Fired(tuple(e.item for e in items), start_ts, items[-1].ts))
            if spec.length_count is not None:  # what the next window cannot reach
                keep_from = max(0, high + spec.slide_count - spec.length_count)
                keep_from = min(keep_from, high)
            else:
                keep_from = low
            self._evict(keep_from, progress)
            passed -= keep_from
            self._counted -= keep_from
