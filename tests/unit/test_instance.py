"""The instance loop on an in-memory broker: settling, retries, dead letters, ordering, drain."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fake_broker import FakeBroker, FakeId, FakeMessage
from flaky import FailsOnce
from waiting import wait_for

from pulsarfunc import Context, current_context
from pulsarfunc.runtime.config import (
    FunctionConfig,
    InputSpec,
    ProcessingGuarantee,
    SubscriptionType,
)
from pulsarfunc.runtime.engine import effective_concurrency
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance

OUT = "persistent://public/default/out"


def make_config(**fields: Any) -> FunctionConfig:
    fields.setdefault("inputs", (InputSpec("persistent://public/default/in"),))
    fields.setdefault("output", OUT)
    fields.setdefault("name", "fn")
    return FunctionConfig(**fields)


@contextmanager
def in_thread(instance: Instance, *, must_drain: bool = True) -> Iterator[Instance]:
    """`instance` running on its own thread; on exit it is stopped, and (`must_drain`) the stop
    must have settled every message in time."""
    drained: list[bool] = []
    thread = threading.Thread(target=lambda: drained.append(instance.run()), daemon=True)
    thread.start()
    try:
        yield instance
    finally:
        instance.stop()
        thread.join(10)
        assert not thread.is_alive()
    if must_drain:
        assert drained == [True]


@contextmanager
def started(handler: Callable[..., Any], broker: FakeBroker, **fields: Any) -> Iterator[Instance]:
    """An instance of `handler` running on its own thread (see `in_thread`)."""
    with in_thread(Instance(make_config(**fields), inspect_handler(handler), broker)) as instance:
        yield instance


def payloads(broker: FakeBroker, topic: str = OUT) -> list[bytes]:
    return [m.payload for m in broker.sent[topic]]


def test_every_output_is_sent_and_its_input_acked_after_the_send() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(f"m{i}".encode()) for i in range(50)))

    def upper(text: str) -> str:
        return text.upper()

    with started(upper, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 50)
    assert sorted(payloads(broker)) == sorted(f"M{i}".encode() for i in range(50))
    assert broker.flushed >= 1  # per batch in batch mode, and once more at the stop


def test_no_output_topic_still_acks() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"x"))
    with started(lambda data: data, broker, output=""):
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    assert broker.sent == {}


def test_none_means_no_output_but_the_input_is_acked() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"keep"), FakeMessage(b"drop"))

    def keep(text: str) -> str | None:
        return None if text == "drop" else text

    with started(keep, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert payloads(broker) == [b"keep"]


def test_a_failed_output_send_fails_the_message() -> None:
    broker = FakeBroker()
    broker.fail_topics.add(OUT)
    broker.feed(FakeMessage(b"x"))
    with started(lambda data: data, broker, max_message_retries=0):
        wait_for(
            lambda: (
                len(broker.sent.get("persistent://public/default/in-public-default-fn-DLQ", []))
                == 1
            )
        )
    assert broker.sources[0].nacked == []


def test_handler_error_is_retried_then_dead_lettered_with_reasons() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"poison", key="k", props={"a": "1"}), FakeMessage(b"fine"))
    calls: list[str] = []

    def picky(text: str) -> str:
        calls.append(text)
        if text == "poison":
            raise ValueError("indigestible")
        return text

    dlq = "persistent://public/default/dead"
    with started(picky, broker, max_message_retries=2, dead_letter_topic=dlq):
        wait_for(lambda: len(broker.sent.get(dlq, [])) == 1)
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert calls.count("poison") == 3
    (letter,) = broker.sent[dlq]
    assert letter.payload == b"poison"
    assert letter.key == "k"
    props = dict(letter.properties or {})
    assert props["a"] == "1"
    assert props["pulsarfunc.error.type"] == "ValueError"
    assert props["pulsarfunc.error.message"] == "indigestible"
    assert props["pulsarfunc.attempts"] == "3"
    assert props["REAL_TOPIC"] == "persistent://public/default/in"
    assert payloads(broker) == [b"fine"]


def test_retries_are_counted_locally_where_the_broker_counts_none() -> None:
    broker = FakeBroker(count_redeliveries=False)  # as failover/exclusive subscriptions do
    broker.feed(FakeMessage(b"bad"))

    def always_fails(data: bytes) -> bytes:
        raise RuntimeError("no")

    dlq = "persistent://public/default/dead"
    with started(always_fails, broker, max_message_retries=1, dead_letter_topic=dlq):
        wait_for(lambda: len(broker.sent.get(dlq, [])) == 1)
    assert len(broker.sources[0].nacked) == 1


def test_undecodable_payload_fails_only_that_message() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"{bad json"), FakeMessage(b'{"n": 2}'))

    def double(doc: dict[str, int]) -> dict[str, int]:
        return {"n": doc["n"] * 2}

    dlq = "persistent://public/default/dead"
    with started(double, broker, max_message_retries=0, dead_letter_topic=dlq) as inst:
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert payloads(broker) == [b'{"n": 4}'] or payloads(broker) == [b'{"n":4}']
    assert broker.sent[dlq][0].payload == b"{bad json"
    assert inst.metrics.snapshot().system_exceptions == 1


def test_at_most_once_acks_before_processing_and_never_retries() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"x"))
    calls = []

    def fails(data: bytes) -> bytes:
        calls.append(data)
        raise RuntimeError("gone")

    with started(fails, broker, processing_guarantee=ProcessingGuarantee.ATMOST_ONCE):
        wait_for(lambda: len(calls) == 1)
        time.sleep(0.05)
    assert len(broker.sources[0].acked) == 1
    assert broker.sources[0].nacked == []


def test_manual_guarantee_leaves_acks_to_the_function() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(str(i).encode()) for i in range(6)))

    def ack_even(ctx: Context, text: str) -> str:
        if int(text) % 2 == 0:
            ctx.ack()
        return text

    with started(ack_even, broker, processing_guarantee=ProcessingGuarantee.MANUAL):
        wait_for(lambda: len(broker.sent.get(OUT, [])) == 6)
    assert sorted(m.payload for m in broker.sources[0].acked) == [b"0", b"2", b"4"]


def test_context_publish_delays_the_ack_until_persisted() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"x"))
    side = "persistent://public/default/side"

    def fanout(ctx: Context, text: str) -> None:
        ctx.publish(side, text + "-side", key="k2", properties={"p": "v"})

    with started(fanout, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    (msg,) = broker.sent[side]
    assert (msg.payload, msg.key, dict(msg.properties or {})) == (b"x-side", "k2", {"p": "v"})


def test_current_context_is_the_message_being_processed() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"a", key="ka"), FakeMessage(b"b", key="kb"))

    def keyed(text: str) -> str:
        return f"{current_context().message_key}={text}"

    with started(keyed, broker, concurrency=4):
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert sorted(payloads(broker)) == [b"ka=a", b"kb=b"]


def test_generator_outputs_all_sent_before_the_ack() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"a b c"))

    def split(text: str) -> Iterator[str]:
        yield from text.split()

    with started(split, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    assert payloads(broker) == [b"a", b"b", b"c"]


def overlap_probe(delay_s: float) -> tuple[Callable[[str], Any], dict[str, int]]:
    """An async echo that waits `delay_s`, and its record of how many calls ran at once."""
    seen = {"running": 0, "peak": 0}

    async def slow(text: str) -> str:
        seen["running"] += 1
        seen["peak"] = max(seen["peak"], seen["running"])
        await asyncio.sleep(delay_s)
        seen["running"] -= 1
        return text

    return slow, seen


def test_async_handler_runs_messages_concurrently() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(f"{i}".encode()) for i in range(20)))
    slow, seen = overlap_probe(0.02)
    with started(slow, broker, concurrency=8):
        wait_for(lambda: len(broker.sources[0].acked) == 20)
    assert seen["peak"] == 8


def test_same_key_never_runs_twice_at_once_with_key_shared() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(f"{i}".encode(), key=f"k{i % 3}") for i in range(30)))
    active: set[str] = set()
    lock = threading.Lock()
    clashes = []
    order: dict[str, list[int]] = {}

    def per_key(ctx: Context, text: str) -> None:
        key = ctx.message_key or ""
        with lock:
            if key in active:
                clashes.append(key)
            active.add(key)
            order.setdefault(key, []).append(int(text))
        time.sleep(0.002)
        with lock:
            active.discard(key)

    with started(
        per_key, broker, concurrency=4, subscription_type=SubscriptionType.KEY_SHARED, output=""
    ):
        wait_for(lambda: len(broker.sources[0].acked) == 30)
    assert clashes == []
    assert all(seq == sorted(seq) for seq in order.values())


def test_stop_drains_in_flight_work_before_returning() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(f"{i}".encode()) for i in range(5)))
    release = threading.Event()

    def blocked(text: str) -> str:
        release.wait(5)
        return text

    instance = Instance(make_config(concurrency=5), inspect_handler(blocked), broker)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_for(lambda: instance.metrics.snapshot().received == 5)
    instance.stop()
    time.sleep(0.1)
    assert thread.is_alive()  # still draining: the five are in the handler
    release.set()
    thread.join(5)
    assert not thread.is_alive()
    assert len(broker.sources[0].acked) == 5


@pytest.mark.parametrize("guarantee", list(ProcessingGuarantee))
def test_metrics_count_received_and_processed(guarantee: ProcessingGuarantee) -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(b"x") for _ in range(3)))
    with started(lambda data: data, broker, processing_guarantee=guarantee) as inst:
        wait_for(lambda: inst.metrics.snapshot().processed_successfully == 3)
    snap = inst.metrics.snapshot()
    assert (snap.received, snap.user_exceptions) == (3, 0)


@pytest.mark.parametrize(
    ("fields", "is_async", "expected"),
    [
        ({}, False, 1),  # sync: never two threads at once unless asked
        ({}, True, 16),  # async on a shared subscription: interleaves at await points
        ({"subscription_type": SubscriptionType.KEY_SHARED}, True, 16),
        ({"subscription_type": SubscriptionType.FAILOVER}, True, 1),
        ({"subscription_type": SubscriptionType.EXCLUSIVE}, True, 1),
        ({"concurrency": 8}, False, 8),
        ({"concurrency": 8, "retain_ordering": True}, True, 1),
        (
            {"concurrency": 8, "processing_guarantee": ProcessingGuarantee.EFFECTIVELY_ONCE},
            False,
            1,
        ),
    ],
)
def test_effective_concurrency(fields: dict[str, Any], is_async: bool, expected: int) -> None:
    assert effective_concurrency(make_config(**fields), is_async) == expected


def test_a_nacked_batch_comes_back_whole_but_only_the_failed_message_runs_again() -> None:
    broker = FakeBroker(whole_batches=True)  # a broker without batch-index acks
    broker.feed(*(FakeMessage(f"m{i}".encode(), mid=FakeId(9, 1, i)) for i in range(5)))
    flaky = FailsOnce("m2")
    with started(flaky, broker, redelivery_delay_ms=0) as inst:
        wait_for(lambda: inst.metrics.snapshot().processed_successfully == 5)
        # m0 and m1 were acked before m2's nack brought the entry back; m3 and m4 too when
        # the engine took all five in one group (it may take fewer at first): each such copy
        # is acknowledged on arrival, not processed again
        wait_for(lambda: inst.metrics.snapshot().copies_skipped >= 2)
        copies = inst.metrics.snapshot().copies_skipped
    assert sorted(flaky.calls) == ["m0", "m1", "m2", "m2", "m3", "m4"]
    assert sorted(payloads(broker)) == [b"m0", b"m1", b"m2", b"m3", b"m4"]  # no duplicates
    acked = [m.payload for m in broker.sources[0].acked]
    assert sorted(set(acked)) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert len(acked) == 5 + copies


def test_a_graceful_stop_finishes_the_producer_batches_it_began() -> None:
    broker = FakeBroker(whole_batches=True)
    broker.receive_limit = 4  # a receive takes at most 4: entry A comes in pieces
    entry_a = [FakeMessage(f"a{i}".encode(), mid=FakeId(9, 1, i)) for i in range(6)]
    entry_b = [FakeMessage(f"b{i}".encode(), mid=FakeId(9, 2, i)) for i in range(4)]
    broker.feed(*entry_a, *entry_b)
    stopping = threading.Event()
    calls: list[str] = []

    def waits_for_stop(text: str) -> str:
        if not calls:
            stopping.wait(5)  # the stop arrives while the first batch is in the handler
        calls.append(text)
        return text

    instance = Instance(make_config(), inspect_handler(waits_for_stop), broker)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_for(lambda: instance.metrics.snapshot().received >= 1)  # a0 is in the handler
    instance.stop()
    stopping.set()
    thread.join(10)
    assert not thread.is_alive()
    # All of entry A (so it is never redelivered whole), nothing of entry B.
    assert calls == [f"a{i}" for i in range(6)]
    assert sorted(m.payload for m in broker.sources[0].acked) == [
        f"a{i}".encode() for i in range(6)
    ]


def test_ready_only_while_connected() -> None:
    broker = FakeBroker()
    seen = []
    with started(lambda data: data, broker) as inst:
        wait_for(lambda: inst.ready)
        for disconnected in (True, False):  # e.g. the broker restarts, then is back
            broker.disconnected = disconnected
            seen.append(inst.ready)
    seen.append(inst.ready)  # stopped
    assert seen == [False, True, False]
