"""The reference loops of the runtime benchmark (a): pulsar-client alone, no runtime around it.

    batched  the limit: take what the consumer has (up to 1000), send_async each output
             without a callback, flush once, then acknowledge the batch. Still at-least-once:
             a batch is acknowledged only after flush says every send of it is persisted (a
             producer completes in order; a failure fails the later sends and the flush).
             Written on the client's native objects (`_consumer`, `_producer`,
             `_pulsar.MessageBuilder`): the fastest the client allows from Python. A callback
             per send would cost the client's IO thread the GIL for every message: that halves
             the rate here.
    stamped  batched, with the output pulsarfunc and Pulsar's instance produce: the
             `__pfn_input_topic__` and `__pfn_input_msg_id__` properties (base64 message id)
             and the input's key. The same work done by hand: what is left between it and
             pulsarfunc is the runtime's own cost.
    const    stamped, but with constant property values (a topic name and a base64 message
             id of realistic length) and the input's key: the floor for *carrying* the two
             properties, without computing them per message.
    naive    receive one message, send_async its output with a per-message callback that
             acknowledges the input; the loop most people write first.

Both copy the payload and the event time unchanged and run until SIGTERM/SIGINT.
Usage: python limit_loops.py batched|stamped|const|naive SERVICE_URL INPUT OUTPUT SUBSCRIPTION
"""

from __future__ import annotations

import base64
import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import _pulsar
import pulsar

_BATCH_MAX = 1000
_CONST_TOPIC = "persistent://public/default/bench-in-0123abcd"  # as long as the bench's topics
_CONST_MSG_ID = "CJIBEKcNGAAgAQ=="  # a base64 serialized message id of a batched message


def _open(service_url: str, source: str, sink: str, subscription: str) -> tuple[Any, Any, Any]:
    client = pulsar.Client(service_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    consumer = client.subscribe(
        source,
        subscription,
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=1000,
    )
    producer = client.create_producer(
        sink,
        block_if_queue_full=True,
        send_timeout_millis=0,
        batching_enabled=True,
        batching_max_publish_delay_ms=10,
        batching_max_messages=1000,
        max_pending_messages=10000,
    )
    return client, consumer, producer


def batched(
    consumer: Any, producer: Any, stop: threading.Event, stamped: bool = False, const: bool = False
) -> None:
    native_consumer, native_producer = consumer._consumer, producer._producer
    receive, send = native_consumer.receive, native_producer.send_async
    while not stop.is_set():
        try:
            batch = [receive(100)]
        except pulsar.Timeout:
            continue
        while len(batch) < _BATCH_MAX:
            try:
                batch.append(receive(0))
            except pulsar.Timeout:
                break
        for msg in batch:
            builder = _pulsar.MessageBuilder()
            builder.content(msg.data())
            if const:
                builder.property("__pfn_input_topic__", _CONST_TOPIC)
                builder.property("__pfn_input_msg_id__", _CONST_MSG_ID)
                key = msg.partition_key()
                if key:
                    builder.partition_key(key)
            elif stamped:
                builder.property("__pfn_input_topic__", msg.topic_name())
                msg_id = base64.b64encode(msg.message_id().serialize()).decode("ascii")
                builder.property("__pfn_input_msg_id__", msg_id)
                key = msg.partition_key()
                if key:
                    builder.partition_key(key)
            event_time = msg.event_timestamp()
            if event_time:
                builder.event_timestamp(event_time)
            send(builder.build(), None)
        try:
            native_producer.flush()
        except pulsar.PulsarException:  # at-least-once: redeliver the whole batch
            for msg in batch:
                native_consumer.negative_acknowledge(msg)
            continue
        for msg in batch:
            native_consumer.acknowledge(msg)


def naive(consumer: Any, producer: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            msg = consumer.receive(100)
        except pulsar.Timeout:
            continue

        def sent(result: Any, _msg_id: Any, msg: Any = msg) -> None:
            if result == pulsar.Result.Ok:
                consumer.acknowledge(msg)
            else:
                consumer.negative_acknowledge(msg)

        producer.send_async(msg.data(), sent, event_timestamp=msg.event_timestamp() or None)


def main(argv: list[str]) -> None:
    mode, service_url, source, sink, subscription = argv
    loops: dict[str, Callable[[Any, Any, threading.Event], None]] = {
        "batched": batched,
        "stamped": functools.partial(batched, stamped=True),
        "const": functools.partial(batched, const=True),
        "naive": naive,
    }
    loop = loops[mode]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client, consumer, producer = _open(service_url, source, sink, subscription)
    print("ready", flush=True)
    loop(consumer, producer, stop)
    producer.flush()
    client.close()


if __name__ == "__main__":
    main(sys.argv[1:])
