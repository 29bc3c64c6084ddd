"""The async engine: async handlers on one event loop, up to --concurrency messages at once.

    receiver thread per source --(one call_soon_threadsafe per batch)--> event loop
    a task per message: Context -> Invoker.call_async -> outputs queued
    outputs of one pass of the loop -> one send_batch per producer, one receipt
    receipt (client's IO thread): Tracker.release_all records; tickets that became ready are
        handed to the loop, which settles them (acks give up the GIL: not on the IO thread)

At most `max(receiver queue size, 2 x concurrency)` messages are in flight; a receiver waits
for room. On a key-shared subscription (or with --retain-key-ordering) messages of one key run
one after the other, in order (`engine.ordering_key`). A message's handler slot and its place
in flight are returned in `finally`, whatever the handler does (an `asyncio.CancelledError`
from the handler is a failure of that message: `invoke.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence

from pulsarfunc.runtime.config import ProcessingGuarantee
from pulsarfunc.runtime.context import Context
from pulsarfunc.runtime.engine import Core, ordering_key
from pulsarfunc.runtime.tracker import Ticket
from pulsarfunc.runtime.transport import OutMessage, Source

_log = logging.getLogger("pulsarfunc.instance")
_CANCEL_WAIT_S = 1.0  # at the stop, how long calls given up get to end once cancelled


class AsyncEngine:
    """Receiver threads feeding one event loop; see the module docstring."""

    def __init__(self, core: Core, *, keyed: bool = False) -> None:
        self.core = core
        self.keyed = keyed
        self.max_in_flight = max(core.config.receiver_queue_size, 2 * core.concurrency)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="pf-loop", daemon=True)
        self._loop_ident = 0
        self._receivers: list[threading.Thread] = []
        self._slots: asyncio.Semaphore | None = None
        self._key_tails: dict[str, asyncio.Future[None]] = {}
        # outputs hold their input's settling, but under ATMOST_ONCE (acked on receipt)
        self._tracks = core.config.processing_guarantee is not ProcessingGuarantee.ATMOST_ONCE
        self._outbox: list[OutMessage] = []  # outputs of this pass of the loop
        self._owners: list[Ticket | None] = []  # the ticket each settles (None: untracked)
        self._retry: asyncio.TimerHandle | None = None  # the one timer for parked retries
        core.tracker.on_ready = self._ready
        core.tracker.on_parked = self._parked

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        started = threading.Event()
        self._loop.call_soon(started.set)
        self._loop_thread.start()
        started.wait()
        for source in self.core.broker.sources:
            thread = threading.Thread(
                target=self._receive, args=(source,), name="pf-recv", daemon=True
            )
            self._receivers.append(thread)
            thread.start()

    def _run_loop(self) -> None:
        self._loop_ident = threading.get_ident()
        asyncio.set_event_loop(self._loop)
        self._slots = asyncio.Semaphore(self.core.concurrency)
        self._loop.run_forever()
        self._loop.close()

    def join(self, deadline: float) -> bool:
        """Wait for the receivers, then for every message taken to settle (until the
        deadline); True if everything was."""
        core = self.core
        for thread in self._receivers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if core.handover.is_set():  # the next engine takes the parked retries over
            idle = core.tracker.wait_quiet(deadline)
            return idle and not any(t.is_alive() for t in self._receivers)
        for source in core.broker.sources:  # retries not due yet are not waited for
            core.settler.give_back(source)
        idle = core.tracker.wait_idle(deadline)
        return idle and not any(t.is_alive() for t in self._receivers)

    def close(self) -> None:
        """Cancel what still runs (after the instance gave it up) and stop the loop."""
        if self._loop.is_closed():
            return
        try:
            cancelled = asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop)
            with contextlib.suppress(Exception):
                cancelled.result(_CANCEL_WAIT_S)  # a handler may ignore its cancellation
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:  # closed meanwhile
            return
        self._loop_thread.join(_CANCEL_WAIT_S)

    @property
    def alive(self) -> bool:
        return self._loop_thread.is_alive() and all(t.is_alive() for t in self._receivers)

    async def _cancel_all(self) -> None:
        tasks = [t for t in asyncio.all_tasks(self._loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CANCEL_WAIT_S)

    # -- receiving -------------------------------------------------------------------------------
    def _receive(self, source: Source) -> None:
        """Take messages as room frees up and hand them to the loop, a batch at a time."""
        core = self.core
        tracker, stopping, limit = core.tracker, core.stopping, self.max_in_flight
        while not stopping.is_set():
            if not tracker.wait_room(limit, 0.1):
                continue
            room = limit - tracker.in_flight
            batch = core.receiver.take(source, max(1, room))
            if batch:
                tickets = [tracker.open(source, msg) for msg in batch]
                self._loop.call_soon_threadsafe(self._spawn_all, tickets)

    def _spawn_all(self, tickets: Sequence[Ticket]) -> None:
        for ticket in tickets:
            self._spawn(ticket)

    def _spawn(self, ticket: Ticket) -> None:
        key = ordering_key(ticket.msg) if self.keyed else ""
        previous = self._key_tails.get(key) if key else None
        task = self._loop.create_task(self._process(ticket, previous))
        if key:
            self._key_tails[key] = task

            def forget(done: asyncio.Future[None], key: str = key) -> None:
                if self._key_tails.get(key) is done:
                    del self._key_tails[key]

            task.add_done_callback(forget)

    async def _process(self, ticket: Ticket, previous: asyncio.Future[None] | None) -> None:
        core = self.core
        try:
            if previous is not None:
                await asyncio.wait([previous])  # same key: strictly one after the other
            assert self._slots is not None
            async with self._slots:
                msg = ticket.msg
                try:
                    value = core.invoker.decode(msg)
                    outputs = await core.invoker.call_async(Context(core.env, msg, ticket), value)
                except Exception as exc:
                    core.settler.fail(ticket, exc)
                else:
                    for out in outputs:
                        self._queue_output(ticket, out)
        finally:
            core.tracker.release(ticket)  # the handler's part is done, however it ended

    # -- outputs -----------------------------------------------------------------------------------
    def _queue_output(self, ticket: Ticket, value: object) -> None:
        """Outputs of the tasks that ran in one pass of the loop go to the broker together,
        in one `send_batch` per producer with one receipt (no callback per output)."""
        outputs = self.core.outputs
        if not outputs.topic:
            return
        try:
            out = outputs.build(ticket.msg, value, ticket.outputs)
        except Exception as exc:
            self.core.settler.fail(ticket, exc)
            return
        ticket.outputs += 1
        tracked = self._tracks and self.core.tracker.hold(ticket)
        self._outbox.append(out)
        self._owners.append(ticket if tracked else None)
        if len(self._outbox) == 1:
            self._loop.call_soon(self._send_outbox)

    def _send_outbox(self) -> None:
        outs, owners = self._outbox, self._owners
        self._outbox, self._owners = [], []
        tracker, broker = self.core.tracker, self.core.broker
        for batch, batch_owners in self.core.outputs.per_producer(outs, owners):

            def sent(
                errors: Mapping[int, Exception], owners: list[Ticket | None] = batch_owners
            ) -> None:
                tracker.release_all(owners, errors)  # the client's IO thread: record only

            broker.send_batch(batch, sent)

    # -- settling, on the loop ---------------------------------------------------------------------
    def _ready(self, tickets: list[Ticket]) -> None:
        """Tickets that became ready (any thread): settled on the loop."""
        if threading.get_ident() == self._loop_ident:
            self._settle(tickets)
            return
        try:
            self._loop.call_soon_threadsafe(self._settle, tickets)
        except RuntimeError:  # the loop is closed: stopped after the drain deadline
            _log.warning("%d messages ready after the stop, left unacknowledged", len(tickets))

    def _settle(self, tickets: list[Ticket]) -> None:
        self.core.tracker.park(self.core.settler.settle(tickets))

    def _parked(self) -> None:
        """Something was parked (any thread): the loop sets its retry timer."""
        if threading.get_ident() == self._loop_ident:
            self._arm_retry()
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the instance stopped
            self._loop.call_soon_threadsafe(self._arm_retry)

    def _arm_retry(self) -> None:
        """One timer, at the next parked message's time (moved earlier, never doubled); none
        once stopping: the retries are given back, or taken over by the next engine."""
        if self.core.stopping.is_set():
            return
        tracker, sources = self.core.tracker, self.core.broker.sources
        dues = [due for s in sources if (due := tracker.next_due(s)) is not None]
        if not dues:
            return
        when = self._loop.time() + max(0.0, min(dues) - time.monotonic())
        if self._retry is not None and not self._retry.cancelled():
            if self._retry.when() <= when:
                return
            self._retry.cancel()
        self._retry = self._loop.call_at(when, self._retry_parked)

    def _retry_parked(self) -> None:
        """Failed messages the broker cannot redeliver are tried again here once due."""
        self._retry = None
        if self.core.stopping.is_set():
            return
        tracker = self.core.tracker
        now = time.monotonic()
        for source in self.core.broker.sources:
            for parked in tracker.due(source, now, 1 << 30):
                self._spawn(tracker.open(parked.source, parked.msg, parked))
        self._arm_retry()
