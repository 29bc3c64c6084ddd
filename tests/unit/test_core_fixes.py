"""Issue 12's defects, each on the fake broker: no fault loses or stalls a message.

a non-persistent inputs · b effectively-once after a failure · c effectively-once sequence ids ·
d CancelledError · e dead-letter marking · f the stop deadline · g the ordering key ·
h redelivery memory with slow handlers · j producers at start · k Context parity
(i, defaults of input parameters, is in test_handler.py).
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from fake_broker import IO_THREAD, FakeBroker, FakeId, FakeMessage
from flaky import FailsOnce
from test_instance import make_config, started
from waiting import wait_for

from pulsarfunc import Context, current_context
from pulsarfunc.protos.Function_pb2 import FunctionDetails
from pulsarfunc.runtime import settle
from pulsarfunc.runtime.broker import consumer_plan
from pulsarfunc.runtime.config import (
    FunctionConfig,
    InputSpec,
    ProcessingGuarantee,
    SubscriptionType,
)
from pulsarfunc.runtime.errors import BrokerError
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance

IN = "persistent://public/default/in"
NP_IN = "non-persistent://public/default/in"
OUT = "persistent://public/default/out"
DLQ = "persistent://public/default/dlq"
EO = ProcessingGuarantee.EFFECTIVELY_ONCE


def config(**fields: Any) -> FunctionConfig:
    fields.setdefault("redelivery_delay_ms", 20)
    return make_config(**fields)


def running(
    handler: Callable[..., Any], broker: FakeBroker, **fields: Any
) -> AbstractContextManager[Instance]:
    """`test_instance.started` with quick retries: the stop must settle everything."""
    fields.setdefault("redelivery_delay_ms", 20)
    return started(handler, broker, **fields)


def outputs(broker: FakeBroker, topic: str = OUT) -> list[bytes]:
    return [m.payload for m in broker.sent.get(topic, [])]


# --- a. non-persistent inputs -----------------------------------------------------------------


def non_persistent(payload: bytes) -> FakeMessage:
    """A message as the broker delivers it from a non-persistent topic: always ledger 0, entry 0."""
    return FakeMessage(payload, topic=NP_IN, mid=FakeId(0, 0, -1))


@pytest.mark.parametrize(
    "fields",
    [{}, {"concurrency": 3}, {"retain_ordering": True}],
    ids=["batch", "threads", "ordered"],
)
def test_a_after_a_failure_every_later_non_persistent_message_is_still_processed(
    fields: dict[str, Any],
) -> None:
    broker = FakeBroker()
    broker.feed(*(non_persistent(f"m{i}".encode()) for i in range(20)))
    handler = FailsOnce("m3")
    with running(handler, broker, inputs=(InputSpec(NP_IN),), **fields):
        wait_for(lambda: len(outputs(broker)) == 20)
    assert sorted(outputs(broker)) == sorted(f"m{i}".encode() for i in range(20))
    assert handler.calls.count("m3") == 2  # retried here: the broker would drop a nacked message
    assert broker.sources[0].nacked == []
    assert len(broker.sources[0].acked) == 20  # each acked once, after its output


def test_a_async_engine_retries_a_failed_non_persistent_message_here_then_dead_letters() -> None:
    broker = FakeBroker()
    broker.feed(*(non_persistent(f"m{i}".encode()) for i in range(10)))
    attempts: list[int] = []

    async def poison(ctx: Context, text: str) -> str:
        if text == "m4":
            attempts.append(ctx.redelivery_count)
            raise ValueError("poison")
        return text

    with running(
        poison,
        broker,
        inputs=(InputSpec(NP_IN),),
        max_message_retries=2,
        dead_letter_topic=DLQ,
    ):
        wait_for(lambda: len(broker.sent.get(DLQ, [])) == 1)
        wait_for(lambda: len(outputs(broker)) == 9)
    assert attempts == [0, 1, 2]  # the Context counts the retries made here
    assert dict(broker.sent[DLQ][0].properties or {})["pulsarfunc.attempts"] == "3"


# --- b. effectively-once after a failure ------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_b_effectively_once_retries_a_failed_message_before_any_later_output(
    is_async: bool,
) -> None:
    broker = FakeBroker()
    broker.dedup = True  # the namespace deduplicates by producer name and sequence id
    broker.feed(*(FakeMessage(f"m{i}".encode(), mid=FakeId(11, 1, i)) for i in range(30)))
    once = FailsOnce("m7")

    async def once_async(text: str) -> str:
        return once(text)

    with running(once_async if is_async else once, broker, processing_guarantee=EO):
        wait_for(lambda: len(broker.sources[0].acked) == 30)
    assert outputs(broker) == [f"m{i}".encode() for i in range(30)]  # m7 in its place
    assert broker.dropped == []
    calls = once.calls
    assert calls[: calls.index("m7") + 2] == [f"m{i}" for i in range(8)] + ["m7"]


def test_b_effectively_once_rewinds_after_a_failed_send() -> None:
    broker = FakeBroker()
    broker.dedup = True
    broker.feed(*(FakeMessage(f"m{i}".encode(), mid=FakeId(12, i, -1)) for i in range(10)))
    original = broker.send_batch
    failed: list[bool] = []

    def fails_once(messages: Any, callback: Any) -> None:
        if not failed and any(m.payload == b"m4" for m in messages):
            failed.append(True)
            callback({p: RuntimeError("producer fenced") for p in range(len(messages))})
            return
        original(messages, callback)

    broker.send_batch = fails_once  # type: ignore[method-assign]
    with running(lambda text: text, broker, processing_guarantee=EO, output=OUT):
        wait_for(lambda: len(broker.sources[0].acked) == 10)
    assert outputs(broker) == [f"m{i}".encode() for i in range(10)]


@pytest.mark.parametrize("guarantee", ["effectively-once", "retain-ordering"])
def test_b_a_parked_message_that_fails_again_is_not_overtaken_by_those_behind_it(
    guarantee: str,
) -> None:
    broker = FakeBroker()
    broker.dedup = True
    warm = [FakeMessage(f"w{i}".encode(), mid=FakeId(7, i, -1)) for i in range(20)]
    tail = [FakeMessage(p, mid=FakeId(7, 100 + i, -1)) for i, p in enumerate([b"A", b"B", b"C"])]
    calls: list[str] = []

    def slow_pair(text: str) -> str:
        calls.append(text)
        if text in ("A", "B"):
            time.sleep(0.01)  # slow: groups of one, so A is retried without B beside it
            if calls.count(text) == 1:
                raise RuntimeError(f"{text} fails once")
        return text

    fields: dict[str, Any] = (
        {"processing_guarantee": EO}
        if guarantee == "effectively-once"
        else {"retain_ordering": True}
    )
    with running(slow_pair, broker, redelivery_delay_ms=50, **fields):
        broker.feed(*warm)
        wait_for(lambda: len(outputs(broker)) == 20)  # large groups now
        broker.feed(*tail)
        wait_for(lambda: len(broker.sources[0].acked) == 23)
    assert outputs(broker)[20:] == [b"A", b"B", b"C"]
    assert broker.dropped == []


def test_b_nothing_after_a_message_goes_on_while_its_dead_letter_send_may_still_fail() -> None:
    broker = FakeBroker()
    broker.dedup = True
    broker.held[DLQ] = outcome = threading.Event()  # the dead-letter send's outcome comes late
    broker.fail_topics.add(DLQ)  # ...and is a failure
    broker.feed(FakeMessage(b"A", mid=FakeId(7, 1, -1)), FakeMessage(b"B", mid=FakeId(7, 2, -1)))
    down = [True]

    def needs_a_dependency(text: str) -> str:
        if text == "A" and down[0]:
            raise RuntimeError("dependency down")
        return text

    with running(
        needs_a_dependency,
        broker,
        processing_guarantee=EO,
        max_message_retries=1,
        dead_letter_topic=DLQ,
    ) as instance:
        source = broker.sources[0]
        wait_for(lambda: instance.core.settler.dead_letters_in_flight(source) == 1)
        time.sleep(0.05)
        assert outputs(broker) == []  # B waits for A's dead letter
        down[0] = False
        outcome.set()  # the dead-letter send fails: A is tried again, now with success
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert outputs(broker) == [b"A", b"B"]
    assert broker.dropped == []


def test_b_effectively_once_groups_never_overlap_their_sends() -> None:
    """A group's outputs go out only once the previous group's are persisted: a later output
    never reaches the broker before an earlier one that might be retried."""

    class Slow(FakeBroker):
        def __init__(self) -> None:
            super().__init__()
            self.unconfirmed = 0
            self.overlapped = False

        def send_batch(self, messages: Any, callback: Any) -> None:
            self.overlapped = self.overlapped or self.unconfirmed > 0
            self.unconfirmed += 1

            def late(errors: Any) -> None:
                time.sleep(0.01)
                self.unconfirmed -= 1
                callback(errors)

            super().send_batch(messages, late)

    broker = Slow()
    broker.receive_limit = 1  # a group per message
    broker.feed(*(FakeMessage(f"m{i}".encode(), mid=FakeId(8, i, -1)) for i in range(10)))
    with running(lambda text: text, broker, processing_guarantee=EO):
        wait_for(lambda: len(broker.sources[0].acked) == 10)
    assert not broker.overlapped
    assert outputs(broker) == [f"m{i}".encode() for i in range(10)]


# --- c. effectively-once sequence ids -----------------------------------------------------------


def test_c_a_producer_batch_of_5000_messages_keeps_every_output() -> None:
    broker = FakeBroker()
    broker.dedup = True
    ledger = 2**40 + 3  # far past 2**21, where ledger << 42 overflowed 63 bits
    broker.feed(*(FakeMessage(str(i).encode(), mid=FakeId(ledger, 9, i)) for i in range(5000)))

    def twice(text: str) -> Iterator[str]:
        yield text
        yield text + "+"

    with running(twice, broker, processing_guarantee=EO):
        wait_for(lambda: len(broker.sources[0].acked) == 5000)
    assert len(outputs(broker)) == 10_000
    assert broker.dropped == []
    ids = [m.sequence_id or 0 for m in broker.sent[OUT]]
    assert ids == sorted(ids)
    assert len(set(ids)) == 10_000
    assert all(0 < i < 2**63 for i in ids)
    (name,) = {m.producer_name for m in broker.sent[OUT]}
    assert name == f"public/default/fn@{IN}@{ledger}"


def test_c_a_replayed_input_gets_the_ids_it_had_and_is_dropped_as_a_duplicate() -> None:
    broker = FakeBroker()
    broker.dedup = True
    msgs = [FakeMessage(f"m{i}".encode(), mid=FakeId(5, i, -1)) for i in range(5)]
    broker.feed(*msgs)
    with running(lambda text: text, broker, processing_guarantee=EO):
        wait_for(lambda: len(broker.sources[0].acked) == 5)
        broker.feed(*(FakeMessage(m.payload, mid=m.mid) for m in msgs[2:]))  # a replay
        wait_for(lambda: len(broker.dropped) + len(broker.sources[0].acked) >= 8)
    assert outputs(broker) == [f"m{i}".encode() for i in range(5)]


# --- d. asyncio.CancelledError ------------------------------------------------------------------


def test_d_cancelled_errors_fail_their_messages_and_never_stall_the_instance() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(f"m{i}".encode()) for i in range(40)))

    async def cancels_even(text: str) -> str:
        await asyncio.sleep(0)
        if int(text[1:]) % 2 == 0:
            raise asyncio.CancelledError
        return text

    with running(
        cancels_even, broker, concurrency=2, max_message_retries=0, dead_letter_topic=DLQ
    ) as instance:
        wait_for(lambda: len(broker.sources[0].acked) == 40)
        assert instance.ready
        wait_for(lambda: instance.core.tracker.in_flight == 0)
    assert len(outputs(broker)) == 20
    letters = [dict(m.properties or {}) for m in broker.sent[DLQ]]
    assert len(letters) == 20
    assert {p["pulsarfunc.error.type"] for p in letters} == {"HandlerCancelledError"}


# --- e. dead-letter marking ---------------------------------------------------------------------


def test_e_a_copy_that_arrives_while_the_dead_letter_send_is_in_flight_is_left_alone() -> None:
    broker = FakeBroker()
    broker.held[DLQ] = release = threading.Event()
    poison = FakeMessage(b"poison", mid=FakeId(3, 3, -1))
    broker.feed(poison)
    calls: list[str] = []

    def fails(text: str) -> str:
        calls.append(text)
        raise ValueError(text)

    with running(fails, broker, max_message_retries=0, dead_letter_topic=DLQ) as instance:
        wait_for(lambda: len(broker.sent.get(DLQ, [])) == 1)  # sent; its receipt held
        broker.feed(FakeMessage(b"poison", mid=poison.mid))  # a copy, redelivered meanwhile
        wait_for(lambda: instance.metrics.snapshot().copies_skipped == 1)
        assert broker.sources[0].acked == []  # neither the copy nor the original yet
        release.set()
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    assert calls == ["poison"]  # the copy was not processed
    assert instance.metrics.snapshot().dead_lettered == 1


def test_e_a_failed_dead_letter_send_leaves_the_message_to_be_processed_again() -> None:
    broker = FakeBroker()
    broker.fail_topics.add(DLQ)
    broker.feed(FakeMessage(b"poison", mid=FakeId(4, 4, -1)))

    def fails(text: str) -> str:
        raise ValueError(text)

    with running(fails, broker, max_message_retries=0, dead_letter_topic=DLQ) as instance:
        wait_for(lambda: len(broker.sources[0].nacked) >= 1)
        broker.fail_topics.clear()
        wait_for(lambda: len(broker.sent.get(DLQ, [])) == 1)  # on its redelivery
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    assert instance.metrics.snapshot().dead_lettered == 1


# --- f. the stop deadline -------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_f_a_handler_that_never_returns_cannot_hold_the_stop_past_its_deadline(
    is_async: bool,
) -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"stuck"), FakeMessage(b"fine"))
    forever = threading.Event()

    def hangs(text: str) -> str:
        if text == "stuck":
            forever.wait(30)
        return text

    async def hangs_async(text: str) -> str:
        if text == "stuck":
            await asyncio.sleep(30)
        return text

    instance = Instance(
        config(drain_timeout_ms=300, concurrency=2),
        inspect_handler(hangs_async if is_async else hangs),
        broker,
    )
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(instance.run()), daemon=True)
    thread.start()
    wait_for(lambda: len(broker.sources[0].acked) == 1)  # "fine" is done, "stuck" is not
    began = time.monotonic()
    instance.stop()
    thread.join(5)
    took = time.monotonic() - began
    forever.set()
    assert not thread.is_alive()
    assert result == [False]
    assert 0.25 < took < 2.0
    assert [m.payload for m in broker.sources[0].nacked] == [b"stuck"]  # back to the broker


def test_f_at_the_deadline_a_slow_async_message_is_given_back_not_dead_lettered() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"slow"))

    async def slow(text: str) -> str:
        await asyncio.sleep(30)
        return text

    instance = Instance(
        config(drain_timeout_ms=300, max_message_retries=0, dead_letter_topic=DLQ),
        inspect_handler(slow),
        broker,
    )
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(instance.run()), daemon=True)
    thread.start()
    wait_for(lambda: instance.metrics.snapshot().received == 1)
    instance.stop()
    thread.join(5)
    assert result == [False]
    assert broker.sent.get(DLQ, []) == []  # the engine's own cancel is not a handler failure
    assert broker.sources[0].acked == []
    assert [m.payload for m in broker.sources[0].nacked] == [b"slow"]
    assert instance.metrics.snapshot().user_exceptions == 0


def test_f_a_stop_that_settles_everything_in_time_returns_true() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(b"x") for _ in range(10)))
    with running(lambda data: data, broker, drain_timeout_ms=5000):
        wait_for(lambda: len(broker.sources[0].acked) == 10)


# --- g. the ordering key --------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_g_key_order_follows_the_ordering_key_before_the_partition_key(is_async: bool) -> None:
    broker = FakeBroker()
    # one partition key for all; the ordering key splits them in twelve ordered streams
    broker.feed(
        *(FakeMessage(f"{i}".encode(), key="same", okey=f"o{i % 12:02}") for i in range(120))
    )
    active: set[str] = set()
    lock = threading.Lock()
    clashes: list[str] = []
    order: dict[str, list[int]] = {}
    overlap: list[int] = []

    def enter(ctx: Context, text: str) -> str:
        key = ctx.get_ordering_key() or ""
        with lock:
            if key in active:
                clashes.append(key)
            active.add(key)
            overlap.append(len(active))
            order.setdefault(key, []).append(int(text))
        return key

    def leave(key: str) -> None:
        with lock:
            active.discard(key)

    def sync_handler(ctx: Context, text: str) -> None:
        key = enter(ctx, text)
        time.sleep(0.002)
        leave(key)

    async def async_handler(ctx: Context, text: str) -> None:
        key = enter(ctx, text)
        await asyncio.sleep(0.002)
        leave(key)

    handler = async_handler if is_async else sync_handler
    with running(
        handler, broker, concurrency=3, subscription_type=SubscriptionType.KEY_SHARED, output=""
    ):
        wait_for(lambda: len(broker.sources[0].acked) == 120)
    assert clashes == []
    assert sorted(order) == [f"o{k:02}" for k in range(12)]
    assert all(seq == sorted(seq) for seq in order.values())
    assert max(overlap) > 1  # different ordering keys ran at once: not the partition key


def test_g_key_lanes_with_two_consumers_give_each_message_its_own_context() -> None:
    broker = FakeBroker(sources=2)  # two inputs with different receiver queues: two consumers
    other = "persistent://public/default/in2"
    broker.feed(*(FakeMessage(f"a{i}".encode(), key=f"k{i}") for i in range(6)), source=0)
    broker.feed(
        *(FakeMessage(f"b{i}".encode(), key=f"k{i}", topic=other) for i in range(6)), source=1
    )

    def where(text: str) -> str:
        return f"{text}@{current_context().message_topic.rsplit('/', 1)[1]}"

    with running(
        where,
        broker,
        inputs=(InputSpec(IN, receiver_queue_size=100), InputSpec(other, receiver_queue_size=50)),
        subscription_type=SubscriptionType.KEY_SHARED,
        concurrency=2,
    ):
        wait_for(lambda: len(outputs(broker)) == 12)
        broker.feed(*(FakeMessage(f"c{i}".encode(), key=f"k{i}") for i in range(6)), source=0)
        wait_for(lambda: len(outputs(broker)) == 18)
    expected = [
        f"{p}{i}@{t}" for p, t in (("a", "in"), ("b", "in2"), ("c", "in")) for i in range(6)
    ]
    assert sorted(outputs(broker)) == sorted(e.encode() for e in expected)


def test_g_a_retried_message_runs_on_its_keys_lane_never_beside_its_key() -> None:
    broker = FakeBroker()
    running_keys: dict[str, str | None] = {}
    overlaps: list[str] = []
    seen: list[str] = []
    lock = threading.Lock()

    def handler(text: str) -> str:
        key = text[0]
        with lock:
            if running_keys.get(key):
                overlaps.append(text)
            running_keys[key] = text
            seen.append(text)
        try:
            if text == "K1" and seen.count("K1") == 1:
                raise RuntimeError("once")
            if text == "K2":
                time.sleep(0.3)
            return text
        finally:
            with lock:
                running_keys[key] = None

    def np_keyed(payload: bytes, key: str) -> FakeMessage:
        return FakeMessage(payload, key=key, topic=NP_IN, mid=FakeId(0, 0, -1))

    broker.feed(*(np_keyed(f"{k}0".encode(), k) for k in "ABCDEFGHIJ"))
    broker.feed(np_keyed(b"K1", "K"))
    with running(
        handler,
        broker,
        inputs=(InputSpec(NP_IN),),
        subscription_type=SubscriptionType.KEY_SHARED,
        concurrency=4,
        redelivery_delay_ms=50,
    ):
        time.sleep(0.02)
        broker.feed(np_keyed(b"K2", "K"))  # K's lane is busy with K2 when K1 is due
        wait_for(lambda: len(outputs(broker)) == 12)
    assert overlaps == []


# --- h. redelivery memory with slow handlers ------------------------------------------------------


def test_h_siblings_of_a_nacked_batch_are_not_processed_again_with_one_message_groups() -> None:
    broker = FakeBroker(whole_batches=True)  # a nack brings the whole producer batch back
    broker.feed(*(FakeMessage(f"m{i}".encode(), mid=FakeId(9, 1, i)) for i in range(300)))
    once = FailsOnce("m250")

    def slow(text: str) -> str:
        time.sleep(0.0005)  # past the 5 ms group budget in a few: groups of one or two
        return once(text)

    with running(slow, broker) as instance:
        wait_for(lambda: instance.metrics.snapshot().processed_successfully == 300)
    # the 250 siblings settled before m250 failed came back with it (and those delivered
    # since): each was acknowledged on arrival, none processed again
    assert instance.metrics.snapshot().copies_skipped >= 250
    assert len(once.calls) == 301
    assert sorted(outputs(broker)) == sorted(f"m{i}".encode() for i in range(300))


def test_h_after_a_quiet_period_the_fast_path_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settle, "QUIET_S", 0.3)
    broker = FakeBroker()
    broker.feed(*(FakeMessage(f"m{i}".encode()) for i in range(5)))
    with running(FailsOnce("m1"), broker, redelivery_delay_ms=10) as instance:
        redeliveries = instance.core.settler.redeliveries
        wait_for(lambda: len(broker.sources[0].acked) == 5)
        assert redeliveries.watching
        wait_for(lambda: not redeliveries.watching and not redeliveries.failing)
        broker.feed(*(FakeMessage(f"n{i}".encode()) for i in range(5)))
        wait_for(lambda: len(broker.sources[0].acked) == 10)
        assert not redeliveries.failing


# --- a failure of the dead-letter topic, or of a publish callback, stalls nothing -----------


def test_a_async_non_persistent_message_whose_dead_letter_failed_is_retried_later() -> None:
    broker = FakeBroker()
    broker.fail_topics.add(DLQ)
    broker.feed(non_persistent(b"poison"))
    calls: list[str] = []

    async def poison(text: str) -> str:
        calls.append(text)
        raise ValueError("poison")

    with running(
        poison, broker, inputs=(InputSpec(NP_IN),), max_message_retries=0, dead_letter_topic=DLQ
    ) as instance:
        wait_for(lambda: len(calls) >= 2)  # kept here and tried again: not left parked
        broker.fail_topics.clear()
        wait_for(lambda: len(broker.sent.get(DLQ, [])) == 1)
        wait_for(lambda: instance.core.tracker.in_flight == 0)


def test_a_publish_callback_that_blocks_does_not_hold_up_dead_letters() -> None:
    broker = FakeBroker()
    release = threading.Event()
    broker.feed(FakeMessage(b"first"))

    def handler(ctx: Context, text: str) -> str:
        if text == "first":
            ctx.publish(
                "persistent://public/default/audit", text, callback=lambda e, i: release.wait(10)
            )
            return text
        raise ValueError("poison")

    with running(handler, broker, max_message_retries=0, dead_letter_topic=DLQ) as instance:
        wait_for(lambda: len(broker.sources[0].acked) == 1)
        broker.feed(FakeMessage(b"poison"))
        wait_for(lambda: len(broker.sources[0].acked) == 2)  # dead-lettered and acked
        assert instance.metrics.snapshot().dead_lettered == 1
        release.set()


@pytest.mark.parametrize("is_async", [False, True])
def test_a_failed_output_send_is_counted_and_logged_by_every_engine(is_async: bool) -> None:
    broker = FakeBroker()
    broker.fail_topics.add(OUT)
    broker.feed(FakeMessage(b"m"))

    async def echo_async(text: str) -> str:
        return text

    def echo(text: str) -> str:
        return text

    with running(
        echo_async if is_async else echo, broker, max_message_retries=0, dead_letter_topic=DLQ
    ) as instance:
        wait_for(lambda: len(broker.sent.get(DLQ, [])) == 1)
    snap = instance.metrics.snapshot()
    assert snap.system_exceptions == 1
    assert snap.system_errors == (f"send to {OUT} refused",)


# --- callbacks only record: nothing of the function's runs on the client's IO thread -------


def test_publish_callbacks_and_settling_never_run_on_the_clients_io_thread() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(f"m{i}".encode()) for i in range(5)))
    threads: list[str] = []
    acked_on: list[str] = []
    original = broker.sources[0].ack

    def ack(message: Any) -> None:
        acked_on.append(threading.current_thread().name)
        original(message)

    broker.sources[0].ack = ack  # type: ignore[method-assign]

    def fanout(ctx: Context, text: str) -> None:
        ctx.publish(
            "persistent://public/default/side",
            text,
            callback=lambda error, _id: threads.append(threading.current_thread().name),
        )

    for handler_is_async in (False, True):

        async def fanout_async(ctx: Context, text: str) -> None:
            fanout(ctx, text)

        threads.clear()
        acked_on.clear()
        with running(fanout_async if handler_is_async else fanout, broker):
            wait_for(lambda: len(threads) == 5 and len(acked_on) == 5)
        assert set(threads) == {"pf-callbacks"}
        assert IO_THREAD not in acked_on
        broker.feed(*(FakeMessage(f"n{i}".encode()) for i in range(5)))


# --- j. producers at start ------------------------------------------------------------------------


def test_j_output_and_dead_letter_producers_are_opened_before_the_first_message() -> None:
    broker = FakeBroker()
    seen: list[list[str]] = []

    def first(text: str) -> str:
        seen.append(list(broker.producers))
        return text

    broker.feed(FakeMessage(b"x"))
    with running(first, broker, max_message_retries=1):
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    assert seen == [[OUT, "persistent://public/default/in-public-default-fn-DLQ"]]


@pytest.mark.parametrize("refused", [OUT, DLQ])
def test_j_a_topic_the_broker_refuses_fails_the_start_before_anything_is_taken(
    refused: str,
) -> None:
    broker = FakeBroker()
    broker.refuse_producers.add(refused)
    broker.feed(FakeMessage(b"x"))
    instance = Instance(
        config(max_message_retries=1, dead_letter_topic=DLQ),
        inspect_handler(lambda text: text),
        broker,
    )
    ready: list[bool] = []
    with pytest.raises(BrokerError, match=f"cannot produce to {refused}"):
        instance.run(ready=lambda: ready.append(True))
    assert ready == []
    assert not instance.ready
    assert len(broker.sources[0].queue) == 1  # nothing was taken


# --- k. Context parity with PIP-32 ----------------------------------------------------------------


def test_k_the_context_has_the_start_time_and_a_read_only_view_of_the_configuration() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"a"), FakeMessage(b"b"))
    seen: list[tuple[datetime.datetime, Any, Any]] = []

    def look(ctx: Context, text: str) -> None:
        details = ctx.get_function_details()
        seen.append((ctx.get_start_time(), details.SerializeToString(), ctx.function_config))
        details.name = "changed"  # a copy: the next message sees the real one

    before = datetime.datetime.now(datetime.timezone.utc)
    with running(
        look,
        broker,
        inputs=(InputSpec(IN, receiver_queue_size=7),),
        processing_guarantee=ProcessingGuarantee.ATLEAST_ONCE,
        max_message_retries=3,
    ) as instance:
        wait_for(lambda: len(seen) == 2)
    (start1, raw1, cfg1), (start2, raw2, _) = seen
    assert raw1 == raw2
    details2 = FunctionDetails.FromString(raw2)
    assert start1 == start2
    assert before <= start1 <= datetime.datetime.now(datetime.timezone.utc)
    assert start1.tzinfo is not None
    assert cfg1 is instance.config
    assert details2.name == "fn"
    assert details2.tenant == "public"
    assert details2.source.inputSpecs[IN].receiverQueueSize.value == 7
    assert details2.retryDetails.maxMessageRetries == 3
    assert details2.sink.topic == OUT


def test_k_each_input_gets_a_consumer_with_its_own_receiver_queue_size() -> None:
    cfg = config(
        inputs=(
            InputSpec("persistent://public/default/a", receiver_queue_size=7),
            InputSpec("persistent://public/default/b"),
            InputSpec("persistent://public/default/c", receiver_queue_size=7),
            InputSpec("persistent://public/default/d-.*", is_regex=True, receiver_queue_size=3),
        ),
        receiver_queue_size=500,
    )
    plans = {(p.topics, p.pattern, p.receiver_queue_size) for p in consumer_plan(cfg)}
    assert plans == {
        (("persistent://public/default/a", "persistent://public/default/c"), None, 7),
        (("persistent://public/default/b",), None, 500),
        ((), "persistent://public/default/d-.*", 3),
    }
