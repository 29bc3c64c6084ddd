"""Where every message in flight stands, from receipt to settlement: one owner, one lock.

A `Ticket` is one input message. A `Group` is the messages a batch engine took together: they
share one count of send receipts, and a Ticket is made for one of them only when it is needed
(a Context, a publish, a failure). The `Tracker` changes tickets and groups under its one lock,
from any thread:

    open / open_all / open_group        a message (messages, a group) is taken: in flight
    hold / release                      a send of a ticket begins / its receipt came (or the
                                        handler returned): the last release makes it ready
    fail                                the first error of a ticket counts
    park / due                          a failed message kept here to be tried again (local retry)
    claim / claim_group                 settlement begins: once, and never after `abandon`
    finished                            settled: out of flight
    wait_idle / abandon                 a graceful stop: wait, then give up what is left
    wait_quiet                          a reload: wait until nothing but parked retries is left

Send receipts come on the Pulsar client's IO thread: there they only record. A ticket that
becomes ready there is handed to `on_ready`, which the engine sets to hand it to its own thread;
settling (acks, nacks, dead letters) never runs on the client's thread.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from pulsarfunc.runtime.transport import InMessage, Source

Ready = Callable[[list["Ticket"]], None]


class Ticket:
    """One input message on its way; only its Tracker changes it."""

    __slots__ = (
        "acked",
        "attempts",
        "counted",
        "error",
        "group",
        "msg",
        "outputs",
        "pending",
        "settled",
        "source",
        "started",
    )

    def __init__(
        self,
        source: Source,
        msg: InMessage,
        group: Group | None = None,
        started: float = 0.0,
        attempts: int = 0,
    ) -> None:
        self.source = source
        self.msg = msg
        self.group = group  # set: its sends count on the group
        self.pending = 1  # the handler; each tracked send adds one (ungrouped tickets)
        self.error: BaseException | None = None
        self.counted = False  # its error is in the metrics and the log already
        self.settled = False
        self.acked = False  # by the function itself (MANUAL: context.ack())
        self.outputs = 0  # outputs built so far (effectively-once numbers them)
        self.attempts = attempts  # failed attempts made here (local retries)
        self.started = started or time.perf_counter()


class Group:
    """Messages taken together from one source; their sends are counted together."""

    __slots__ = (
        "attempts",
        "began",
        "done",
        "error",
        "issued",
        "msgs",
        "send_errors",
        "settled",
        "source",
        "tickets",
    )

    def __init__(
        self,
        source: Source,
        msgs: Sequence[InMessage],
        began: float,
        attempts: Mapping[int, int] | None = None,
    ) -> None:
        self.source = source
        self.msgs = msgs
        self.began = began
        self.tickets: dict[int, Ticket] = {}
        self.attempts = attempts or {}  # index -> failed attempts so far (replayed messages)
        self.issued = 0  # tracked sends (one per output batch, one per publish)
        self.done = 0  # their receipts
        self.send_errors: dict[int, Exception] = {}  # message index -> its send failed
        self.error: Exception | None = None  # receipts never came: every message failed
        self.settled = False

    @property
    def sent(self) -> bool:
        """Every tracked send of the group has its receipt."""
        return self.done >= self.issued


class Parked:
    """A failed message kept to be tried again here, not by the broker (see `settle.py`)."""

    __slots__ = ("attempts", "due", "msg", "source")

    def __init__(self, source: Source, msg: InMessage, attempts: int, due: float) -> None:
        self.source = source
        self.msg = msg
        self.attempts = attempts
        self.due = due


class Tracker:
    """Every message in flight of one instance: tickets, groups, parked retries, counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._open: dict[int, Ticket | Group] = {}  # id() -> what is not settled yet
        self._parked: collections.deque[Parked] = collections.deque()
        self._abandoned = False
        self.lost = 0  # messages given up without being settled (see `lose`)
        self.on_ready: Ready = _unset
        self.on_parked: Callable[[], None] = _nothing  # the engine learns of new retries

    # -- taking messages -------------------------------------------------------------------------
    def open(self, source: Source, msg: InMessage, parked: Parked | None = None) -> Ticket:
        """A ticket for one message taken now (pending: its handler call), or taken again
        from the parked ones (in flight already)."""
        ticket = Ticket(source, msg, attempts=0 if parked is None else parked.attempts)
        with self._lock:
            self._in_flight += parked is None
            self._open[id(ticket)] = ticket
        return ticket

    def open_all(self, source: Source, msgs: Sequence[InMessage]) -> list[Ticket]:
        """`open` for each of `msgs`, taken now: one lock for all."""
        now = time.perf_counter()
        tickets = [Ticket(source, msg, None, now) for msg in msgs]
        with self._lock:
            self._in_flight += len(tickets)
            for ticket in tickets:
                self._open[id(ticket)] = ticket
        return tickets

    def open_group(
        self,
        source: Source,
        msgs: Sequence[InMessage],
        attempts: Mapping[int, int] | None = None,
    ) -> Group:
        """A group of messages taken now, in order; with `attempts` (index -> failed attempts),
        messages taken again from the parked ones (in flight already)."""
        group = Group(source, msgs, time.perf_counter(), attempts)
        with self._lock:
            self._in_flight += 0 if attempts is not None else len(msgs)
            self._open[id(group)] = group
        return group

    def ticket(self, group: Group, index: int) -> Ticket:
        """The ticket of message `index` of `group`, made on first use."""
        ticket = group.tickets.get(index)
        if ticket is None:
            with self._lock:
                ticket = group.tickets.get(index)
                if ticket is None:
                    ticket = group.tickets[index] = Ticket(
                        group.source,
                        group.msgs[index],
                        group,
                        group.began,
                        group.attempts.get(index, 0),
                    )
                    ticket.settled = group.settled  # made late: nothing waits for its sends
        return ticket

    # -- sends and failures --------------------------------------------------------------------
    def hold(self, ticket: Ticket) -> bool:
        """A send of `ticket` begins: its settling waits for the receipt. False once settled."""
        with self._lock:
            if ticket.settled:
                return False
            if ticket.group is not None:
                ticket.group.issued += 1
            else:
                ticket.pending += 1
            return True

    def release(self, ticket: Ticket, error: BaseException | None = None) -> None:
        """One part of `ticket` is done (its handler, or a held send); any thread."""
        with self._lock:
            if error is not None and ticket.error is None:
                ticket.error = error
            group = ticket.group
            if group is not None:
                group.done += 1
                return
            ticket.pending -= 1
            ready = ticket.pending == 0 and not ticket.settled
            if ready:
                ticket.settled = True
        if ready:
            self.on_ready([ticket])

    def release_all(
        self, tickets: Sequence[Ticket | None], errors: Mapping[int, Exception]
    ) -> None:
        """`release` for the tickets of one output batch (None: untracked), with the errors by
        position; the ones that became ready are handed on together."""
        ready: list[Ticket] = []
        with self._lock:
            for position, ticket in enumerate(tickets):
                if ticket is None:
                    continue
                error = errors.get(position)
                if error is not None and ticket.error is None:
                    ticket.error = error
                ticket.pending -= 1
                if ticket.pending == 0 and not ticket.settled:
                    ticket.settled = True
                    ready.append(ticket)
        if ready:
            self.on_ready(ready)

    def fail(self, ticket: Ticket, error: BaseException) -> bool:
        """Record that `ticket` failed; True if this is its first error (the one that counts)."""
        with self._lock:
            if ticket.error is not None:
                return False
            ticket.error = error
            return True

    def acknowledged(self, ticket: Ticket) -> bool:
        """`context.ack()` of `ticket`: True the first time."""
        with self._lock:
            if ticket.acked:
                return False
            ticket.acked = True
            return True

    def issued(self, group: Group) -> None:
        """One more tracked send of the group (an output batch)."""
        with self._lock:
            group.issued += 1

    def receipt(self, group: Group, errors: Mapping[int, Exception]) -> None:
        """The receipt of one output batch of `group`, with the failed message indexes."""
        with self._lock:
            for index, error in errors.items():
                group.send_errors.setdefault(index, error)
            group.done += 1

    # -- local retries ---------------------------------------------------------------------------
    def park(self, parked: Iterable[Parked], *, front: bool = False) -> None:
        """Keep failed messages (still in flight) to be tried again once due, in order; with
        `front`, ahead of those parked before (in order: they come earlier in the input)."""
        items = list(parked)
        if not items:
            return
        with self._lock:
            if front:
                self._parked.extendleft(reversed(items))
            else:
                self._parked.extend(items)
            self._idle.notify_all()  # `wait_quiet` counts parked messages as done
        self.on_parked()

    def due(
        self, source: Source, now: float, limit: int, *, in_order: bool = False
    ) -> list[Parked]:
        """Parked messages of `source` that are due, oldest first (at most `limit`); in order:
        only from the first on, while they are due (nothing overtakes a message not due)."""
        with self._lock:
            if not self._parked:
                return []
            taken: list[Parked] = []
            for parked in self._parked:
                if parked.source is not source:
                    continue
                if parked.due > now:
                    if in_order:
                        break
                    continue
                taken.append(parked)
                if len(taken) >= limit:
                    break
            if taken:
                ids = {id(p) for p in taken}
                self._parked = collections.deque(p for p in self._parked if id(p) not in ids)
            return taken

    def parked(self, source: Source | None = None) -> int:
        """How many messages (of `source`) are parked."""
        with self._lock:
            return sum(1 for p in self._parked if source is None or p.source is source)

    def next_due(self, source: Source, *, in_order: bool = False) -> float | None:
        """When the next parked message of `source` is due (None: nothing parked); in order,
        the first one's time, which nothing behind it overtakes."""
        with self._lock:
            dues = (p.due for p in self._parked if p.source is source)
            if in_order:
                return next(dues, None)
            return min(dues, default=None)

    # -- settling ----------------------------------------------------------------------------------
    def claim(self, tickets: Iterable[Ticket]) -> list[Ticket]:
        """Of these ready tickets, the ones still to settle (none after `abandon`)."""
        with self._lock:
            if self._abandoned:
                return []
            claimed = []
            for ticket in tickets:
                if self._open.pop(id(ticket), None) is not None:
                    ticket.settled = True
                    claimed.append(ticket)
            return claimed

    def claim_group(self, group: Group) -> bool:
        """Settling of `group` begins; False if it was settled or abandoned already."""
        with self._lock:
            if self._abandoned or self._open.pop(id(group), None) is None:
                return False
            group.settled = True
            for ticket in group.tickets.values():
                ticket.settled = True
            return True

    def reopen(self, group: Group) -> None:
        """A settled group's messages are processed again: in flight as a group once more."""
        with self._lock:
            group.settled = False
            self._open[id(group)] = group

    def lose(self, count: int) -> None:
        """`count` messages leave flight unsettled (a stop gave them up): `run` reports it."""
        with self._lock:
            self.lost += count
        self.finished(count)

    def finished(self, count: int = 1) -> None:
        """`count` messages were settled: out of flight."""
        with self._idle:
            self._in_flight -= count
            self._idle.notify_all()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def wait_room(self, limit: int, timeout_s: float) -> bool:
        """Wait until fewer than `limit` messages are in flight; False after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight >= limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def wait_idle(self, deadline: float) -> bool:
        """Wait until nothing is in flight, or the monotonic `deadline`; True if idle."""
        with self._idle:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    def wait_quiet(self, deadline: float) -> bool:
        """Wait until every message in flight is parked (waiting for a retry, nothing being
        processed or sent), or the monotonic `deadline`; True if quiet. A reload swaps the
        handler then, and the next engine takes the parked ones over."""
        with self._idle:
            while self._in_flight > len(self._parked):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    def abandon(self) -> list[tuple[Source, InMessage]]:
        """Give up everything not settled yet (the stop deadline passed): from now on nothing
        is settled here. Returns those messages, to be negatively acknowledged."""
        with self._lock:
            self._abandoned = True
            left: list[tuple[Source, InMessage]] = []
            for item in self._open.values():
                if isinstance(item, Group):
                    left += [(item.source, msg) for msg in item.msgs]
                else:
                    left.append((item.source, item.msg))
            left += [(p.source, p.msg) for p in self._parked]
            self._open.clear()
            self._parked.clear()
            return left


def _unset(tickets: list[Ticket]) -> None:
    raise AssertionError("Tracker.on_ready is not set: the engine hands ready tickets on")


def _nothing() -> None:
    """No engine listens for new retries: its threads look for due ones themselves."""
