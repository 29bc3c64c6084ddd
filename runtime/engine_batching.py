"""The batching engine, for batch handlers: groups of up to N messages, gathered within a delay.

A batch handler (`batching.py`) runs when --batch-max-size N is set or its input is annotated
`Batch[T]` (N = 100). Each thread takes what the consumer holds, in whole batches of N (as
many as the group runner's time budget allows, at least one), waits at most
--batch-max-delay-ms for a batch that is not full to fill (then calls with what it has), and
runs the lot as one group (`groups.py`) through the batch handler's invoker
(`invoke_batch.py`), which calls the handler once per N messages: outputs are sent and the
group settled in order as for any handler, a failed item alone is retried or dead-lettered,
and failed items come back later as a batch of their own.

Ordering, the choices made:
- --retain-ordering and EFFECTIVELY_ONCE: batches in order, on one thread per source. A
  failed item is settled (retried here, or dead-lettered) before anything after it is
  acknowledged; the items after it in its batch are called again behind it (their outputs are
  replays; under EFFECTIVELY_ONCE the broker drops replayed ones by sequence id).
- key-shared subscriptions and --retain-key-ordering: one thread per source, so no two batches
  of one source are ever called at once; a batch holds the messages of a key in the order they
  came. A failed item is retried by the broker, as Pulsar does under Key_Shared (and as the
  single-message engine does).
- otherwise --concurrency N (default 1) threads per source, each with its own batches.
Under MANUAL a batch has no one message for `context.ack()`: refused at start-up.
"""

from __future__ import annotations

import logging
import time

from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.engine import RECEIVE_TIMEOUT_MS, Core, keyed, ordered
from pulsarfunc.runtime.engine_batch import BatchEngine
from pulsarfunc.runtime.errors import ConfigError
from pulsarfunc.runtime.groups import GroupRunner
from pulsarfunc.runtime.handler import Handler, batch_form
from pulsarfunc.runtime.transport import InMessage, Source

_log = logging.getLogger("pulsarfunc.instance")


def batched(handler: Handler, config: FunctionConfig) -> Handler:
    """`handler` as a batch handler when the configuration or its annotation asks for one;
    a UserError when it cannot be one."""
    size = config.batch_max_size or handler.batch_size
    if not size:
        return handler
    if config.window.enabled:
        raise ConfigError(
            f"a batch handler (up to {size} inputs a call) with a window: both give the "
            "handler a list of inputs, in different ways",
            "choose one: drop --batch-max-size (or the Batch[T] annotation) for a window "
            "function, or the window settings for a batch handler",
        )
    if config.processing_guarantee is ProcessingGuarantee.MANUAL:
        raise ConfigError(
            f"a batch handler (up to {size} inputs a call) under the MANUAL guarantee: "
            "context.ack() names one message, a batch holds many",
            "use ATLEAST_ONCE (the default: each item is acknowledged once its output is "
            "persisted, failed items are retried alone), or a single-message handler",
        )
    return batch_form(handler, size)


def batch_concurrency(config: FunctionConfig) -> int:
    """Threads per source calling a batch handler (see the module docstring)."""
    wanted = max(1, config.concurrency)
    if wanted > 1 and (ordered(config) or keyed(config)):
        _log.warning(
            "concurrency %d lowered to 1 for a batch handler: ordering keeps one batch of a "
            "source in flight at a time",
            config.concurrency,
        )
        return 1
    return wanted


class BatchingEngine(BatchEngine):
    """Threads per source, each gathering batches and running them as groups."""

    def __init__(self, core: Core, size: int) -> None:
        super().__init__(core)
        self.size = size
        self.delay_s = core.config.batch_max_delay_ms / 1000.0
        self.in_order = ordered(core.config)

    def _run(self, source: Source) -> None:
        core = self.core
        eo = core.config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
        runner = GroupRunner(core, source, in_order=self.in_order, overlap=not eo)
        last: list[InMessage] = []
        try:
            while not core.stopping.is_set():
                if self.in_order:
                    self._step_in_order(source, runner)
                else:
                    last = self._step(source, runner) or last
                runner.settle_ready()
            if not self.in_order and self._finishes_entries():
                self._finish_open_entries(runner, source, last)
        finally:
            runner.close()
        if not core.handover.is_set():  # a handover leaves the retries to the next engine
            core.settler.give_back(source)

    def _step(self, source: Source, runner: GroupRunner) -> list[InMessage]:
        """One batch (due retries first), as the batch engine runs a group; what was taken."""
        tracker = self.core.tracker
        room = max(self.core.config.receiver_queue_size, self.size)  # parked retries held
        parked = tracker.due(source, time.monotonic(), self.size)
        if parked:
            with self._turn():
                runner.run_parked(parked)
        elif tracker.parked(source) >= room:
            runner.settle_all()
            time.sleep(0.01)  # retries pile up: take nothing new until they are done
        else:
            batch = self._gather(source, runner)
            if batch:
                with self._turn():
                    runner.run(batch)
                return batch
            if runner.pending:
                runner.settle_all()  # idle: settle now
        return []

    def _step_in_order(self, source: Source, runner: GroupRunner) -> None:
        """One batch in order: a failed item waits for its retry, nothing overtakes it."""
        tracker, now = self.core.tracker, time.monotonic()
        next_due = tracker.next_due(source, in_order=True)
        if next_due is None:
            batch = self._gather(source, runner)
            if batch:
                runner.run(batch)
            elif runner.pending:
                runner.settle_all()
        elif next_due <= now:
            runner.run_parked(tracker.due(source, now, self.size, in_order=True))
        else:
            runner.settle_all()
            self.core.stopping.wait(min(next_due - now, 0.1))

    def _gather(self, source: Source, runner: GroupRunner) -> list[InMessage]:
        """A group of whole batches: what the consumer holds, up to `runner.limit` (the
        group runner's time budget) rounded down to whole batches, at least one batch; when
        that is less than one full batch, also what comes within the delay after the first.

        A backlog is taken many batches a group (the invoker calls the handler per batch), so
        sends and acknowledgements stay as few as for single-message handlers."""
        receiver, stopping, size = self.core.receiver, self.core.stopping, self.size
        most = max(size, runner.limit // size * size)
        batch = list(receiver.take(source, most, RECEIVE_TIMEOUT_MS))
        if not batch:
            return batch
        deadline = time.monotonic() + self.delay_s
        while len(batch) < size and not stopping.is_set():
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            batch += receiver.take(source, size - len(batch), left_ms)
        return self._unique(batch, runner)

    def _unique(self, batch: list[InMessage], runner: GroupRunner) -> list[InMessage]:
        """Each message once, and none still in flight here. After a failure the broker may
        redeliver a producer batch twice in quick succession (one redelivery per nack it was
        asked for): a batch gathered over the delay would then hold a message and its copy,
        or take the copy while the original's group waits for its sends, and process (and
        dead-letter) it twice. The copy is dropped here, settled with the original by id."""
        if not self.core.settler.redeliveries.watching:
            return batch  # copies come only after a failure or a lost connection
        seen = {_id(msg) for group in runner.pending for msg in group.msgs}
        kept: list[InMessage] = []
        for msg in batch:
            key = _id(msg)
            if key not in seen:
                seen.add(key)
                kept.append(msg)
        if len(kept) < len(batch):
            self.core.metrics.note_copies_skipped(len(batch) - len(kept))
        return kept


def _id(msg: InMessage) -> tuple[str, bytes]:
    return (msg.topic_name(), msg.message_id().serialize())
