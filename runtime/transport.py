"""The seam between the instance loop and Pulsar: what the core needs from a broker, nothing more.

`pulsarfunc.runtime.broker` implements it with pulsar-client; unit tests implement it in memory.
Received messages are used through the same method names pulsar-client's `Message` has, so the
real client's messages cross the seam without being copied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol


class MessageId(Protocol):
    """A broker message id; opaque except for what effectively-once needs."""

    def ledger_id(self) -> int: ...

    def entry_id(self) -> int: ...

    def partition(self) -> int: ...

    def batch_index(self) -> int: ...

    def serialize(self) -> bytes: ...


class InMessage(Protocol):
    """A received message (the subset of pulsar-client's `Message` the runtime reads)."""

    def data(self) -> bytes: ...

    def partition_key(self) -> str: ...

    def ordering_key(self) -> str: ...

    def properties(self) -> dict[str, str]: ...

    def event_timestamp(self) -> int: ...

    def publish_timestamp(self) -> int: ...

    def topic_name(self) -> str: ...

    def message_id(self) -> MessageId: ...

    def redelivery_count(self) -> int: ...


class Source(Protocol):
    """One subscription's consumer: acknowledgements go back to the consumer that received."""

    topic: str | None
    """The topic every message of this source comes from, once known (a source of one
    non-partitioned topic); None: each message's `topic_name()` tells."""

    def ack(self, message: InMessage) -> None: ...

    def ack_all(self, messages: Sequence[InMessage]) -> None:
        """Acknowledge each of `messages` (one call per batch on the hot path)."""
        ...

    def nack(self, message: InMessage) -> None: ...


SendCallback = Callable[[Exception | None], None]
"""Called once a send is persisted (None) or has failed (the error); from any thread."""

BatchCallback = Callable[[Mapping[int, Exception]], None]
"""Called once every message of a `send_batch` is persisted or failed, with the errors of
those that failed by position (empty: all persisted); from any thread."""


class OutMessage(NamedTuple):
    """One message to produce (a tuple: built once per output on the hot path)."""

    topic: str
    payload: bytes
    key: str | None = None
    properties: Mapping[str, str] | None = None
    event_timestamp: int | None = None
    sequence_id: int | None = None  # effectively-once: broker-side dedup id
    producer_name: str | None = None  # effectively-once: one named producer per input


class Broker(Protocol):
    """What an instance does with Pulsar. Every method may be called from any thread."""

    @property
    def sources(self) -> Sequence[Source]:
        """The consumers, one per subscribed input group."""
        ...

    def receive(self, source: Source, max_messages: int, timeout_ms: int) -> Sequence[InMessage]:
        """Up to max_messages from one source; waits at most timeout_ms for the first."""
        ...

    def open_producer(self, topic: str) -> None:
        """Create the producer for `topic` now (at start); BrokerError with the broker's reason
        when it refuses (no such topic and no auto-creation, not authorized, ...)."""
        ...

    def send(self, message: OutMessage, callback: SendCallback) -> None:
        """Queue a message for sending; never waits for the broker round trip."""
        ...

    def send_batch(self, messages: Sequence[OutMessage], callback: BatchCallback) -> None:
        """Queue messages, all for one producer (the first's topic and producer_name), in
        order; call back once when every one is persisted or failed. Never waits.

        The cheap way to send many: a receipt per message means a callback per message on the
        client's IO thread, the largest cost per message in a Python client. A producer
        completes its sends in order, and a failure after the call (connection, fencing,
        termination) fails every later pending send too, so the receipt of the last message
        stands for those before it; a failed last receipt is reported for every message.
        """
        ...

    def flush(self) -> None:
        """Wait until every queued message is sent."""
        ...

    def connected(self) -> bool:
        """Every consumer and producer currently has a connection to its broker (readiness)."""
        ...

    def close(self) -> None:
        """Close consumers, producers and the client."""
        ...
