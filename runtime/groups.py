"""Processing messages a group at a time, on one thread: the batch and ordered engines' core.

A group is what the consumer holds (or what a lane was handed), taken together:

    Invoker.call_each     the handler on each message in order, outputs into an Outbox
    Broker.send_batch     the group's outputs, one batch per producer, one receipt each
    Settler.settle_group  once the receipts are in, in group order: one ack call without failures

Groups overlap: the next is processed while the previous one's sends are in flight (at most
GROUPS_IN_FLIGHT). Groups are sized to about BUDGET_S of handler time, so holding outputs to
the end of a group adds little latency. What a message costs is kept to the handler and the
client calls: no callback per output, no Context for a handler that takes none (the cursor
makes one if `current_context()` is called), no Ticket unless one is needed.

`in_order` (--retain-ordering, EFFECTIVELY_ONCE): a group stops at its first failed message,
which is settled (retried here or dead-lettered) before anything after it is processed; the
rest waits behind it, ahead of everything parked later. A failed send rewinds the same way:
the failed message and everything after it, in the groups still pending too, are processed
again in order. Under EFFECTIVELY_ONCE groups do not overlap (`overlap=False`): a group's
outputs are sent only once the previous group's are persisted, so that no later output can
reach the broker before an earlier one that is retried (its sequence id would then be dropped
as a duplicate).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence

from pulsarfunc.runtime import context as ctxmod
from pulsarfunc.runtime.context import Cursor
from pulsarfunc.runtime.engine import BATCH_MAX, Core
from pulsarfunc.runtime.errors import BrokerError
from pulsarfunc.runtime.outputs import Outbox
from pulsarfunc.runtime.tracker import Group, Parked, Tracker
from pulsarfunc.runtime.transport import InMessage, Source

GROUPS_IN_FLIGHT = 4  # processed groups whose sends may still be pending
BUDGET_S = 0.005  # handler time a group is sized to take (the latency it adds)
RECEIPT_DEADLINE_S = 120.0  # longer than a broker restart takes


class GroupRunner:
    """Runs groups of one source on the calling thread, and settles them in order."""

    def __init__(
        self, core: Core, source: Source, *, in_order: bool = False, overlap: bool = True
    ) -> None:
        self.core = core
        self.source = source
        self.in_order = in_order
        self.overlap = overlap
        self.pending: collections.deque[Group] = collections.deque()
        self.limit = 1  # messages the next group should take: BUDGET_S of handler time
        self._cursor = Cursor(core.env)

    def close(self) -> None:
        """Settle what is pending; the thread is done with this runner."""
        self.settle_all()
        self.core.invoker.release_thread()

    # -- processing ------------------------------------------------------------------------------
    def run(self, msgs: Sequence[InMessage]) -> None:
        """Process messages fresh from the consumer."""
        self._run(self.core.tracker.open_group(self.source, msgs))

    def run_parked(self, parked: Sequence[Parked]) -> None:
        """Process parked messages again (they are in flight already)."""
        if not parked:
            return
        msgs = [p.msg for p in parked]
        attempts = {i: p.attempts for i, p in enumerate(parked)}
        self._run(self.core.tracker.open_group(self.source, msgs, attempts))

    def _run(self, group: Group) -> None:
        core, msgs = self.core, group.msgs
        outbox = core.outputs.outbox(self.source.topic)
        tracker, settler = core.tracker, core.settler
        failed: list[int] = []

        def fail(index: int, error: Exception) -> None:
            settler.fail(tracker.ticket(group, index), error)
            failed.append(index)

        cursor = self._cursor
        cursor.enter(msgs, lambda index: tracker.ticket(group, index))
        token = ctxmod.bind(cursor)  # per group: several runners may share one thread
        try:
            stop = self.in_order
            core.invoker.call_each(msgs, cursor, outbox.put, fail, stop_at_failure=stop)
        finally:
            ctxmod.unbind(token)
            cursor.leave()
        cut = failed[0] + 1 if self.in_order and failed else len(msgs)
        if cut < len(msgs):
            group.msgs = msgs[:cut]  # in order: the messages after a failure wait behind it
        self._send(group, outbox)
        self.pending.append(group)
        per_message = (time.perf_counter() - group.began) / max(1, cut)
        self.limit = max(1, min(BATCH_MAX, int(BUDGET_S / max(per_message, 1e-7))))
        if (self.in_order and failed) or not self.overlap:
            # the failed message is settled first, the rest behind it
            self.settle_all(_behind(group, msgs, cut))

    def _send(self, group: Group, outbox: Outbox) -> None:
        """Send the group's outputs, one batch per producer; each adds one receipt."""
        if not outbox.outs:
            return
        tracker, broker = self.core.tracker, self.core.broker
        for outs, owners in outbox.per_producer():
            tracker.issued(group)
            broker.send_batch(outs, _Receipt(tracker, group, owners))

    # -- settling, in group order ----------------------------------------------------------------
    def settle_ready(self) -> None:
        """Settle the groups at the front whose receipts are all in; flush and wait for the
        oldest when too many are pending."""
        pending = self.pending
        while pending and pending[0].sent:
            self._settle(pending.popleft())
        if len(pending) > GROUPS_IN_FLIGHT:
            self.settle_all()

    def settle_all(self, behind: Sequence[Parked] = ()) -> None:
        """Flush, then settle every pending group in order; `behind`: messages not processed
        yet that come after them (in order: parked behind any retry)."""
        parked: list[Parked] = []
        if self.pending:
            self.core.broker.flush()
        while self.pending:
            group = self.pending.popleft()
            _await_receipts(group)
            parked += self._settle_now(group)
        self._park([*parked, *behind])

    def _settle(self, group: Group) -> None:
        self._park(self._settle_now(group))

    def _settle_now(self, group: Group) -> list[Parked]:
        """Settle `group`; the messages to retry here, and in order all that follows them."""
        settler = self.core.settler
        parked = settler.settle_group(group)
        if self.in_order and (parked or settler.dead_letters_in_flight(self.source)):
            parked += self._rewind()
        return parked

    def _rewind(self) -> list[Parked]:
        """A message failed and waits to be tried again: the groups processed after it are
        processed again after it, in order (their outputs are replays)."""
        tracker = self.core.tracker
        again: list[Parked] = []
        while self.pending:
            group = self.pending.popleft()
            if tracker.claim_group(group):
                again += _behind(group, group.msgs)
        return again

    def _park(self, parked: list[Parked]) -> None:
        """In order, ahead of what was parked before (all of it comes later in the input);
        and then nothing goes on while a dead letter's send is in flight: should it fail, the
        message comes back here, ahead of what follows it."""
        settler = self.core.settler
        settler.tracker.park(parked, front=self.in_order)
        if self.in_order and settler.dead_letters_in_flight(self.source):
            settler.wait_dead_letters(self.source, RECEIPT_DEADLINE_S)


def _behind(group: Group, msgs: Sequence[InMessage], start: int = 0) -> list[Parked]:
    """`msgs[start:]` of `group`, to be processed again behind a retry (due at once), each
    with its attempts so far."""
    return [
        Parked(group.source, msg, group.attempts.get(start + i, 0), 0.0)
        for i, msg in enumerate(msgs[start:])
    ]


class _Receipt:
    """The receipt of one output batch of a group: it only records (the client's IO thread)."""

    __slots__ = ("group", "owners", "tracker")

    def __init__(self, tracker: Tracker, group: Group, owners: list[int]) -> None:
        self.tracker = tracker
        self.group = group
        self.owners = owners  # position in the batch -> index of the message in the group

    def __call__(self, errors: Mapping[int, Exception]) -> None:
        owners = self.owners
        self.tracker.receipt(self.group, {owners[p]: e for p, e in errors.items()})


def _await_receipts(group: Group) -> None:
    """After a flush every receipt is in, or the broker is away: wait, but not forever.

    Sends never time out (a broker restart only delays them), so a group whose receipts do not
    all come within the deadline fails as a whole: retried, never acknowledged unconfirmed.
    """
    deadline = time.monotonic() + RECEIPT_DEADLINE_S
    while not group.sent:
        if time.monotonic() > deadline:
            missing = group.issued - group.done
            group.error = BrokerError(
                f"{missing} sends unconfirmed after {RECEIPT_DEADLINE_S:.0f} s"
            )
            return
        time.sleep(0.0005)
