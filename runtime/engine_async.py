"""The async engine: async handlers on one event loop, up to --concurrency messages at once.

    receiver thread per source --(the first batch after a lull)--> event loop, which then
        takes the next batches itself while messages keep coming (`_Feed`)
    one task per batch: each message's coroutine driven in it while messages complete without
        waiting; the first that waits keeps the task, the rest get a task each (`_run_all`)
    a message: Context -> Invoker.process_async -> outputs queued
    outputs of one pass of the loop -> one send_batch per producer, one receipt
    receipt (client's IO thread): Tracker.release_all records; tickets that became ready are
        handed to the loop, which settles them (acks give up the GIL: not on the IO thread)

At most `2 x max(receiver queue size, concurrency)` messages are in flight (two receiver
batches: one is processed while the other's outputs are on their way); a receiver waits for
room. On a key-shared subscription (or with --retain-key-ordering) messages of one key run
one after the other, in order (`engine.ordering_key`), a task each. A message's handler slot
and its place in flight are returned in `finally`, whatever the handler does (an
`asyncio.CancelledError` from the handler is a failure of that message: `invoke.py`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
import types
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pulsarfunc.runtime.config import ProcessingGuarantee
from pulsarfunc.runtime.context import Context
from pulsarfunc.runtime.engine import Core, ordering_key
from pulsarfunc.runtime.tracker import Ticket
from pulsarfunc.runtime.transport import OutMessage, Source

_log = logging.getLogger("pulsarfunc.instance")
_T = TypeVar("_T")
_CANCEL_WAIT_S = 1.0  # at the stop, how long calls given up get to end once cancelled


@types.coroutine
def _carry_on(coroutine: Coroutine[Any, Any, None], waits_on: Any) -> Generator[Any, Any, None]:
    """Await the rest of a coroutine already run up to its first wait (which yielded
    `waits_on`): what the task sends or throws in goes on to it, as `await` would have."""
    while True:
        try:
            sent = yield waits_on
        except BaseException as exc:  # the task throws in: its cancellation, say
            try:
                waits_on = coroutine.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waits_on = coroutine.send(sent)
            except StopIteration:
                return


class _Inbox(Generic[_T]):
    """Items handed to the event loop from other threads, with one wake-up of the loop for
    all that arrive before it runs (each wake-up is a write to the loop's self-pipe, a read and
    a pass of the loop: at high rates they cost more than the messages)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, take: Callable[[list[_T]], None]) -> None:
        self._loop = loop
        self._take = take
        self._lock = threading.Lock()
        self._items: list[_T] = []

    def put(self, items: Sequence[_T]) -> None:
        """Hand `items` to the loop (any thread); RuntimeError if the loop is closed."""
        if self._loop.is_closed():
            raise RuntimeError("the event loop is closed")
        with self._lock:
            wake = not self._items
            self._items.extend(items)
        if wake:
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        self._take(items)


class _Feed:
    """How one source's messages reach the loop. While they keep coming the loop takes them
    itself, right after processing the last batch, on its own thread; the source's receiver
    thread only waits for the first message after a lull, or for room after the loop ran short
    of it. (A receiver thread draining the consumer while the loop runs handlers made the two
    take turns at the GIL on every client call.)"""

    __slots__ = ("lull", "short_of_room", "source")

    def __init__(self, source: Source) -> None:
        self.source = source
        self.lull = threading.Event()  # set: the receiver thread takes, not the loop
        self.lull.set()
        self.short_of_room = False  # the loop stopped for room, not for want of messages


class AsyncEngine:
    """Receiver threads feeding one event loop; see the module docstring."""

    def __init__(self, core: Core, *, keyed: bool = False) -> None:
        self.core = core
        self.keyed = keyed
        self.max_in_flight = 2 * max(core.config.receiver_queue_size, core.concurrency)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="pf-loop", daemon=True)
        self._loop_ident = 0
        self._receivers: list[threading.Thread] = []
        # handler slots (--concurrency): free ones, and the calls waiting for one, in order
        self._free = core.concurrency
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._key_tails: dict[str, asyncio.Future[None]] = {}
        # outputs hold their input's settling, but under ATMOST_ONCE (acked on receipt)
        self._tracks = core.config.processing_guarantee is not ProcessingGuarantee.ATMOST_ONCE
        self._outbox: list[OutMessage] = []  # outputs of this pass of the loop
        self._owners: list[Ticket | None] = []  # the ticket each settles (None: untracked)
        self._retry: asyncio.TimerHandle | None = None  # the one timer for parked retries
        # from other threads to the loop: one wake-up for what arrives before the loop runs
        self._taken: _Inbox[tuple[_Feed, list[Ticket]]] = _Inbox(self._loop, self._took_all)
        self._readied: _Inbox[Ticket] = _Inbox(self._loop, self._settle)  # the client's IO thread
        self._most = max(1, self.max_in_flight // 2)  # a batch is processed while one settles
        self._enough = max(1, self._most // 2)  # the least room worth taking a batch into
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
                target=self._receive, args=(_Feed(source),), name="pf-recv", daemon=True
            )
            self._receivers.append(thread)
            thread.start()

    def _run_loop(self) -> None:
        self._loop_ident = threading.get_ident()
        asyncio.set_event_loop(self._loop)
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
    def _receive(self, feed: _Feed) -> None:
        """After a lull, wait for the next messages and hand them to the loop, which then takes
        the rest itself (`_feed`); after the loop ran short of room, wait for room and let the
        loop go on."""
        core = self.core
        tracker, stopping = core.tracker, core.stopping
        room_for = self.max_in_flight - self._enough + 1  # room for `_enough` at least
        while not stopping.is_set():
            if not feed.lull.wait(0.1) or not tracker.wait_room(room_for, 0.1):
                continue
            if feed.short_of_room:
                feed.short_of_room = False
                feed.lull.clear()
                with contextlib.suppress(RuntimeError):  # closed: the instance stopped
                    self._loop.call_soon_threadsafe(self._feed, feed)
                continue
            room = self.max_in_flight - tracker.in_flight
            batch = core.receiver.take(feed.source, max(1, min(room, self._most)))
            if batch:
                feed.lull.clear()
                self._taken.put([(feed, tracker.open_all(feed.source, batch))])

    def _took_all(self, batches: list[tuple[_Feed, list[Ticket]]]) -> None:
        for feed, tickets in batches:
            self._spawn_all(tickets)
            self._loop.call_soon(self._feed, feed)  # once this batch has run

    def _feed(self, feed: _Feed) -> None:
        """Take the source's next batch on the loop, while there is one and room for it; else
        hand back to the receiver thread."""
        core = self.core
        if core.stopping.is_set():
            feed.lull.set()
            return
        room = self.max_in_flight - core.tracker.in_flight
        if room < self._enough:
            feed.short_of_room = True
            feed.lull.set()
            return
        batch = core.receiver.take(feed.source, min(room, self._most), 0, pause_s=0.0)
        if not batch:
            feed.lull.set()
            return
        self._took_all([(feed, core.tracker.open_all(feed.source, batch))])

    def _spawn_all(self, tickets: Sequence[Ticket]) -> None:
        if self.keyed:  # each waits for the one before it of its key: a task each
            self._spawn_each(tickets)
        else:
            self._loop.create_task(self._run_all(tickets))

    async def _run_all(self, tickets: Sequence[Ticket]) -> None:
        """Process `tickets` one after the other in this task while each completes without
        waiting; at the first that waits, this task stays with it and every later ticket gets
        a task of its own, started in this same pass of the loop.

        A trivial handler then costs no task of its own (a task per message halved the rate);
        a handler that waits runs as it did with a task per message, in one task from its first
        line to its last: `asyncio.current_task()`, `asyncio.timeout()` and cancellation see
        the task it waits in. The concurrency limit holds: with no slot free, the rest wait for
        one in tasks of their own. Context variables a handler sets stay set for the next
        message processed in the same task, as they do for the next message on a sync
        handler's thread.
        """
        core = self.core
        invoker, env, settler, tracker = core.invoker, core.env, core.settler, core.tracker
        done: list[Ticket] = []  # handler part over: released together (one lock)
        try:
            for index, ticket in enumerate(tickets):
                if not self._free or self._slot_waiters:
                    self._spawn_each(tickets[index:])
                    return
                self._free -= 1
                step = invoker.process_async(
                    Context(env, ticket.msg, ticket),
                    functools.partial(self._queue_output, ticket),
                    functools.partial(settler.fail, ticket),
                )
                try:
                    waits_on = step.send(None)
                except StopIteration:  # done without waiting
                    self._give_slot()
                    done.append(ticket)
                    continue
                except BaseException:  # not the message's failure (that is settled)
                    self._give_slot()
                    done.append(ticket)
                    self._spawn_each(tickets[index + 1 :])
                    raise
                self._spawn_each(tickets[index + 1 :])
                tracker.release_all(done, {})
                done = []
                try:
                    await _carry_on(step, waits_on)
                finally:
                    self._give_slot()
                    tracker.release(ticket)
                return
        finally:
            if done:
                tracker.release_all(done, {})

    async def _take_slot(self) -> None:
        """A handler slot: free now, or the next one given back (in the order asked)."""
        if self._free and not self._slot_waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                with contextlib.suppress(ValueError):  # `_give_slot` may have dropped it
                    self._slot_waiters.remove(waiter)
            else:  # handed a slot, then cancelled: it goes on to the next
                self._give_slot()
            raise

    def _give_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it
                return
        self._free += 1

    def _spawn_each(self, tickets: Sequence[Ticket]) -> None:
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
            await self._take_slot()
            try:
                await core.invoker.process_async(
                    Context(core.env, ticket.msg, ticket),
                    functools.partial(self._queue_output, ticket),
                    functools.partial(core.settler.fail, ticket),
                )
            finally:
                self._give_slot()
        finally:
            core.tracker.release(ticket)  # the handler's part is done, however it ended

    # -- outputs -----------------------------------------------------------------------------------
    def _queue_output(self, ticket: Ticket, value: object) -> None:
        """Outputs of the tasks that ran in one pass of the loop go to the broker together,
        in one `send_batch` per producer with one receipt (no callback per output). An
        output that cannot be built raises: its message fails (`Invoker.process_async`)."""
        outputs = self.core.outputs
        if not outputs.topic:
            return
        out = outputs.build(ticket.msg, value, ticket.outputs, ticket.source.topic)
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
            self._readied.put(tickets)
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
