"""The window engine: window functions over the invocation core and the one tracker.

One thread takes messages from every source, decodes each (`Invoker.decode`, per item), gives
it a time (processing time, or event time from the timestamp extractor or the message) and
adds it to the window manager (`windows.Windows`), which says which windows fire and which
messages leave. A fired window is one handler call (`Invoker.call`) with its items; its outputs
carry the window's bounds (`pulsarfunc.window.start`/`end`, epoch ms, and `.count`) and go out
in one `send_batch`.

Acknowledgement, under ATLEAST_ONCE: every message is a Ticket held once by the window manager
and once more by each window output send that covers it. It is settled when it leaves the
manager (no later window can hold it) and every such send is persisted, so an input is
acknowledged only after every window that holds it has fired and its output is persisted. A
window whose handler fails fails each of its messages: they are retried (redelivered, then
placed in new windows) or dead-lettered, by the usual policy. Late event-time data goes to the
late-data topic (acknowledged once persisted), or is acknowledged and counted as dropped. A
message that would make the manager hold more than --max-window-messages fails (retried later).

At a stop, messages still in open windows are negatively acknowledged: they come back to the
next instance, which rebuilds its windows from them. A window may therefore be emitted again,
in full or in part, after a crash or a stop (see README, "Window functions").
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pulsarfunc.runtime.config import ProcessingGuarantee
from pulsarfunc.runtime.context import Context
from pulsarfunc.runtime.engine import BATCH_MAX, RECEIVE_TIMEOUT_MS, Core
from pulsarfunc.runtime.errors import ConfigError, PulsarFuncError
from pulsarfunc.runtime.handler import Handler
from pulsarfunc.runtime.schemas import import_class
from pulsarfunc.runtime.tracker import Ticket
from pulsarfunc.runtime.transport import InMessage, OutMessage, Source
from pulsarfunc.runtime.windows import Fired, Progress, Spec, WindowRecord, Windows, spec_of

_log = logging.getLogger("pulsarfunc.instance")
START, END, COUNT = "pulsarfunc.window.start", "pulsarfunc.window.end", "pulsarfunc.window.count"


class WindowOverflowError(PulsarFuncError):
    """A message came while the window held --max-window-messages already."""


@dataclass
class Item:
    """One message in the window manager."""

    ticket: Ticket
    value: Any
    ts: int
    windowed: bool = False  # in a window that fired


Timestamp = Callable[[Any, InMessage], int]
_LATER = object()  # an item's value, decoded when its window fires


def timestamp_of(core: Core, now: Callable[[], int]) -> Timestamp:
    """How a message gets its time: the extractor's `extract_timestamp(value)` (Pulsar Java's
    TimestampExtractor), the message's event time (else its publish time), or now."""
    window = core.config.window
    if window.timestamp_extractor_class_name:
        kclass = import_class(window.timestamp_extractor_class_name, "the timestamp extractor")
        extractor = kclass() if isinstance(kclass, type) else kclass
        extract = getattr(extractor, "extract_timestamp", None) or getattr(
            extractor, "extractTimestamp", None
        )
        if not callable(extract):
            raise ConfigError(
                f"timestamp extractor {window.timestamp_extractor_class_name} has no "
                "extract_timestamp(value) method",
                "define extract_timestamp(self, value) -> int (epoch ms)",
            )
        return lambda value, msg: int(extract(value))
    if window.use_event_time:
        return lambda value, msg: msg.event_timestamp() or msg.publish_timestamp()
    return lambda value, msg: now()


def _now_ms() -> int:
    return int(time.time() * 1000)


class WindowEngine:
    """See the module docstring."""

    def __init__(self, core: Core, handler: Handler, *, clock: Callable[[], int] = _now_ms) -> None:
        self.core = core
        self.handler = handler
        self.spec: Spec = spec_of(core.config.window, core.config.receiver_queue_size)
        self._clock = clock
        self._timestamp = timestamp_of(core, clock)
        self._by_value = bool(core.config.window.timestamp_extractor_class_name)
        self._windows: Windows[Item] = Windows(self.spec, clock())
        self._ready: collections.deque[list[Ticket]] = collections.deque()
        self._tracks = core.config.processing_guarantee is not ProcessingGuarantee.ATMOST_ONCE
        self._thread = threading.Thread(target=self._run, name="pf-window", daemon=True)
        self._warned_overflow = 0.0
        self._warned_skipped = 0.0
        core.tracker.on_ready = self._ready.append

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, deadline: float) -> bool:
        """Wait for the thread, then settle what the last outputs' receipts make ready (they
        come after it ended), until nothing is in flight or the deadline."""
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            return False
        tracker = self.core.tracker
        while True:
            self._settle_ready()
            if tracker.in_flight == 0 or time.monotonic() >= deadline:
                return tracker.in_flight == 0
            time.sleep(0.01)

    def close(self) -> None:
        """Nothing to release: the thread ends on its own."""

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        core = self.core
        sources = core.broker.sources
        try:
            while not core.stopping.is_set():
                self._step(self._windows.tick(self._clock()))
                self._settle_ready()
                self._retry_due(sources)
                wait = self._wait_ms()
                for source in sources:
                    batch = core.receiver.take(source, BATCH_MAX, wait // len(sources) or 1)
                    for msg in batch:
                        self._add(core.tracker.open(source, msg))
        except Exception:
            _log.exception("the window engine failed")
            raise
        finally:
            self._give_back_open_windows()
            self._settle_ready()
            for source in sources:
                core.settler.give_back(source)

    def _wait_ms(self) -> int:
        due = self._windows.next_due()
        if due is None:
            return RECEIVE_TIMEOUT_MS
        return max(1, min(RECEIVE_TIMEOUT_MS, due - self._clock()))

    def _add(self, ticket: Ticket) -> None:
        msg = ticket.msg
        try:  # decoded when it fires, unless its time comes from its value: one copy held
            value = self.core.invoker.decode(msg) if self._by_value else _LATER
            ts = self._timestamp(value, msg)
        except Exception as exc:
            self._fail_now(ticket, exc)
            return
        windows = self._windows
        if self.spec.event_time and windows.is_late(ts):
            self._late(ticket, ts)
            return
        if len(windows) >= self.spec.max_messages:
            self._overflow(ticket)
            return
        self._step(windows.add(Item(ticket, value, ts), ts, msg.topic_name()))

    def _step(self, progress: Progress[Item]) -> None:
        for fired in progress.fired:
            self._fire(fired)
        release = self.core.tracker.release
        skipped = 0
        for item in progress.evicted:
            skipped += not item.windowed
            release(item.ticket)
        if skipped:  # a length and a slide of different kinds: said, not silent
            self.core.metrics.note_window(skipped=skipped)
            now = time.monotonic()
            if now - self._warned_skipped > 10:
                self._warned_skipped = now
                _log.warning(
                    "%d messages left the window between two firings, in no window: the slide "
                    "lets more through than the window length holds",
                    skipped,
                )

    # -- a window --------------------------------------------------------------------------------
    def _fire(self, fired: Fired[Item]) -> None:
        core = self.core
        items = fired.items
        core.metrics.note_window(fired=1)
        for item in items:
            item.windowed = True
        values = []
        for item in items:
            try:
                values.append(self._value(item))
            except Exception as exc:  # a payload that does not decode: that message fails
                core.settler.fail(item.ticket, exc)
        if not values:
            return
        last = items[-1].ticket
        ctx = Context(core.env, last.msg, last)
        try:
            outputs = core.invoker.call(ctx, values)
            payloads = [core.outputs.encode(out) for out in outputs]
        except Exception as exc:
            for item in items:
                core.settler.fail(item.ticket, exc)
            return
        topic = core.config.output
        if not payloads or not topic:
            return
        props = {START: str(fired.start), END: str(fired.end), COUNT: str(len(items))}
        messages = [
            OutMessage(topic, payload, None, dict(props), fired.end or None, None, None)
            for payload in payloads
        ]
        tickets = [item.ticket for item in items]
        held = [t for t in tickets if core.tracker.hold(t)] if self._tracks else []
        tracker = core.tracker

        def persisted(errors: Any) -> None:  # the client's IO thread: record only
            error = next(iter(errors.values()), None) if errors else None
            for ticket in held:
                tracker.release(ticket, error)

        core.broker.send_batch(messages, persisted)

    def _value(self, item: Item) -> Any:
        msg = item.ticket.msg
        value = self.core.invoker.decode(msg) if item.value is _LATER else item.value
        if not self.handler.window_records:
            return value
        return WindowRecord(
            value=value,
            key=msg.partition_key() or None,
            event_time=msg.event_timestamp() or None,
            topic=msg.topic_name(),
            message_id=msg.message_id(),
            properties=dict(msg.properties()),
            timestamp=item.ts,
        )

    # -- messages that go no further -------------------------------------------------------------
    def _fail_now(self, ticket: Ticket, error: BaseException) -> None:
        self.core.settler.fail(ticket, error)
        self.core.tracker.release(ticket)

    def _late(self, ticket: Ticket, ts: int) -> None:
        core = self.core
        core.metrics.note_window(late=1)
        topic = core.config.window.late_data_topic
        msg = ticket.msg
        if not topic:
            _log.info(
                "late message %s (time %d, watermark %s) dropped: no late-data topic",
                msg.message_id(),
                ts,
                self._windows.watermark,
            )
            core.tracker.release(ticket)
            return
        late = OutMessage(topic, msg.data(), msg.partition_key() or None, dict(msg.properties()))
        core.env.services.publish(ticket, late)  # holds the ticket until persisted
        core.tracker.release(ticket)

    def _overflow(self, ticket: Ticket) -> None:
        self.core.metrics.note_window(overflow=1)
        limit = self.spec.max_messages
        error = WindowOverflowError(
            f"the window holds --max-window-messages {limit} messages already",
            "raise --max-window-messages, or shorten the window; this message is retried",
        )
        now = time.monotonic()
        if now - self._warned_overflow > 10:
            self._warned_overflow = now
            _log.error("window full: %s (%s)", error.problem, error.hint)
        self._fail_now(ticket, error)

    # -- settling ------------------------------------------------------------------------------
    def _settle_ready(self) -> None:
        settler = self.core.settler
        while self._ready:
            parked = settler.settle(self._ready.popleft())
            if parked:
                self.core.tracker.park(parked)

    def _retry_due(self, sources: Sequence[Source]) -> None:
        """Messages parked for a retry here (non-persistent inputs): into the window again."""
        tracker = self.core.tracker
        for source in sources:
            for parked in tracker.due(source, time.monotonic(), BATCH_MAX):
                self._add(tracker.open(source, parked.msg, parked))

    def _give_back_open_windows(self) -> None:
        """The stop: what the windows hold goes back to the broker, for the next instance."""
        tracker = self.core.tracker
        items = list(self._windows.items())
        given = 0
        for item in items:
            ticket = item.ticket
            if tracker.claim([ticket]):
                given += 1
                if not self._tracks:  # ATMOST_ONCE: acknowledged on receipt already
                    continue
                try:
                    ticket.source.nack(ticket.msg)
                except Exception as exc:
                    _log.warning("cannot nack message %s: %s", ticket.msg.message_id(), exc)
        if given:
            _log.info("%d messages of open windows negatively acknowledged at the stop", given)
            tracker.finished(given)
