"""The batch engine, for sync handlers: threads that take groups straight from the consumer.

Each of `concurrency` threads per source takes what the consumer holds (a group, sized to
about 5 ms of handler time), has it processed and settled in order (`groups.py`), and goes on
with the next group while the previous one's sends are in flight. No hand-off between threads,
no lock per message: the fastest path. With one thread outputs keep input order; with several
a slow handler takes small groups, so N blocking calls run at once.

A message the broker cannot redeliver (non-persistent topic) that failed is parked and taken
again, as a group of its own, once due (`settle.py`). On a graceful stop a single thread also
processes the rest of the producer batches it began: a broker without batch-index acks would
redeliver such a batch whole, duplicating every sibling already processed.
"""

from __future__ import annotations

import contextlib
import threading
import time

from pulsarfunc.runtime.engine import BATCH_MAX, Core
from pulsarfunc.runtime.groups import GroupRunner
from pulsarfunc.runtime.settle import ACKED_ON_SUCCESS
from pulsarfunc.runtime.transport import InMessage, Source


def entry_of(msg: InMessage) -> tuple[int, int, int]:
    """The broker entry (one producer batch) a message came in."""
    mid = msg.message_id()
    return (mid.partition(), mid.ledger_id(), mid.entry_id())


class BatchEngine:
    """`concurrency` threads per source, each running groups; see the module docstring."""

    def __init__(self, core: Core) -> None:
        self.core = core
        # with several sources: at most `concurrency` handler calls at a time
        self._serial = threading.Semaphore(core.concurrency)
        self._capped = len(core.broker.sources) > 1  # one source: its threads are the cap
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for source in self.core.broker.sources:
            for _ in range(self.core.concurrency):
                thread = threading.Thread(
                    target=self._run,
                    args=(source,),
                    name=f"pf-batch-{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()

    def join(self, deadline: float) -> bool:
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    @property
    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def _run(self, source: Source) -> None:
        core = self.core
        tracker, receiver, stopping = core.tracker, core.receiver, core.stopping
        room = max(core.config.receiver_queue_size, BATCH_MAX)  # parked retries held at most
        last: list[InMessage] = []
        runner = GroupRunner(core, source)
        try:
            while not stopping.is_set():
                parked = tracker.due(source, time.monotonic(), runner.limit)
                if parked:
                    with self._turn():
                        runner.run_parked(parked)
                elif tracker.parked(source) >= room:
                    runner.settle_all()
                    time.sleep(0.01)  # retries pile up: take nothing new until they are done
                else:
                    batch = receiver.take(source, runner.limit)
                    if batch:
                        with self._turn():
                            runner.run(batch)
                        last = list(batch)
                    elif runner.pending:
                        runner.settle_all()  # idle: settle now
                runner.settle_ready()
            if self._finishes_entries():
                self._finish_open_entries(runner, source, last)
        finally:
            runner.close()
        if not core.handover.is_set():  # a handover leaves the retries to the next engine
            core.settler.give_back(source)

    def _finishes_entries(self) -> bool:
        """Whether a stop processes the rest of the producer batches begun: only when the
        consumer closes next (not on a handover) and acks follow success, on one thread."""
        core = self.core
        return (
            not core.handover.is_set()
            and core.concurrency == 1
            and core.config.processing_guarantee in ACKED_ON_SUCCESS
        )

    def close(self) -> None:
        """Nothing to release: the threads end on their own (or are left behind, daemons)."""

    def _turn(self) -> contextlib.AbstractContextManager[object]:
        return self._serial if self._capped else contextlib.nullcontext()

    def _finish_open_entries(
        self, runner: GroupRunner, source: Source, last: list[InMessage]
    ) -> None:
        """On stop, also process the rest of the producer batches already begun.

        Their remaining messages are in the client's queue already (a batch arrives in one
        piece); anything else received here stays unacknowledged and goes to the next consumer.
        """
        open_entries = {entry_of(msg) for msg in last if msg.message_id().batch_index() >= 0}
        while open_entries:
            more = self.core.broker.receive(source, BATCH_MAX, 0)
            rest = [msg for msg in more if entry_of(msg) in open_entries]
            if not rest:
                return
            self.core.metrics.note_received(len(rest))
            runner.run(rest)
            open_entries = {entry_of(msg) for msg in rest}
