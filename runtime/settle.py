"""Settling a processed message: ack, retry, or the dead-letter topic; never on the client's thread.

The processing guarantee's policy lives here, apart from how engines pick and process messages:

    success   ack (ATLEAST_ONCE, EFFECTIVELY_ONCE); ATMOST_ONCE acked on receipt; MANUAL leaves
              it to context.ack()
    failure   after --max-message-retries retries: to the dead-letter topic with the reason,
              acknowledged only once that send is persisted (its copies meanwhile are left
              alone); before that, retried:
                - by the broker: negatively acknowledged, redelivered after the delay;
                - here ("parked", `tracker.py`), when the broker cannot redeliver it (a
                  non-persistent topic drops a nacked message) or when order must hold across
                  the retry (--retain-ordering, EFFECTIVELY_ONCE: `in_order`)
              ATMOST_ONCE, or a message the function acknowledged itself, is not retried: a
              copy goes to the dead-letter topic when one is configured
    copies    what the broker redelivers of what was settled here is acknowledged on arrival
              (`redelivery.py`)

Engines call `settle_group` / `settle` on their own thread (a batch engine's thread, the event
loop). The outcome of a dead-letter send arrives on the Pulsar client's IO thread, which only
hands it to this settler's own thread (`pf-settle`), where the ack or nack is made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.errors import PayloadError
from pulsarfunc.runtime.handoff import Handoff
from pulsarfunc.runtime.metrics import Metrics
from pulsarfunc.runtime.naming import dead_letter_topic
from pulsarfunc.runtime.redelivery import QUIET_S, Redeliveries, Seen, non_persistent
from pulsarfunc.runtime.tracker import Group, Parked, Ticket, Tracker
from pulsarfunc.runtime.transport import Broker, InMessage, OutMessage, Source

_log = logging.getLogger("pulsarfunc.instance")

_ERROR_LABEL_MAX = 200  # characters of an exception's text kept as a metric label
ACKED_ON_SUCCESS = (ProcessingGuarantee.ATLEAST_ONCE, ProcessingGuarantee.EFFECTIVELY_ONCE)


def error_reason(error: BaseException) -> str:
    """`Type: first line of the message`, short enough for a log line or a property."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:1000]


def dead_letter_message(
    msg: InMessage, error: BaseException, attempts: int, topic: str, fqfn: str
) -> OutMessage:
    """The failed message as it goes to the dead-letter topic, with properties saying why."""
    props = {
        **msg.properties(),
        "REAL_TOPIC": msg.topic_name(),  # the names Pulsar's own dead-letter policy uses
        "ORIGIN_MESSAGE_ID": str(msg.message_id()),
        "pulsarfunc.error.type": type(error).__name__,
        "pulsarfunc.error.message": str(error)[:2000],
        "pulsarfunc.attempts": str(attempts),
        "pulsarfunc.function": fqfn,
    }
    return OutMessage(topic, msg.data(), msg.partition_key() or None, props)


def dead_letter_topics(config: FunctionConfig) -> list[str]:
    """The dead-letter topics known at start (regex inputs add theirs when first used)."""
    if config.dead_letter_topic:
        return [config.dead_letter_topic]
    if config.max_message_retries is None:
        return []
    topics = [dead_letter_topic(s.topic, config.subscription_name) for s in config.inputs]
    return list(
        dict.fromkeys(t for t, s in zip(topics, config.inputs, strict=True) if not s.is_regex)
    )


class Settler:
    """Settles messages for one instance; see the module docstring."""

    def __init__(
        self,
        config: FunctionConfig,
        broker: Broker,
        metrics: Metrics,
        tracker: Tracker,
        *,
        in_order: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.broker = broker
        self.metrics = metrics
        self.tracker = tracker
        self.in_order = in_order  # failures are retried here, before anything after them
        self.redeliveries = Redeliveries(quiet_s=max(QUIET_S, config.redelivery_delay_ms / 100))
        self._guarantee = config.processing_guarantee
        self._acks = self._guarantee in ACKED_ON_SUCCESS
        self._clock = clock
        self._outcomes = Handoff("pf-settle")  # dead-letter outcomes, off the client's thread
        self._sending = threading.Condition()
        self._in_flight_letters: dict[int, int] = {}  # id(source) -> dead-letter sends pending

    def close(self) -> None:
        """Stop the settler's thread once what it was handed is done."""
        self._outcomes.close()

    # -- failures ------------------------------------------------------------------------------
    def fail(self, ticket: Ticket, error: BaseException, *, user: bool | None = None) -> None:
        """Record that `ticket` failed (its first error counts); it is settled later."""
        if not self.tracker.fail(ticket, error):
            return
        ticket.counted = True
        self._count(ticket.msg, error, user)

    def _count(self, msg: InMessage, error: BaseException, user: bool | None) -> None:
        if user is None:
            user = not isinstance(error, PayloadError)
        text = str(error)[:_ERROR_LABEL_MAX]
        if user:
            self.metrics.note_user_exception(text)
        else:
            self.metrics.note_system_exception(text)
        _log.warning(
            "message %s from %s failed: %s",
            msg.message_id(),
            msg.topic_name(),
            error_reason(error),
            exc_info=error if self.config.debug else None,
        )

    # -- received copies -------------------------------------------------------------------------
    def drop_copies(self, source: Source, batch: Sequence[InMessage]) -> Sequence[InMessage]:
        """The messages of `batch` to process: copies of what was settled here are
        acknowledged, copies of what is being dead-lettered are left for its outcome."""
        redeliveries = self.redeliveries
        if not redeliveries.watching:
            return batch
        fresh: list[InMessage] = []
        copies = 0
        for msg in batch:
            seen = redeliveries.seen(msg)
            if seen is Seen.FRESH:
                fresh.append(msg)
                continue
            copies += 1
            if seen is Seen.COPY:
                source.ack(msg)
        if copies:
            self.metrics.note_copies_skipped(copies)
            _log.debug("%d redelivered copies not processed again", copies)
        return fresh

    # -- settling ------------------------------------------------------------------------------
    def settle_group(self, group: Group) -> list[Parked]:
        """Settle a batch engine's group whose sends all have their receipts; returns the
        messages parked to be tried again here (in order).

        Without a failure, under a guarantee that acks on success, the group is acknowledged
        in one call and counted in one metrics update. In order, the first failure parks
        every message after it as well: nothing after a failed message is acknowledged before
        it succeeds.
        """
        if not self.tracker.claim_group(group):
            return []
        msgs = group.msgs
        failed = group.error is not None or bool(group.send_errors)
        if not failed:
            failed = any(t.error is not None for t in group.tickets.values())
        if not failed and self._acks and not self.redeliveries.failing:
            try:
                group.source.ack_all(msgs)
            except Exception:
                _log.exception("cannot acknowledge %d messages", len(msgs))
            self.redeliveries.settled(msgs)
            self.metrics.note_processed_many(
                len(msgs), (time.perf_counter() - group.began) * 1000.0 * len(msgs)
            )
            self.tracker.finished(len(msgs))
            return []
        tickets = [self.tracker.ticket(group, index) for index in range(len(msgs))]
        for index, ticket in enumerate(tickets):
            send_error = group.send_errors.get(index) or group.error
            if send_error is not None and ticket.error is None:
                self.fail(ticket, send_error, user=False)
        if not self.in_order:
            return self._settle_each(tickets)
        while tickets:  # in order: nothing after a failed message is settled before it
            first = next((i for i, t in enumerate(tickets) if t.error is not None), len(tickets))
            parked = self._settle_each(tickets[: first + 1])
            bad, tickets = tickets[first : first + 1], tickets[first + 1 :]
            if parked or (bad and self.dead_letters_in_flight(bad[0].source)):
                # retried here, or its dead letter may fail: what follows waits behind it
                return parked + [Parked(t.source, t.msg, t.attempts, 0.0) for t in tickets]
        return []

    def settle(self, tickets: Sequence[Ticket]) -> list[Parked]:
        """Settle ready tickets (the async engine); returns the ones to retry here."""
        return self._settle_each(self.tracker.claim(tickets))

    def _settle_each(self, tickets: Sequence[Ticket]) -> list[Parked]:
        """Settle claimed tickets; the ones to retry here are returned (for the engine to
        park: it knows where), still in flight."""
        parked: list[Parked] = []
        acked: list[InMessage] = []
        succeeded = 0
        latency_s = 0.0
        now = time.perf_counter()
        done = 0  # out of flight now: all but the parked and those whose dead letter is sent
        for ticket in tickets:
            error = ticket.error
            if error is None:
                succeeded += 1
                latency_s += now - ticket.started
                done += 1
                if self._acks:
                    try:
                        ticket.source.ack(ticket.msg)
                    except Exception:
                        _log.exception("cannot acknowledge message %s", ticket.msg.message_id())
                        continue
                    acked.append(ticket.msg)
                continue
            if not ticket.counted:  # a failed send, recorded on the client's thread
                ticket.counted = True
                self._count(ticket.msg, error, user=False)
            try:
                outcome = self._settle_failure(ticket, error)
            except Exception:
                _log.exception("cannot settle message %s", ticket.msg.message_id())
                outcome = None
            if isinstance(outcome, Parked):
                parked.append(outcome)
            elif outcome is not _SENDING:
                done += 1
        if acked:
            self.redeliveries.settled(acked)
        if succeeded:
            self.metrics.note_processed_many(succeeded, latency_s * 1000.0)
        if done:
            self.tracker.finished(done)
        return parked

    def _settle_failure(self, ticket: Ticket, error: BaseException) -> Parked | object | None:
        """Retry, dead-letter or drop one failed message: a Parked when it is retried here,
        _SENDING while its dead letter is in flight (it is finished on the outcome)."""
        msg = ticket.msg
        if self._guarantee is ProcessingGuarantee.ATMOST_ONCE or ticket.acked:
            # Acknowledged already: no retry. Keep a copy if a dead-letter topic is set.
            if self.config.dead_letter_topic:
                return self._dead_letter(ticket, error, ticket.attempts + 1, ack=False)
            return None
        if self.redeliveries.seen(msg) is Seen.COPY:
            ticket.source.ack(msg)  # a copy redelivered with its batch: already handled
            return None
        local = self.in_order or non_persistent(msg)
        if local:
            attempts = max(ticket.attempts + 1, msg.redelivery_count() + 1)
        else:
            attempts = self.redeliveries.attempt(msg)
        limit = self.config.max_message_retries
        if limit is not None and attempts > limit:
            return self._dead_letter(ticket, error, attempts, ack=True)
        if local:
            return Parked(ticket.source, msg, attempts, self._due())
        ticket.source.nack(msg)
        return None

    def _due(self) -> float:
        return self._clock() + self.config.redelivery_delay_ms / 1000.0

    def give_back(self, source: Source) -> None:
        """The parked messages of `source`, not tried again (the instance stops): negatively
        acknowledged, so the broker gives them to the next consumer. A non-persistent topic
        keeps nothing: such a message is lost, as the topic would lose it; the log says so
        and the stop reports that not everything was settled."""
        parked = self.tracker.due(source, float("inf"), 1 << 62)
        lost = 0
        for item in parked:
            if non_persistent(item.msg):
                lost += 1
            else:
                item.source.nack(item.msg)
        if lost:
            _log.warning(
                "%d failed messages of non-persistent topics not retried before the stop", lost
            )
            self.tracker.lose(lost)
        if len(parked) > lost:
            self.tracker.finished(len(parked) - lost)

    # -- dead letters ----------------------------------------------------------------------------
    def dead_letters_in_flight(self, source: Source) -> int:
        """Dead-letter sends of `source`'s messages whose outcome is not in yet."""
        with self._sending:
            return self._in_flight_letters.get(id(source), 0)

    def wait_dead_letters(self, source: Source, timeout_s: float) -> bool:
        """Wait until no dead-letter send of `source` is in flight; False after `timeout_s`."""
        with self._sending:
            return self._sending.wait_for(
                lambda: not self._in_flight_letters.get(id(source)), timeout_s
            )

    def _dead_letter(
        self, ticket: Ticket, error: BaseException, attempts: int, *, ack: bool
    ) -> object:
        """Send `ticket`'s message to the dead-letter topic; with `ack`, acknowledge it once
        that send is persisted. Returns _SENDING: the message is finished on the outcome."""
        msg, source = ticket.msg, ticket.source
        topic = self.config.dead_letter_topic or dead_letter_topic(
            msg.topic_name(), self.config.subscription_name
        )
        out = dead_letter_message(msg, error, attempts, topic, self.config.fqfn)
        if ack:
            self.redeliveries.dead_lettering(msg)
        with self._sending:
            self._in_flight_letters[id(source)] = self._in_flight_letters.get(id(source), 0) + 1

        def sent(send_error: Exception | None) -> None:  # the client's IO thread: hand off
            self._outcomes(
                lambda: self._dead_lettered(source, msg, topic, attempts, send_error, ack)
            )

        self.broker.send(out, sent)
        return _SENDING

    def _dead_lettered(
        self,
        source: Source,
        msg: InMessage,
        topic: str,
        attempts: int,
        send_error: Exception | None,
        ack: bool,
    ) -> None:
        """The outcome of a dead-letter send, on the settler's thread."""
        try:
            if send_error is None:
                if ack:
                    self.redeliveries.dead_lettered(msg, persisted=True)
                    source.ack(msg)
                self.metrics.note_dead_lettered()
                _log.warning(
                    "message %s dead-lettered to %s after %d attempts",
                    msg.message_id(),
                    topic,
                    attempts,
                )
                self.tracker.finished(1)
                return
            _log.error("dead-letter send to %s failed: %s", topic, send_error)
            if not ack:
                self.tracker.finished(1)
                return
            self.redeliveries.dead_lettered(msg, persisted=False)
            if self.in_order or non_persistent(msg):  # the broker cannot bring it back: keep it
                retry = Parked(source, msg, attempts - 1, self._due())
                self.tracker.park([retry], front=self.in_order)
                return
            source.nack(msg)  # processed again on redelivery
            self.tracker.finished(1)
        finally:
            with self._sending:
                self._in_flight_letters[id(source)] -= 1
                self._sending.notify_all()


_SENDING = object()  # a failed message whose dead-letter send is in flight
