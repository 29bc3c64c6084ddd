"""What every engine shares, and which engine runs a function. One message's way:

    Receiver.take(source)          the consumer's messages; copies of settled ones acknowledged,
                                   ATMOST_ONCE acknowledged on receipt             (settle.py)
    Invoker.call / call_async      decode, the handler with its Context, outputs    (invoke.py)
    Outputs.build                  each output stamped as Pulsar's instance does    (outputs.py)
    Broker.send_batch              to the broker, one receipt per batch             (broker.py)
    Tracker                        where each message stands until settled          (tracker.py)
    Settler                        ack / retry / dead-letter, off the client's thread (settle.py)

Engines differ only in how they pick messages and when they settle them:

    BatchEngine    (engine_batch.py)    sync handlers: threads take groups from the consumer
    OrderedEngine  (engine_ordered.py)  one message after the other where order must survive a
                                        failure (--retain-ordering, EFFECTIVELY_ONCE), and per
                                        key for sync handlers on several threads
    AsyncEngine    (engine_async.py)    async handlers: one event loop, many messages at once
    BatchingEngine (engine_batching.py) batch handlers: groups of whole batches, gathered
                                        within --batch-max-delay-ms, the handler called per batch
                                        (`invoke_batch.py`); in order where order must hold

An engine's `start()` starts its threads; once `core.stopping` is set they stop taking
messages, finish what they took and return (`join`); the instance (`instance.py`) waits for the
tracker to be idle, gives up what is left at the deadline, then `close()`s the engine.
With `core.handover` set too (a reload: `Instance.swap`), another engine goes on with the same
consumer: what was taken is settled or stays parked for it; nothing is given back to the broker.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee, SubscriptionType
from pulsarfunc.runtime.context import FunctionEnv
from pulsarfunc.runtime.handoff import Handoff
from pulsarfunc.runtime.invoke import Invoker
from pulsarfunc.runtime.metrics import Metrics
from pulsarfunc.runtime.outputs import Outputs
from pulsarfunc.runtime.settle import Settler
from pulsarfunc.runtime.tracker import Ticket, Tracker
from pulsarfunc.runtime.transport import Broker, InMessage, OutMessage, Source

_log = logging.getLogger("pulsarfunc.instance")

RECEIVE_TIMEOUT_MS = 100  # how long a receive waits before the engine checks for a stop
BATCH_MAX = 1000  # messages taken from the client per receive
DEFAULT_ASYNC_CONCURRENCY = 16  # chosen by bench/runtime_bench.py: free for trivial handlers


def ordered(config: FunctionConfig) -> bool:
    """Order must hold across failures: one message after the other, retried in place."""
    return (
        config.retain_ordering
        or config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
    )


def keyed(config: FunctionConfig) -> bool:
    """Messages with the same key are processed one after the other, in order."""
    return config.retain_key_ordering or config.subscription_type is SubscriptionType.KEY_SHARED


def effective_concurrency(config: FunctionConfig, is_async: bool) -> int:
    """How many messages the handler works on at once.

    An explicit --concurrency wins, except where input order must be kept (retain-ordering,
    effectively-once): 1. Auto (0) is 16 for async handlers on shared or key-shared
    subscriptions (one event loop: they interleave only at `await`), else 1: a sync handler is
    never called from two threads at once unless asked to, as under Pulsar's own instance.
    """
    if ordered(config):
        return 1
    if config.concurrency > 0:
        return config.concurrency
    shared = config.subscription_type in (SubscriptionType.SHARED, SubscriptionType.KEY_SHARED)
    return DEFAULT_ASYNC_CONCURRENCY if is_async and shared else 1


def ordering_key(msg: InMessage) -> str:
    """The key whose messages stay in order: the ordering key when set (Key_Shared dispatches
    by it), else the partition key."""
    return msg.ordering_key() or msg.partition_key()


class Receiver:
    """Takes messages from the broker for every engine: the same checks on every path."""

    def __init__(self, config: FunctionConfig, broker: Broker, settler: Settler, metrics: Metrics):
        self._broker = broker
        self._settler = settler
        self._metrics = metrics
        self._acks_on_receipt = config.processing_guarantee is ProcessingGuarantee.ATMOST_ONCE

    def take(
        self,
        source: Source,
        limit: int = BATCH_MAX,
        timeout_ms: int = RECEIVE_TIMEOUT_MS,
        *,
        pause_s: float = 0.5,
    ) -> Sequence[InMessage]:
        """Received messages to process (maybe none); after a failed receive, none once
        `pause_s` has passed (an event loop takes with no pause)."""
        try:
            batch = self._broker.receive(source, limit, timeout_ms)
        except Exception as exc:
            self._metrics.note_system_exception()
            _log.warning("receive failed, retrying: %s", exc)
            time.sleep(pause_s)
            return ()
        redeliveries = self._settler.redeliveries
        if not self._broker.connected():
            redeliveries.watch()  # what comes after the reconnect may have been settled here
        if batch:
            batch = self._settler.drop_copies(source, batch)
        if batch:
            self._metrics.note_received(len(batch))
            if self._acks_on_receipt:
                source.ack_all(batch)
        return batch


class Services:
    """What a Context asks of the running instance: publish, ack, metrics."""

    def __init__(self, broker: Broker, tracker: Tracker, metrics: Metrics, tracks: bool) -> None:
        self._broker = broker
        self._tracker = tracker
        self._metrics = metrics
        self._tracks = tracks  # publishes hold the input's settling (not under ATMOST_ONCE)
        # Publish futures complete here, off the client's thread; a thread of their own, so a
        # function's callback that blocks holds up only other publish callbacks.
        self._callbacks = Handoff("pf-callbacks")

    def close(self) -> None:
        self._callbacks.close()

    def publish(
        self,
        ticket: Ticket | None,
        message: OutMessage,
        callback: Callable[[Exception | None], None] | None = None,
    ) -> concurrent.futures.Future[None]:
        """Send `message`; while `ticket` is unsettled, its settling waits for the receipt.

        The future completes, and `callback` is called, when the broker has persisted it (or
        failed), on a thread of the instance: the function's own callbacks never run on the
        client's IO thread, nor hold up the handler or the settling of messages.
        """
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        tracked = ticket is not None and self._tracks and self._tracker.hold(ticket)
        tracker = self._tracker

        def complete(error: Exception | None) -> None:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
            if callback is not None:
                callback(error)

        def sent(error: Exception | None) -> None:  # the client's IO thread: record, hand off
            if tracked:
                assert ticket is not None
                tracker.release(ticket, error)
            self._callbacks(lambda: complete(error))

        self._broker.send(message, sent)
        return future

    def ack(self, ticket: Ticket | None) -> None:
        """`context.ack()`: acknowledge the current message (MANUAL), once; under ATMOST_ONCE
        it was acknowledged on receipt already."""
        if ticket is not None and self._tracker.acknowledged(ticket) and self._tracks:
            ticket.source.ack(ticket.msg)

    def record_metric(self, name: str, value: float) -> None:
        self._metrics.record(name, value)


@dataclass(frozen=True)
class Core:
    """The pieces of one instance every engine works with."""

    config: FunctionConfig
    broker: Broker
    invoker: Invoker
    outputs: Outputs
    tracker: Tracker
    settler: Settler
    receiver: Receiver
    env: FunctionEnv
    metrics: Metrics
    concurrency: int
    stopping: threading.Event
    # Set before `stopping` when another engine takes over this consumer (a reload): the
    # parked retries stay in the tracker, and the consumer's queue is left to the next engine.
    handover: threading.Event = field(default_factory=threading.Event)


class Engine(Protocol):
    """Picks messages, has them processed, settles them."""

    def start(self) -> None:
        """Start taking and processing messages on the engine's own threads."""
        ...

    def join(self, deadline: float) -> bool:
        """Once `core.stopping` is set, the engine takes no more messages and settles what it
        took: wait for that (until the monotonic `deadline`); True if it is done."""
        ...

    def close(self) -> None:
        """Release what the engine holds (its event loop); what runs still is given up."""
        ...

    @property
    def alive(self) -> bool:
        """Every thread of the engine runs."""
        ...
