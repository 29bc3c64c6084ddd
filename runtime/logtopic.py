"""`--log-topic`: the function's log records, also published to a Pulsar topic.

One record is one message, as Pulsar's Java instance (`LogAppender`) sends it: the payload is
the formatted message (with the traceback, if any) and the properties carry `loglevel`, `fqn`
(tenant/namespace/name) and `instance`. pulsarfunc adds `logger` and, for a record made while a
message is being processed, `message_id` and `topic` of that message. The event time is the
record's time.

Logging must never slow down or break the function: `emit` only formats the record and puts it
on a bounded queue; a sender thread hands it to the broker seam. A full queue drops the record
(counted, and said on stdout once). Records of the Pulsar client, of this module, and any record
made on the sender thread are not published, so sending never logs itself into a loop.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Protocol

from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.context import current_context
from pulsarfunc.runtime.errors import PulsarFuncError
from pulsarfunc.runtime.transport import OutMessage, SendCallback

__all__ = ["LogTopicHandler", "publishing_logs"]

_log = logging.getLogger("pulsarfunc.logtopic")  # stdout only: never published (see _publishable)

QUEUE_SIZE = 10_000
_CLOSE_TIMEOUT_S = 10.0


class Sender(Protocol):
    """The part of the broker seam the handler uses."""

    def send(self, message: OutMessage, callback: SendCallback) -> None: ...

    def flush(self) -> None: ...


def _publishable(name: str) -> bool:
    """False for the Pulsar client's loggers and this module's: sending them could loop."""
    return not (name == "pulsar" or name.startswith("pulsar.") or name.startswith(_log.name))


class LogTopicHandler(logging.Handler):
    """A logging handler that publishes records to a topic without blocking the caller."""

    def __init__(
        self, sender: Sender, topic: str, fqfn: str, instance_id: int, *, capacity: int = QUEUE_SIZE
    ) -> None:
        super().__init__()
        self.topic = topic
        self._sender = sender
        self._static = {"fqn": fqfn, "instance": str(instance_id)}
        self._queue: queue.Queue[OutMessage | None] = queue.Queue(capacity)
        self._lock = threading.Lock()
        self.dropped = 0  # records not published because the queue was full
        self.failed = 0  # records the broker did not take
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="pf-logtopic", daemon=True)
        self._thread.start()

    def filter(self, record: logging.LogRecord) -> bool:
        if not _publishable(record.name) or threading.get_ident() == self._thread.ident:
            return False
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        if self._closed:
            return
        try:
            message = self._message(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                first = self.dropped == 1
            if first:
                _log.warning("log topic %s: queue full, dropping log records", self.topic)

    def _message(self, record: logging.LogRecord) -> OutMessage:
        properties = {"loglevel": record.levelname, "logger": record.name, **self._static}
        properties.update(_current_message())
        return OutMessage(
            topic=self.topic,
            payload=self.format(record).encode("utf-8", "replace"),
            properties=properties,
            event_timestamp=int(record.created * 1000),
        )

    def _pump(self) -> None:
        while (message := self._queue.get()) is not None:
            try:
                self._sender.send(message, self._sent)
            except Exception as exc:  # the seam reports errors by callback; be safe anyway
                self._sent(exc)

    def _sent(self, error: Exception | None) -> None:
        if error is None:
            return
        with self._lock:
            self.failed += 1
            first = self.failed == 1
        if first:
            _log.warning("log topic %s: cannot publish log records: %s", self.topic, error)

    def close(self) -> None:
        """Stop taking records, send what is queued, and flush it to the broker."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=_CLOSE_TIMEOUT_S)
            self._thread.join(_CLOSE_TIMEOUT_S)
            try:
                self._sender.flush()
            except Exception as exc:
                _log.warning("log topic %s: flush failed: %s", self.topic, exc)
            if self.dropped or self.failed:
                _log.warning(
                    "log topic %s: %d records dropped (queue full), %d not accepted by the broker",
                    self.topic,
                    self.dropped,
                    self.failed,
                )
        super().close()


def _current_message() -> dict[str, str]:
    """message_id and topic of the message being processed, if the record comes from a call."""
    try:
        context = current_context()
        return {"message_id": str(context.message_id), "topic": context.message_topic}
    except PulsarFuncError:
        return {}


@contextlib.contextmanager
def publishing_logs(config: FunctionConfig, sender: Sender) -> Iterator[LogTopicHandler | None]:
    """Publish every log record to --log-topic while the block runs (None when it is not set).

    The handler goes on the root logger, so the function's logger, the user's own loggers and
    the runtime's all reach the topic, at the configured level.
    """
    if not config.log_topic:
        yield None
        return
    handler = LogTopicHandler(sender, config.log_topic, config.fqfn, config.instance_id)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()
