"""Batch mode's cheap path: outputs sent per group with one receipt, and what that must keep."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import pulsar
import pytest
from fake_broker import FakeBroker, FakeId, FakeMessage
from test_instance import OUT, payloads, started
from waiting import wait_for

from pulsarfunc import current_context
from pulsarfunc.runtime.broker import PulsarBroker, _BatchReceipt
from pulsarfunc.runtime.config import FunctionConfig, InputSpec
from pulsarfunc.runtime.errors import BrokerError
from pulsarfunc.runtime.redelivery import RECENT, Redeliveries, Seen
from pulsarfunc.runtime.transport import OutMessage

FAILED = pulsar.Result.AlreadyClosed


def test_a_group_of_outputs_goes_to_the_broker_in_few_batches() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(f"m{i}".encode()) for i in range(500)))
    with started(lambda text: text.upper(), broker):
        wait_for(lambda: len(broker.sources[0].acked) == 500)
    assert payloads(broker) == [f"M{i}".encode() for i in range(500)]  # in input order
    assert broker.batches < 50  # groups grow to the time budget: not a batch per message


def test_a_failed_output_batch_fails_only_the_messages_that_had_outputs() -> None:
    broker = FakeBroker()
    broker.fail_topics.add(OUT)
    broker.feed(*(FakeMessage(f"m{i}".encode()) for i in range(10)))

    def odd_only(text: str) -> str | None:
        return text if int(text[1:]) % 2 else None

    with started(odd_only, broker, max_message_retries=0, dead_letter_topic="dlq"):
        wait_for(lambda: len(broker.sent["dlq"]) == 5)
        wait_for(lambda: len(broker.sources[0].acked) == 10)
    assert sorted(m.payload for m in broker.sent["dlq"]) == [b"m1", b"m3", b"m5", b"m7", b"m9"]
    reasons = {dict(m.properties or {})["pulsarfunc.error.message"] for m in broker.sent["dlq"]}
    assert reasons == {f"send to {OUT} refused"}


@pytest.mark.parametrize("concurrency", [1, 3])
def test_current_context_without_a_context_parameter_is_each_message_s(concurrency: int) -> None:
    broker = FakeBroker()
    msgs = [FakeMessage(f"m{i}".encode(), key=f"k{i}") for i in range(30)]
    broker.feed(*msgs)

    def tagged(text: str) -> str:
        ctx = current_context()
        assert ctx is current_context()  # the same Context for the whole call
        return f"{ctx.message_key}:{text}:{ctx.message_id.entry_id()}"

    with started(tagged, broker, concurrency=concurrency):
        wait_for(lambda: len(broker.sources[0].acked) == 30)
    want = sorted(f"k{i}:m{i}:{m.mid.entry}".encode() for i, m in enumerate(msgs))
    assert sorted(payloads(broker)) == want


def test_publish_through_current_context_holds_the_ack_until_persisted() -> None:
    broker = FakeBroker()
    release, entered = threading.Event(), threading.Event()
    original = broker.send

    def slow_send(message: Any, callback: Any) -> None:
        entered.set()

        def later() -> None:
            release.wait(5)
            original(message, callback)

        threading.Thread(target=later, daemon=True).start()

    broker.send = slow_send  # type: ignore[method-assign]
    broker.feed(FakeMessage(b"x"))

    def side(text: str) -> None:
        current_context().publish("persistent://public/default/side", text)

    with started(side, broker):
        wait_for(entered.is_set)
        assert broker.sources[0].acked == []  # the publish is not persisted yet
        release.set()
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    assert payloads(broker, "persistent://public/default/side") == [b"x"]


# -- the receipt of one send_batch (pulsar-client results, no broker) -----------------------
def _receipt(size: int) -> tuple[_BatchReceipt, list[Mapping[int, Exception]]]:
    calls: list[Mapping[int, Exception]] = []
    return _BatchReceipt("t", size, calls.append), calls


def test_a_persisted_tail_settles_the_batch_once_without_errors() -> None:
    receipt, calls = _receipt(3)
    receipt.tail(pulsar.Result.Ok, None)
    assert calls == [{}]


def test_a_failed_tail_fails_every_message_of_the_batch() -> None:
    receipt, calls = _receipt(3)
    receipt.tail(FAILED, None)
    (errors,) = calls
    assert sorted(errors) == [0, 1, 2]
    assert all(isinstance(e, BrokerError) for e in errors.values())


def test_tracked_large_messages_are_waited_for_and_fail_alone() -> None:
    receipt, calls = _receipt(4)
    receipt.tracking(2)
    receipt.one(1, FAILED, None)
    receipt.tail(pulsar.Result.Ok, None)
    assert calls == []  # message 2's receipt is still out
    receipt.one(2, pulsar.Result.Ok, None)
    (errors,) = calls
    assert list(errors) == [1]


def test_refused_at_the_call_is_reported_with_the_batch() -> None:
    receipt, calls = _receipt(3)
    receipt.refused((0,), ValueError("bad property"))
    receipt.tail(pulsar.Result.Ok, None)
    (errors,) = calls
    assert list(errors) == [0]
    assert "bad property" in str(errors[0])


# -- redelivery memory before the first failure -----------------------------------------------
def test_groups_settled_before_the_first_failure_are_still_recognised_as_copies() -> None:
    redeliveries = Redeliveries()
    early = [FakeMessage(b"a", mid=FakeId(1, 1, i)) for i in range(3)]
    redeliveries.settled(early)  # kept by reference only: nothing has failed yet
    watching = [redeliveries.watching]
    failing = FakeMessage(b"b", mid=FakeId(1, 1, 3))
    assert redeliveries.attempt(failing) == 1
    watching.append(redeliveries.watching)
    assert watching == [False, True]
    assert all(redeliveries.seen(FakeMessage(b"a", mid=m.mid)) is Seen.COPY for m in early)
    assert redeliveries.seen(failing) is Seen.FRESH
    later = FakeMessage(b"c", mid=FakeId(1, 2, 0))
    redeliveries.settled([later])
    assert redeliveries.seen(later) is Seen.COPY


def test_async_outputs_finished_in_one_pass_of_the_loop_go_in_one_batch() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(f"m{i}".encode()) for i in range(200)))

    async def echo(text: str) -> str:
        await asyncio.sleep(0)
        return text

    with started(echo, broker, concurrency=16):
        wait_for(lambda: len(broker.sources[0].acked) == 200)
    assert sorted(payloads(broker)) == sorted(f"m{i}".encode() for i in range(200))
    assert broker.batches <= 200 // 4  # 16 tasks finish in a pass: about 16 per batch


def test_async_output_failure_fails_its_message_only() -> None:
    broker = FakeBroker()
    broker.fail_topics.add(OUT)
    broker.feed(FakeMessage(b"keep"), FakeMessage(b"drop"))

    async def only_keep(text: str) -> str | None:
        return text if text == "keep" else None

    with started(only_keep, broker, max_message_retries=0, dead_letter_topic="dlq"):
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert [m.payload for m in broker.sent["dlq"]] == [b"keep"]


def test_a_late_timed_out_call_still_sees_its_own_message() -> None:
    broker = FakeBroker()
    release = threading.Event()
    seen: list[bytes] = []

    def slow(text: str) -> str:
        if text == "stuck":
            release.wait(5)  # past the deadline: the loop has moved on to "next"
            seen.append(current_context().message.data())
        return text

    broker.feed(FakeMessage(b"stuck"), FakeMessage(b"next"))
    with started(slow, broker, timeout_ms=100, max_message_retries=0, dead_letter_topic="dlq"):
        wait_for(lambda: len(broker.sources[0].acked) == 2)
        release.set()
        wait_for(lambda: bool(seen))
    assert seen == [b"stuck"]
    assert payloads(broker) == [b"next"]


# -- PulsarBroker.send_batch over a stand-in native producer (no broker) ----------------------
class NativeProducer:
    """Records what send_batch hands the client: which sends carry a callback."""

    def __init__(self, refuse: set[bytes] | None = None) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.refuse = refuse or set()
        self.flushed = 0

    def send_async(self, msg: Any, callback: Any) -> None:
        if msg.data() in self.refuse:
            raise pulsar.PulsarException("refused")
        self.sent.append((msg.data(), callback))

    def flush(self) -> None:
        self.flushed += 1


def _broker_over(producer: NativeProducer | None) -> PulsarBroker:
    broker = PulsarBroker.__new__(PulsarBroker)  # no client: only the send path is used
    broker._config = FunctionConfig(inputs=(InputSpec("in"),), output=OUT, name="fn")
    broker._natives = {} if producer is None else {(OUT, None): producer}
    broker._producers = {}
    broker._producers_lock = threading.Lock()

    def no_producer(topic: str, name: str | None) -> Any:
        raise pulsar.PulsarException("topic not found")

    broker._producer = no_producer  # type: ignore[method-assign]
    return broker


def _outs(*payloads: bytes) -> list[OutMessage]:
    return [OutMessage(OUT, p, None, {"__pfn_input_topic__": "in"}) for p in payloads]


def test_send_batch_asks_the_client_for_one_receipt_the_last_message_s() -> None:
    producer = NativeProducer()
    calls: list[Mapping[int, Exception]] = []
    _broker_over(producer).send_batch(_outs(b"a", b"b", b"c"), calls.append)
    assert [(p, cb is not None) for p, cb in producer.sent] == [
        (b"a", False),
        (b"b", False),
        (b"c", True),
    ]
    producer.sent[-1][1](pulsar.Result.Ok, None)
    assert calls == [{}]


def test_send_batch_tracks_a_large_message_on_its_own() -> None:
    producer = NativeProducer()
    calls: list[Mapping[int, Exception]] = []
    _broker_over(producer).send_batch(_outs(b"a", bytes(70_000), b"c"), calls.append)
    assert [cb is not None for _, cb in producer.sent] == [False, True, True]
    producer.sent[2][1](pulsar.Result.Ok, None)
    producer.sent[1][1](pulsar.Result.MessageTooBig, None)
    (errors,) = calls
    assert list(errors) == [1]


def test_send_batch_with_a_large_message_refused_at_the_call_still_calls_back() -> None:
    producer = NativeProducer(refuse={bytes(70_000)})
    calls: list[Mapping[int, Exception]] = []
    _broker_over(producer).send_batch(_outs(b"a", bytes(70_000), b"c"), calls.append)
    producer.sent[-1][1](pulsar.Result.Ok, None)
    (errors,) = calls
    assert list(errors) == [1]


def test_send_batch_with_its_last_message_refused_waits_for_the_rest_by_flush() -> None:
    producer = NativeProducer(refuse={b"c"})
    calls: list[Mapping[int, Exception]] = []
    _broker_over(producer).send_batch(_outs(b"a", b"b", b"c"), calls.append)
    assert producer.flushed == 1
    (errors,) = calls
    assert list(errors) == [2]


def test_send_batch_without_a_producer_fails_every_message_at_once() -> None:
    calls: list[Mapping[int, Exception]] = []
    _broker_over(None).send_batch(_outs(b"a", b"b"), calls.append)
    (errors,) = calls
    assert sorted(errors) == [0, 1]
    assert "topic not found" in str(errors[0])


def test_the_last_recent_messages_are_kept_before_the_first_failure_whatever_the_groups() -> None:
    redeliveries = Redeliveries()
    # one-message groups, as a slow handler takes them: the window counts messages, not groups
    groups = [[FakeMessage(b"x", mid=FakeId(2, g, 0))] for g in range(RECENT + 100)]
    for group in groups:
        redeliveries.settled(group)
    redeliveries.attempt(FakeMessage(b"bad", mid=FakeId(3, 0, 0)))
    remembered = [redeliveries.seen(group[0]) is Seen.COPY for group in groups]
    assert remembered == [False] * 100 + [True] * RECENT


def test_after_a_lost_connection_redelivered_settled_messages_are_not_processed_again() -> None:
    broker = FakeBroker()
    msgs = [FakeMessage(f"m{i}".encode(), mid=FakeId(5, 1, i)) for i in range(5)]
    broker.feed(*msgs)
    with started(lambda data: data, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 5)
        broker.disconnected = True  # e.g. the broker restarts: its acks may be lost
        time.sleep(0.2)  # the loop polls the connection on every receive (5 ms here)
        broker.disconnected = False
        broker.feed(*(FakeMessage(m.payload, mid=m.mid) for m in msgs))  # delivered again
        wait_for(lambda: len(broker.sources[0].acked) == 10)
    assert payloads(broker) == [f"m{i}".encode() for i in range(5)]  # each processed once
