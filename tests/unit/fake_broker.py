"""An in-memory Broker for unit tests of the instance loop (never used in integration tests)."""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pulsarfunc.runtime.errors import BrokerError
from pulsarfunc.runtime.transport import (
    BatchCallback,
    InMessage,
    OutMessage,
    SendCallback,
    Source,
)

_ids = itertools.count(1)
IO_THREAD = "fake-client-io"  # the thread receipts come on, as the client's IO thread


@dataclass(frozen=True)
class FakeId:
    ledger: int
    entry: int
    batch: int = -1

    def ledger_id(self) -> int:
        return self.ledger

    def entry_id(self) -> int:
        return self.entry

    def partition(self) -> int:
        return -1

    def batch_index(self) -> int:
        return self.batch

    def serialize(self) -> bytes:
        return f"{self.ledger}:{self.entry}:{self.batch}".encode()

    def __str__(self) -> str:
        return f"({self.ledger},{self.entry},-1,{self.batch})"


@dataclass
class FakeMessage:
    payload: bytes
    key: str = ""
    props: dict[str, str] = field(default_factory=dict)
    topic: str = "persistent://public/default/in"
    redeliveries: int = 0
    event_ts: int = 0
    mid: FakeId = field(default_factory=lambda: FakeId(7, next(_ids)))
    okey: str = ""  # the ordering key

    def data(self) -> bytes:
        return self.payload

    def partition_key(self) -> str:
        return self.key

    def ordering_key(self) -> str:
        return self.okey

    def properties(self) -> dict[str, str]:
        return dict(self.props)

    def event_timestamp(self) -> int:
        return self.event_ts

    def publish_timestamp(self) -> int:
        return 1

    def topic_name(self) -> str:
        return self.topic

    def message_id(self) -> FakeId:
        return self.mid

    def redelivery_count(self) -> int:
        return self.redeliveries


class FakeSource:
    """A subscription: nacked messages come back with a higher redelivery count.

    With `whole_batches`, a nack brings back every delivered message of the same entry (a
    producer batch), acked siblings included, as a broker without batch-index acks does.
    """

    def __init__(self, *, count_redeliveries: bool = True, whole_batches: bool = False) -> None:
        self.topic: str | None = None  # as a consumer of several topics: each message's
        self.queue: collections.deque[FakeMessage] = collections.deque()
        self.delivered: list[FakeMessage] = []
        self.whole_batches = whole_batches
        self.acked: list[FakeMessage] = []
        self.nacked: list[FakeMessage] = []
        self.count_redeliveries = count_redeliveries
        self.lock = threading.Lock()

    def ack(self, message: InMessage) -> None:
        assert isinstance(message, FakeMessage)
        with self.lock:
            self.acked.append(message)

    def ack_all(self, messages: Sequence[InMessage]) -> None:
        for message in messages:
            self.ack(message)

    def nack(self, message: InMessage) -> None:
        assert isinstance(message, FakeMessage)
        with self.lock:
            self.nacked.append(message)
            entry = (message.mid.ledger, message.mid.entry)
            back = (
                [m for m in self.delivered if (m.mid.ledger, m.mid.entry) == entry]
                if self.whole_batches
                else [message]
            )
            self.delivered = [m for m in self.delivered if m not in back]
            for m in {m.mid: m for m in back}.values():
                self.queue.append(
                    FakeMessage(
                        m.payload,
                        m.key,
                        m.props,
                        m.topic,
                        m.redeliveries + (1 if self.count_redeliveries else 0),
                        m.event_ts,
                        m.mid,
                        m.okey,
                    )
                )


class FakeBroker:
    """Sends succeed (or fail, per `fail_topics`) on a background thread, like the client.

    `held` topics call back only once their event is set; with `dedup`, a named producer's
    message whose sequence id is not above the last one kept is dropped (yet reported sent),
    as a broker with deduplication does.
    """

    def __init__(
        self, sources: int = 1, *, count_redeliveries: bool = True, whole_batches: bool = False
    ) -> None:
        self._sources = [
            FakeSource(count_redeliveries=count_redeliveries, whole_batches=whole_batches)
            for _ in range(sources)
        ]
        self.sent: dict[str, list[OutMessage]] = collections.defaultdict(list)
        self.fail_topics: set[str] = set()
        self.refuse_producers: set[str] = set()  # open_producer raises for these topics
        self.held: dict[str, threading.Event] = {}  # sends to these wait for the event
        self.dedup = False
        self.dropped: list[OutMessage] = []  # dropped as duplicates (dedup)
        self._last_sequence: dict[str | None, int] = {}
        self.producers: list[str] = []  # topics open_producer was called for, in order
        self.receive_limit = 1_000_000  # at most this many messages per receive
        self.disconnected = False
        self.flushed = 0
        self.batches = 0  # send_batch calls
        self.closed = False
        self._lock = threading.Lock()

    @property
    def sources(self) -> Sequence[FakeSource]:
        return self._sources

    def feed(self, *messages: FakeMessage, source: int = 0) -> None:
        with self._sources[source].lock:
            self._sources[source].queue.extend(messages)

    def receive(self, source: Source, max_messages: int, timeout_ms: int) -> Sequence[InMessage]:
        assert isinstance(source, FakeSource)
        with source.lock:
            count = min(max_messages, self.receive_limit, len(source.queue))
            batch = [source.queue.popleft() for _ in range(count)]
            source.delivered.extend(batch)
        if not batch:
            time.sleep(min(timeout_ms, 5) / 1000)
        return batch

    def open_producer(self, topic: str) -> None:
        if topic in self.refuse_producers:
            raise BrokerError(f"cannot produce to {topic}: the broker refused: TopicNotFound")
        self.producers.append(topic)

    def send(self, message: OutMessage, callback: SendCallback) -> None:
        """Record the message; the callback runs on a thread of its own, like the client's."""
        error = (
            RuntimeError(f"send to {message.topic} refused")
            if message.topic in self.fail_topics
            else None
        )
        if error is None:
            with self._lock:
                self._keep(message)
        held = self.held.get(message.topic)

        def call_back() -> None:
            if held is not None:
                held.wait(10)
            callback(error)

        threading.Thread(target=call_back, name=IO_THREAD, daemon=True).start()

    def _keep(self, message: OutMessage) -> None:
        """Record a message as persisted, or as a dropped duplicate (under the lock)."""
        if self.dedup and message.sequence_id is not None:
            last = self._last_sequence.get(message.producer_name, -1)
            if message.sequence_id <= last:
                self.dropped.append(message)
                return
            self._last_sequence[message.producer_name] = message.sequence_id
        self.sent[message.topic].append(message)

    def send_batch(self, messages: Sequence[OutMessage], callback: BatchCallback) -> None:
        """Record the messages; a failing topic fails every one of them, as a producer-wide
        failure does; one callback on a thread of its own (once `held` lets it)."""
        errors: dict[int, Exception] = {}
        with self._lock:
            self.batches += 1
            for position, message in enumerate(messages):
                if message.topic in self.fail_topics:
                    errors[position] = RuntimeError(f"send to {message.topic} refused")
                else:
                    self._keep(message)
        held = self.held.get(messages[0].topic) if messages else None

        def call_back() -> None:
            if held is not None:
                held.wait(10)
            callback(errors)

        threading.Thread(target=call_back, name=IO_THREAD, daemon=True).start()

    def flush(self) -> None:
        self.flushed += 1

    def connected(self) -> bool:
        return not self.disconnected

    def close(self) -> None:
        self.closed = True
