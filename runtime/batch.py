"""Batch mode, the fast path for sync handlers: a group of messages at a time, per thread.

Each of `concurrency` threads per source takes what the consumer holds (a group), calls the
handler on each message inline and sends the outputs, then settles the group once its sends are
persisted. Groups overlap: the next is processed while the previous one's sends are in flight,
and groups settle in order. What a message costs is kept to the handler and the client calls:
- no callback per output: a group's outputs go to the broker in one `send_batch` at its end,
  with one receipt (see `transport.Broker.send_batch`); groups are sized to about
  _BATCH_BUDGET_S of handler time, so holding outputs to the end of a group adds little
  latency;
- no Context for a handler that takes none: a `Cursor` bound once per thread makes one only if
  `current_context()` is called, and a `Work` (the per-message bookkeeping) only then or on a
  failure;
- a group without failures is acknowledged in one pass and counted in one metrics update.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pulsarfunc.runtime import context as ctxmod
from pulsarfunc.runtime.context import Cursor, FunctionEnv
from pulsarfunc.runtime.errors import BrokerError
from pulsarfunc.runtime.handler import NOT_AWAITABLE, Handler, sync_result
from pulsarfunc.runtime.metrics import Metrics
from pulsarfunc.runtime.outputs import Outputs
from pulsarfunc.runtime.settle import ACKED_ON_SUCCESS, Settler
from pulsarfunc.runtime.transport import Broker, InMessage, OutMessage, Source
from pulsarfunc.runtime.work import Receipts, Work, entry_of

_log = logging.getLogger("pulsarfunc.instance")

BATCH_MAX = 1000  # messages taken from the client per receive
_GROUPS_IN_FLIGHT = 4  # processed groups whose sends may still be pending
_BATCH_BUDGET_S = 0.005  # handler time a group is sized to take (the latency it adds)
_RECEIPT_DEADLINE_S = 120.0  # longer than a broker restart takes

NextBatch = Callable[[Source, int], Sequence[InMessage]]


class Group:
    """One received batch on its way: its outputs until sent, receipts, failures, lazy Works."""

    __slots__ = (
        "began",
        "error",
        "msgs",
        "outs",
        "owners",
        "receipts",
        "send_errors",
        "source",
        "works",
    )

    def __init__(self, source: Source, msgs: Sequence[InMessage], began: float) -> None:
        self.source = source
        self.msgs = msgs
        self.began = began
        self.receipts = Receipts()
        self.works: dict[int, Work] = {}
        self.outs: list[OutMessage] = []  # sent in one batch at the end of the group
        self.owners: list[int] = []  # the message (index) each output is of
        self.error: Exception | None = None  # receipts did not come: every message failed
        self.send_errors: dict[int, Exception] = {}  # message index -> its output failed

    def work(self, index: int) -> Work:
        """The bookkeeping of message `index`, made on first use (from any thread)."""
        work = self.works.get(index)
        if work is None:
            fresh = Work(self.source, self.msgs[index], self.receipts, self.began)
            work = self.works.setdefault(index, fresh)  # atomic: one Work per message
        return work

    @property
    def sent(self) -> bool:
        """Every tracked send of the group has its receipt."""
        return len(self.receipts.done) >= self.receipts.issued


class BatchRunner:
    """Runs batch mode on one source per thread; shared by the instance's threads."""

    def __init__(
        self,
        *,
        handler: Handler,
        decode: Callable[[InMessage], Any],
        outputs: Outputs,
        broker: Broker,
        settler: Settler,
        metrics: Metrics,
        env: FunctionEnv,
        next_batch: NextBatch,
        concurrency: int,
        stopping: threading.Event,
        raw_input: bool = False,
    ) -> None:
        self._handler = handler
        self._decode = decode
        self._outputs = outputs
        self._broker = broker
        self._settler = settler
        self._metrics = metrics
        self._env = env
        self._next_batch = next_batch
        self._concurrency = concurrency
        self._stopping = stopping
        # with several sources: at most `concurrency` handler calls at a time
        self._serial = threading.Semaphore(concurrency)
        self._capped = len(broker.sources) > 1  # one source: its threads are the cap
        self._guarantee = env.config.processing_guarantee
        self._counts_outputs = outputs.effectively_once
        # The handler is called directly when it takes its input alone: no Context at all.
        self._plain = handler.plain_call()
        self._raw_input = raw_input  # bytes in as bytes: msg.data() is the value

    def run(self, source: Source) -> None:
        """Process group after group until stopping; then settle what is pending."""
        cursor = Cursor(self._env)
        token = ctxmod.bind(cursor)
        try:
            self._loop(source, cursor)
        finally:
            ctxmod.unbind(token)

    def _loop(self, source: Source, cursor: Cursor) -> None:
        pending: collections.deque[Group] = collections.deque()
        # Groups are as large as the handler's measured time per message allows within
        # _BATCH_BUDGET_S (one message at first), up to BATCH_MAX.
        limit = 1
        last: Sequence[InMessage] = ()
        while not self._stopping.is_set():
            batch = self._next_batch(source, limit)
            if batch:
                group = self._run_group(source, batch, pending, cursor)
                last = batch
                per_message = (time.perf_counter() - group.began) / len(batch)
                limit = max(1, min(BATCH_MAX, int(_BATCH_BUDGET_S / max(per_message, 1e-7))))
            while pending and pending[0].sent:
                self._settle(pending.popleft())
            if pending and (not batch or len(pending) > _GROUPS_IN_FLIGHT):
                self._settle_pending(pending)  # idle, or too far ahead: wait for the oldest
        if self._concurrency == 1 and self._guarantee in ACKED_ON_SUCCESS:
            self._finish_open_entries(source, last, pending, cursor)
        self._settle_pending(pending)

    def _run_group(
        self,
        source: Source,
        msgs: Sequence[InMessage],
        pending: collections.deque[Group],
        cursor: Cursor,
    ) -> Group:
        with self._serial if self._capped else contextlib.nullcontext():
            group = Group(source, msgs, time.perf_counter())
            cursor.owner_of = group.work
            try:
                self._invoke_all(group, cursor)
            finally:
                cursor.owner_of = cursor.ctx = None
            self._send_outputs(group)
        pending.append(group)
        return group

    def _invoke_all(self, group: Group, cursor: Cursor) -> None:
        """Call the handler on each message of the group; failures are recorded per message.

        The hot loop of the runtime: everything it uses is a local, and a single output that
        needs no per-message count goes straight to the group's list.
        """
        handler, decode, put, build = self._handler, self._decode, self._put, self._outputs.build
        plain, raw = self._plain, self._raw_input
        yields, counted = handler.yields, self._counts_outputs or not self._outputs.topic
        outs, owners = group.outs, group.owners
        work_of = group.work
        for index, msg in enumerate(group.msgs):
            cursor.index = index
            cursor.ctx = None
            try:
                value = msg.data() if raw else decode(msg)
                token = None
                try:
                    if plain is not None:
                        result = plain(value)
                    else:  # a Context of its own: the call may outlive the cursor (timeouts)
                        ctx = cursor.context()
                        token = ctxmod.bind(ctx)
                        result = handler.call(ctx, value)
                    if type(result) not in NOT_AWAITABLE:
                        result = sync_result(result)
                    if yields:
                        for out in result:
                            put(group, index, out)
                    elif result is not None:
                        if counted:
                            put(group, index, result)
                        else:
                            outs.append(build(msg, result, 0))
                            owners.append(index)
                finally:
                    if token is not None:
                        ctxmod.unbind(token)
            except Exception as exc:
                self._settler.fail(work_of(index), exc)

    def _put(self, group: Group, index: int, value: Any) -> None:
        """One output of message `index`, to be sent with the group's others."""
        outputs = self._outputs
        if value is None or not outputs.topic:
            return
        previous = 0
        if self._counts_outputs:
            work = group.work(index)
            previous = work.outputs
            work.outputs += 1
        group.outs.append(outputs.build(group.msgs[index], value, previous))
        group.owners.append(index)

    def _send_outputs(self, group: Group) -> None:
        """Send the group's outputs, one batch per producer; each adds one receipt."""
        if group.outs:
            for outs, owners in self._outputs.per_producer(group.outs, group.owners):
                self._send_batch(group, outs, owners)

    def _send_batch(self, group: Group, outs: list[OutMessage], owners: list[int]) -> None:
        receipts = group.receipts
        receipts.issued += 1

        def receipt(errors: Mapping[int, Exception]) -> None:
            for position, error in errors.items():
                group.send_errors.setdefault(owners[position], error)
            receipts.done.append(None)  # last: settling reads the errors after this

        self._broker.send_batch(outs, receipt)

    # -- settling, in group order ------------------------------------------------------------
    def _settle(self, group: Group) -> None:
        if group.error is not None or group.send_errors:
            for index in range(len(group.msgs)):
                error = group.send_errors.get(index) or group.error
                if error is not None:
                    self._settler.fail(group.work(index), error, user=False)
        self._settler.settle_group(group.source, group.msgs, group.works, group.began)

    def _settle_pending(self, pending: collections.deque[Group]) -> None:
        """Flush, then settle every pending group in order."""
        if not pending:
            return
        self._broker.flush()
        while pending:
            group = pending.popleft()
            self._await_receipts(group)
            self._settle(group)

    def _await_receipts(self, group: Group) -> None:
        """After a flush every receipt is in, or the broker is away: wait, but not forever.

        Sends never time out (a broker restart only delays them), so a group whose receipts do
        not all come within the deadline fails as a whole: nacked, never acked unconfirmed.
        """
        deadline = time.monotonic() + _RECEIPT_DEADLINE_S
        while not group.sent:
            if time.monotonic() > deadline:
                missing = group.receipts.issued - len(group.receipts.done)
                group.error = BrokerError(
                    f"{missing} sends unconfirmed after {_RECEIPT_DEADLINE_S:.0f} s"
                )
                return
            time.sleep(0.0005)

    def _finish_open_entries(
        self,
        source: Source,
        last: Sequence[InMessage],
        pending: collections.deque[Group],
        cursor: Cursor,
    ) -> None:
        """On stop, also process the rest of the producer batches already begun.

        A broker without batch-index acks redelivers a partly acknowledged producer batch
        whole, so stopping inside one would duplicate every sibling already processed. Its
        remaining messages are in the client's queue already (a batch arrives in one piece);
        anything else received here stays unacknowledged and goes to the next consumer.
        """
        open_entries = {entry_of(msg) for msg in last if msg.message_id().batch_index() >= 0}
        while open_entries:
            more = self._broker.receive(source, BATCH_MAX, 0)
            rest = [msg for msg in more if entry_of(msg) in open_entries]
            if not rest:
                return
            self._metrics.note_received(len(rest))
            self._run_group(source, rest, pending, cursor)
            open_entries = {entry_of(msg) for msg in rest}
