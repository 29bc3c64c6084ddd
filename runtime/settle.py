"""Settling a processed message: ack, nack for a retry, or the dead-letter topic, then ack.

The policy of the processing guarantee lives here, apart from how messages are received and
processed (`instance.py`): success acks (at-least-once, effectively-once); a failure nacks
until `--max-message-retries` is used up, then the message goes to the dead-letter topic with
the reason and only then is acked; copies the broker redelivers of what was settled are acked
on arrival (`redelivery.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.errors import PayloadError
from pulsarfunc.runtime.metrics import Metrics
from pulsarfunc.runtime.naming import dead_letter_topic
from pulsarfunc.runtime.redelivery import Redeliveries
from pulsarfunc.runtime.transport import Broker, InMessage, OutMessage, Source
from pulsarfunc.runtime.work import Work, error_reason

_log = logging.getLogger("pulsarfunc.instance")

_ERROR_LABEL_MAX = 200  # characters of an exception's text kept as a metric label
ACKED_ON_SUCCESS = (ProcessingGuarantee.ATLEAST_ONCE, ProcessingGuarantee.EFFECTIVELY_ONCE)


def dead_letter_message(
    msg: InMessage, error: BaseException, attempts: int, topic: str, fqfn: str
) -> OutMessage:
    """The failed message as it goes to the dead-letter topic, with properties saying why."""
    msg_id = str(msg.message_id())
    props = {
        **msg.properties(),
        "REAL_TOPIC": msg.topic_name(),  # the names Pulsar's own dead-letter policy uses
        "ORIGIN_MESSAGE_ID": msg_id,
        "pulsarfunc.error.type": type(error).__name__,
        "pulsarfunc.error.message": str(error)[:2000],
        "pulsarfunc.attempts": str(attempts),
        "pulsarfunc.function": fqfn,
    }
    return OutMessage(topic, msg.data(), msg.partition_key() or None, props)


class Settler:
    """Settles messages for one instance; every method may be called from any thread."""

    def __init__(self, config: FunctionConfig, broker: Broker, metrics: Metrics) -> None:
        self.config = config
        self.broker = broker
        self.metrics = metrics
        self.redeliveries = Redeliveries()
        self._guarantee = config.processing_guarantee
        self._lock = threading.Lock()

    def fail(self, work: Work, error: BaseException, *, user: bool | None = None) -> None:
        """Record that `work` failed (the first error counts); it is settled later."""
        if user is None:
            user = not isinstance(error, PayloadError)
        text = str(error)[:_ERROR_LABEL_MAX]
        if user:
            self.metrics.note_user_exception(text)
        else:
            self.metrics.note_system_exception(text)
        with self._lock:
            if work.error is None:
                work.error = error
        _log.warning(
            "message %s from %s failed: %s",
            work.msg.message_id(),
            work.msg.topic_name(),
            error_reason(error),
            exc_info=error if self.config.debug else None,
        )

    def drop_copies(self, source: Source, batch: Sequence[InMessage]) -> Sequence[InMessage]:
        """Acknowledge copies of messages already settled here (a nacked message's batch comes
        back whole unless the broker acks batch indexes); the rest go on to be processed."""
        if not self.redeliveries.watching:
            return batch
        fresh: list[InMessage] = []
        copies: list[InMessage] = []
        for msg in batch:
            (copies if self.redeliveries.is_copy(msg) else fresh).append(msg)
        for msg in copies:
            source.ack(msg)
        if copies:
            self.metrics.note_copies_skipped(len(copies))
            _log.debug("acknowledged %d redelivered copies without processing", len(copies))
        return fresh

    def settle(self, work: Work) -> None:
        """Ack, nack or dead-letter a message whose handler and sends are all done."""
        work.settled = True
        try:
            if work.error is None:
                self._succeed(work)
            else:
                self._settle_failure(work, work.error)
        except Exception:
            _log.exception("cannot settle message %s", work.msg.message_id())

    def settle_all(self, works: list[Work]) -> None:
        """Settle a batch: successes acked in one pass and counted in one metrics update."""
        if self.redeliveries.failing or self._guarantee not in ACKED_ON_SUCCESS:
            for work in works:
                self.settle(work)
            return
        now = time.perf_counter()
        succeeded = 0
        total_s = 0.0
        for work in works:
            if work.error is not None:
                self.settle(work)
                continue
            work.settled = True
            try:
                work.source.ack(work.msg)
            except Exception:
                _log.exception("cannot acknowledge message %s", work.msg.message_id())
                continue
            succeeded += 1
            total_s += now - work.started
        self.redeliveries.settled([w.msg for w in works if w.error is None])
        if succeeded:
            self.metrics.note_processed_many(succeeded, total_s * 1000.0)

    def settle_group(
        self, source: Source, msgs: Sequence[InMessage], works: dict[int, Work], began: float
    ) -> None:
        """Settle a batch-mode group, whose Works exist only for some messages (`works`).

        Without a failure, under a guarantee that acks on success, the whole group is
        acknowledged in one call; anything else goes through `settle_all` message by message.
        """
        if (
            self.redeliveries.failing
            or self._guarantee not in ACKED_ON_SUCCESS
            or any(work.error is not None for work in works.values())
        ):
            self.settle_all(
                [works.get(i) or Work(source, msg, None, began) for i, msg in enumerate(msgs)]
            )
            return
        for work in works.values():
            work.settled = True
        try:
            source.ack_all(msgs)
        except Exception:
            _log.exception("cannot acknowledge %d messages", len(msgs))
            return
        self.redeliveries.settled(msgs)
        self.metrics.note_processed_many(
            len(msgs), (time.perf_counter() - began) * 1000.0 * len(msgs)
        )

    def _succeed(self, work: Work) -> None:
        self.metrics.note_processed((time.perf_counter() - work.started) * 1000.0)
        if self._guarantee in ACKED_ON_SUCCESS:
            work.source.ack(work.msg)
            self.redeliveries.settled((work.msg,))

    def _settle_failure(self, work: Work, error: BaseException) -> None:
        if self._guarantee is ProcessingGuarantee.ATMOST_ONCE or work.acked:
            # Already acknowledged: no retry. Keep the message if a dead-letter topic is set.
            if self.config.dead_letter_topic:
                self._dead_letter(work, error, 1, ack=False)
            return
        if self.redeliveries.is_dead_lettered(work.msg):
            work.source.ack(work.msg)  # a copy redelivered with its batch: already handled
            return
        attempts = self.redeliveries.attempt(work.msg)
        limit = self.config.max_message_retries
        if limit is None or attempts <= limit:
            work.source.nack(work.msg)
            return
        self._dead_letter(work, error, attempts, ack=True)

    def _dead_letter(self, work: Work, error: BaseException, attempts: int, *, ack: bool) -> None:
        msg = work.msg
        if ack:
            self.redeliveries.dead_lettered(msg)
        topic = self.config.dead_letter_topic or dead_letter_topic(
            msg.topic_name(), self.config.subscription_name
        )
        out = dead_letter_message(msg, error, attempts, topic, self.config.fqfn)

        def done(send_error: Exception | None) -> None:
            if send_error is None:
                self.metrics.note_dead_lettered()
                if ack:
                    work.source.ack(msg)
                _log.warning(
                    "message %s dead-lettered to %s after %d attempts",
                    msg.message_id(),
                    topic,
                    attempts,
                )
            else:
                _log.error("dead-letter send to %s failed: %s", topic, send_error)
                if ack:
                    self.redeliveries.dead_lettered(msg, done=False)
                    work.source.nack(msg)  # try again on redelivery

        self.broker.send(out, done)
