"""The ordered engine: messages strictly one after the other, overall or per key.

- One lane (--retain-ordering, EFFECTIVELY_ONCE; sync or async handlers): the lane takes
  groups straight from the consumer, in order (`groups.py` with `in_order`). A failed message
  is retried here, after --redelivery-delay-ms, before anything after it is processed or
  acknowledged; after --max-message-retries it goes to the dead-letter topic and the rest goes
  on. A failed send rewinds to the failed message. So outputs keep input order across
  failures, and under EFFECTIVELY_ONCE no output of a later message is persisted before an
  earlier one (its sequence id would make the broker drop the earlier one as a duplicate).
- N lanes (sync handlers on a key-shared subscription or with --retain-key-ordering, at
  --concurrency N): one receiver per source hands each message to the lane of its key
  (`engine.ordering_key`), so messages of one key run one after the other, on one thread, and
  different keys in parallel. A failure is retried as usual (by the broker), as Pulsar does
  under Key_Shared.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pulsarfunc.runtime.config import ProcessingGuarantee
from pulsarfunc.runtime.engine import BATCH_MAX, Core, ordering_key
from pulsarfunc.runtime.groups import GroupRunner
from pulsarfunc.runtime.tracker import Parked
from pulsarfunc.runtime.transport import InMessage, Source

_IDLE_S = 0.05  # how long an idle lane waits for work before it checks for a stop


class OrderedEngine:
    """One lane in order, or `lanes` lanes by key; see the module docstring."""

    def __init__(self, core: Core, *, lanes: int = 1) -> None:
        self.core = core
        self.lanes = lanes
        self._threads: list[threading.Thread] = []
        self._queues: list[queue.SimpleQueue[_Work]] = []
        self._receivers: list[threading.Thread] = []

    def start(self) -> None:
        sources = self.core.broker.sources
        if self.lanes == 1:
            for source in sources:
                self._spawn(self._in_order, source, name=f"pf-ordered-{len(self._threads)}")
            return
        self._queues = [queue.SimpleQueue() for _ in range(self.lanes)]
        for lane in self._queues:
            self._spawn(self._lane, lane, name=f"pf-lane-{len(self._threads)}")
        for source in sources:
            thread = threading.Thread(
                target=self._route, args=(source,), name="pf-route", daemon=True
            )
            self._receivers.append(thread)
            thread.start()

    def _spawn(self, target: Callable[[Any], None], arg: object, *, name: str) -> None:
        thread = threading.Thread(target=target, args=(arg,), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self, deadline: float) -> bool:
        for thread in [*self._receivers, *self._threads]:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in [*self._receivers, *self._threads])

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in [*self._receivers, *self._threads])

    def close(self) -> None:
        """Nothing to release: the threads end on their own (or are left behind, daemons)."""

    # -- one lane, in order ----------------------------------------------------------------------
    def _in_order(self, source: Source) -> None:
        core = self.core
        tracker, stopping = core.tracker, core.stopping
        effectively_once = core.config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
        runner = GroupRunner(core, source, in_order=True, overlap=not effectively_once)
        try:
            while not stopping.is_set():
                next_due = tracker.next_due(source, in_order=True)
                if next_due is None:
                    batch = core.receiver.take(source, runner.limit)
                    if batch:
                        runner.run(batch)
                    elif runner.pending:
                        runner.settle_all()
                elif next_due <= time.monotonic():
                    runner.run_parked(
                        tracker.due(source, time.monotonic(), runner.limit, in_order=True)
                    )
                else:  # a failed message waits for its retry: nothing overtakes it
                    runner.settle_all()
                    stopping.wait(min(next_due - time.monotonic(), 0.1))
                runner.settle_ready()
        finally:
            runner.close()
        if not core.handover.is_set():  # a handover leaves the retries to the next engine
            core.settler.give_back(source)

    # -- lanes by key ------------------------------------------------------------------------------
    def _route(self, source: Source) -> None:
        """Take messages (and due retries) and hand each to its key's lane, as room frees up."""
        core = self.core
        tracker = core.tracker
        limit = max(core.config.receiver_queue_size, 2 * self.lanes)
        while not core.stopping.is_set():
            parked = tracker.due(source, time.monotonic(), BATCH_MAX)
            if parked:  # a retry goes to its key's lane too: same key, never at once
                self._hand_out(source, parked, [p.msg for p in parked])
                continue
            if not tracker.wait_room(limit, 0.1):
                continue
            batch = core.receiver.take(source)
            if batch:
                self._hand_out(source, batch, batch)

    def _hand_out(
        self, source: Source, items: Sequence[Parked | InMessage], msgs: Sequence[InMessage]
    ) -> None:
        count = len(self._queues)
        parts: list[list[Parked | InMessage]] = [[] for _ in range(count)]
        for item, msg in zip(items, msgs, strict=True):
            parts[hash(ordering_key(msg)) % count].append(item)
        for lane, part in zip(self._queues, parts, strict=True):
            if part:
                lane.put((source, part))

    def _lane(self, work: queue.SimpleQueue[_Work]) -> None:
        core = self.core
        stopping = core.stopping
        runners: dict[int, GroupRunner] = {}
        held: _Work | None = None  # taken already: of another source, or of another kind
        while True:
            if held is None:
                try:
                    held = work.get(timeout=_IDLE_S)
                except queue.Empty:
                    for runner in runners.values():
                        runner.settle_all()
                    if stopping.is_set() and not any(t.is_alive() for t in self._receivers):
                        break
                    continue
            source, items = held
            held = None
            replay = isinstance(items[0], Parked)
            group = list(items)
            while len(group) < BATCH_MAX:  # what else is queued for this lane, same kind
                try:
                    held = work.get_nowait()
                except queue.Empty:
                    break
                if held[0] is not source or isinstance(held[1][0], Parked) is not replay:
                    break
                group += held[1]
                held = None
            runner = runners.get(id(source)) or runners.setdefault(
                id(source), GroupRunner(core, source)
            )
            if replay:
                runner.run_parked([p for p in group if isinstance(p, Parked)])
            else:
                runner.run([m for m in group if not isinstance(m, Parked)])
            runner.settle_ready()
        for runner in runners.values():
            runner.close()
            if not core.handover.is_set():
                core.settler.give_back(runner.source)


_Work = tuple[Source, Sequence["Parked | InMessage"]]
