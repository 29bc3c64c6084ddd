"""The runtime against the real Apache Pulsar broker: guarantees, inputs, context, payloads."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Iterator

import pytest
from pulsar import MessageId
from pulsar_helpers import PulsarBroker, produce, subscribe_first, unique_topic
from runtime_harness import admin, config_for, running, wait_backlog, wait_for

from pulsarfunc import Context, current_context
from pulsarfunc.runtime.broker import PulsarBroker as PulsarBroker_
from pulsarfunc.runtime.config import ProcessingGuarantee

pytestmark = pytest.mark.integration


def exclaim(text: str) -> str:
    return text + "!"


def test_at_least_once_outputs_every_input_and_acks_it(pulsar: PulsarBroker) -> None:
    src, out = unique_topic("in"), unique_topic("out")
    config = config_for(pulsar.service_url, src, output=out)
    with subscribe_first(pulsar.service_url, out) as sink, running(exclaim, config):
        produce(pulsar.service_url, src, [f"m{i}".encode() for i in range(200)])
        got = sink.collect(200, timeout_s=30)
    assert sorted(r.data for r in got) == sorted(f"m{i}!".encode() for i in range(200))
    assert {r.properties["__pfn_input_topic__"] for r in got} == {src}
    assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0


def _position(serialized_b64: str) -> tuple[int, int, int]:
    mid = MessageId.deserialize(base64.b64decode(serialized_b64))
    return (mid.ledger_id(), mid.entry_id(), mid.batch_index())


def test_outputs_are_stamped_with_their_inputs_position_unless_told_not_to(
    pulsar: PulsarBroker,
) -> None:
    """Each output's `__pfn_input_msg_id__` is its own input's message id, as Pulsar's
    instance stamps it; --no-input-properties drops both stamps and keeps key and payload."""
    src = unique_topic("in")
    sent = produce(pulsar.service_url, src, [b"a", b"b", b"c"], keys=["ka", "kb", "kc"])
    positions = {
        f"{p}!": (mid.ledger_id(), mid.entry_id(), mid.batch_index())
        for p, mid in zip("abc", sent, strict=True)
    }
    for stamps in (True, False):
        out = unique_topic("out")
        config = config_for(
            pulsar.service_url, src, output=out, input_properties=stamps, subscription=f"s-{stamps}"
        )
        with subscribe_first(pulsar.service_url, out) as sink, running(exclaim, config):
            got = sink.collect(3, timeout_s=30)
        assert {(r.data, r.key) for r in got} == {(b"a!", "ka"), (b"b!", "kb"), (b"c!", "kc")}
        if stamps:
            assert {r.properties["__pfn_input_topic__"] for r in got} == {src}
            stamped = {
                r.data.decode(): _position(r.properties["__pfn_input_msg_id__"]) for r in got
            }
            assert stamped == positions
        else:
            assert [r.properties for r in got] == [{}, {}, {}]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_the_input_topic_stamp_names_each_partition_and_each_topic(
    pulsar: PulsarBroker, asynchronous: bool
) -> None:
    """A partitioned input's outputs name the partition their input came from, and a source
    of two topics names each (only a source of one unpartitioned topic is told its topic once)."""
    partitioned, plain, out = unique_topic("parts"), unique_topic("plain"), unique_topic("out")
    path = partitioned.replace("persistent://", "/admin/v2/persistent/") + "/partitions"
    admin(pulsar.admin_url, "PUT", path, 3)
    keys = [f"k{i}" for i in range(12)]
    sent = produce(pulsar.service_url, partitioned, [k.encode() for k in keys], keys=keys)
    produce(pulsar.service_url, plain, [b"p0", b"p1"])
    where = {
        f"{k}!": f"{partitioned}-partition-{m.partition()}" for k, m in zip(keys, sent, strict=True)
    }
    where |= {"p0!": plain, "p1!": plain}
    assert len(set(where.values())) > 2  # the keys spread over partitions

    async def exclaim_async(text: str) -> str:
        return text + "!"

    config = config_for(pulsar.service_url, partitioned, plain, output=out)
    handler = exclaim_async if asynchronous else exclaim
    with subscribe_first(pulsar.service_url, out) as sink, running(handler, config):
        got = sink.collect(14, timeout_s=30)
    assert {r.data.decode(): r.properties["__pfn_input_topic__"] for r in got} == where


def test_only_a_source_of_one_unpartitioned_topic_knows_its_topic(pulsar: PulsarBroker) -> None:
    """`Source.topic` (the stamp without a client call per message) is the topic its messages
    name, and is left unknown for a partitioned topic and for several topics."""
    one, parts, other = unique_topic("one"), unique_topic("parts"), unique_topic("other")
    path = parts.replace("persistent://", "/admin/v2/persistent/") + "/partitions"
    admin(pulsar.admin_url, "PUT", path, 2)
    for topics, knows in (((one,), True), ((parts,), False), ((one, other), False)):
        produce(pulsar.service_url, topics[0], [b"x"])
        broker = PulsarBroker_(config_for(pulsar.service_url, *topics, subscription="probe"))
        try:
            (source,) = broker.sources
            (msg,) = broker.receive(source, 1, 10_000)
            assert source.topic == (one if knows else None)
            assert msg.topic_name().startswith(topics[0])
        finally:
            broker.close()


def test_handler_error_nacks_and_the_message_is_retried(pulsar: PulsarBroker) -> None:
    src, out = unique_topic("in"), unique_topic("out")
    seen: dict[bytes, int] = {}

    def flaky(data: bytes) -> bytes:
        seen[data] = seen.get(data, 0) + 1
        if data == b"bad" and seen[data] < 3:
            raise ValueError("not yet")
        return data.upper()

    config = config_for(pulsar.service_url, src, output=out, redelivery_delay_ms=100)
    with subscribe_first(pulsar.service_url, out) as sink, running(flaky, config):
        produce(pulsar.service_url, src, [b"a", b"bad", b"c"])
        got = {r.data for r in sink.collect(3, timeout_s=30)}
        while b"BAD" not in got:  # at-least-once: a nacked batch may bring siblings back
            got |= {r.data for r in sink.collect(1, timeout_s=30)}
    assert got == {b"A", b"BAD", b"C"}
    assert seen[b"bad"] == 3


def test_after_the_last_retry_the_message_goes_to_the_dead_letter_topic(
    pulsar: PulsarBroker,
) -> None:
    src, out, dlq = unique_topic("in"), unique_topic("out"), unique_topic("dlq")

    def strict(text: str) -> str:
        if text.startswith("poison"):
            raise ValueError(f"cannot digest {text}")
        return text

    config = config_for(
        pulsar.service_url,
        src,
        output=out,
        max_message_retries=2,
        dead_letter_topic=dlq,
        redelivery_delay_ms=50,
    )
    with (
        subscribe_first(pulsar.service_url, dlq) as dead,
        subscribe_first(pulsar.service_url, out) as sink,
        running(strict, config),
    ):
        produce(pulsar.service_url, src, [b"ok1", b"poison-1", b"ok2"])
        outputs = sink.collect(2, timeout_s=30)
        letters = dead.collect(1, timeout_s=30)
    assert sorted(r.data for r in outputs) == [b"ok1", b"ok2"]
    (letter,) = letters
    assert letter.data == b"poison-1"
    assert letter.properties["pulsarfunc.error.type"] == "ValueError"
    assert letter.properties["pulsarfunc.error.message"] == "cannot digest poison-1"
    assert letter.properties["pulsarfunc.attempts"] == "3"
    assert letter.properties["REAL_TOPIC"] == src
    assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0


def test_at_most_once_acks_on_receipt_so_a_failure_is_not_retried(pulsar: PulsarBroker) -> None:
    src, out = unique_topic("in"), unique_topic("out")
    calls: list[bytes] = []

    def fails_once(data: bytes) -> bytes:
        calls.append(data)
        if data == b"boom":
            raise RuntimeError("lost on purpose")
        return data

    config = config_for(
        pulsar.service_url,
        src,
        output=out,
        processing_guarantee=ProcessingGuarantee.ATMOST_ONCE,
        redelivery_delay_ms=50,
    )
    with subscribe_first(pulsar.service_url, out) as sink, running(fails_once, config):
        produce(pulsar.service_url, src, [b"boom", b"x", b"y"])
        got = sink.collect(2, timeout_s=30)
    assert sorted(r.data for r in got) == [b"x", b"y"]
    assert calls.count(b"boom") == 1
    assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0


def test_manual_acks_only_what_the_function_acknowledged(pulsar: PulsarBroker) -> None:
    src = unique_topic("in")
    first: list[int] = []
    again: list[int] = []

    def ack_even(ctx: Context, text: str) -> None:
        first.append(int(text))
        if int(text) % 2 == 0:
            ctx.ack()

    def ack_all(ctx: Context, text: str) -> None:
        again.append(int(text))
        ctx.ack()

    config = config_for(pulsar.service_url, src, processing_guarantee=ProcessingGuarantee.MANUAL)
    for i in range(10):  # one message per batch, so each is acknowledged on its own
        produce(pulsar.service_url, src, [str(i).encode()])
    with running(ack_even, config):
        wait_for(lambda: len(first) == 10)
    # What was not acknowledged comes back to the next instance on the subscription.
    with running(ack_all, config):
        wait_for(lambda: len(again) >= 5)
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
    assert sorted(first) == list(range(10))
    assert sorted(set(again)) == [1, 3, 5, 7, 9]


@pytest.fixture
def dedup_namespace(pulsar: PulsarBroker) -> str:
    """A fresh namespace with broker-side deduplication, which effectively-once relies on."""
    ns = f"public/eo-{uuid.uuid4().hex[:8]}"
    admin(pulsar.admin_url, "PUT", f"/admin/v2/namespaces/{ns}", {})
    admin(pulsar.admin_url, "POST", f"/admin/v2/namespaces/{ns}/deduplication", True)
    return ns


def test_effectively_once_survives_a_replay_without_duplicates(
    pulsar: PulsarBroker, dedup_namespace: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    src = f"persistent://{dedup_namespace}/in-{suffix}"
    out = f"persistent://{dedup_namespace}/out-{suffix}"
    config = config_for(
        pulsar.service_url,
        src,
        output=out,
        processing_guarantee=ProcessingGuarantee.EFFECTIVELY_ONCE,
        namespace=dedup_namespace.split("/")[1],
    )
    produce(pulsar.service_url, src, [f"e{i}".encode() for i in range(50)])
    with running(exclaim, config):
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
    # Replay every input, as after a crash that lost the acks: the broker must drop the outputs.
    path = src.replace("persistent://", "/admin/v2/persistent/")
    sub = config.subscription_name.replace("/", "%2F")
    admin(pulsar.admin_url, "POST", f"{path}/subscription/{sub}/resetcursor/0")
    with running(exclaim, config):
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
    with subscribe_first(pulsar.service_url, out) as sink:
        got = sink.collect(50, timeout_s=30)
        with pytest.raises(TimeoutError):
            sink.collect(1, timeout_s=3)
    assert sorted(r.data for r in got) == sorted(f"e{i}!".encode() for i in range(50))


def test_several_topics_and_a_regex_pattern_feed_one_function(pulsar: PulsarBroker) -> None:
    tag = uuid.uuid4().hex[:8]
    a = f"persistent://public/default/multi-a-{tag}"
    b = f"persistent://public/default/multi-b-{tag}"
    p1 = f"persistent://public/default/pat-{tag}-1"
    p2 = f"persistent://public/default/pat-{tag}-2"
    out = unique_topic("out")
    # Topics must exist for the pattern consumer to find them at once.
    for t in (p1, p2):
        produce(pulsar.service_url, t, [])
    config = config_for(
        pulsar.service_url, a, b, f"regex:persistent://public/default/pat-{tag}-.*", output=out
    )

    def tag_topic(text: str) -> str:
        return f"{current_context().message_topic.rsplit('/', 1)[-1]}:{text}"

    with subscribe_first(pulsar.service_url, out) as sink, running(tag_topic, config):
        for t in (a, b, p1, p2):
            produce(pulsar.service_url, t, [b"x"])
        got = sink.collect(4, timeout_s=60)
    assert sorted(r.data.decode() for r in got) == sorted(
        f"{t.rsplit('/', 1)[-1]}:x" for t in (a, b, p1, p2)
    )


def test_context_publish_user_config_and_identity(pulsar: PulsarBroker) -> None:
    src, out, side = unique_topic("in"), unique_topic("out"), unique_topic("side")

    def route(ctx: Context, text: str) -> str:
        ctx.publish(side, f"{ctx.function_name}/{ctx.instance_id}:{text}", key=text)
        ctx.record_metric("length", len(text))
        times: int = ctx.user_config_value("times", 1)
        return text * times

    config = config_for(
        pulsar.service_url, src, output=out, user_config={"times": 3}, name="router", instance_id=4
    )
    with (
        subscribe_first(pulsar.service_url, out) as sink,
        subscribe_first(pulsar.service_url, side) as side_sink,
        running(route, config),
    ):
        produce(pulsar.service_url, src, [b"ab"])
        (main,) = sink.collect(1, timeout_s=30)
        (published,) = side_sink.collect(1, timeout_s=30)
    assert main.data == b"ababab"
    assert published.data == b"router/4:ab"
    assert published.key == "ab"


@dataclasses.dataclass
class Order:
    item: str
    qty: int


def test_typed_payloads_json_and_dataclass(pulsar: PulsarBroker) -> None:
    src, out = unique_topic("in"), unique_topic("out")

    def total(order: Order) -> dict[str, object]:
        return {"item": order.item, "total": order.qty * 2}

    config = config_for(
        pulsar.service_url,
        src,
        output=out,
        redelivery_delay_ms=50,
        max_message_retries=0,
        dead_letter_topic=unique_topic("dlq"),
    )
    with subscribe_first(pulsar.service_url, out) as sink, running(total, config):
        produce(
            pulsar.service_url,
            src,
            [
                json.dumps({"item": "pen", "qty": 3}).encode(),
                b"not json",
                b'{"item": "cup", "qty": 1}',
            ],
        )
        got = sink.collect(2, timeout_s=30)
    assert sorted(json.loads(r.data)["item"] for r in got) == ["cup", "pen"]
    assert {json.loads(r.data)["item"]: json.loads(r.data)["total"] for r in got} == {
        "pen": 6,
        "cup": 2,
    }


def test_a_generator_fans_out_several_outputs(pulsar: PulsarBroker) -> None:
    src, out = unique_topic("in"), unique_topic("out")

    def words(text: str) -> Iterator[str]:
        yield from text.split()

    config = config_for(pulsar.service_url, src, output=out)
    with subscribe_first(pulsar.service_url, out) as sink, running(words, config):
        produce(pulsar.service_url, src, [b"one two three"])
        got = sink.collect(3, timeout_s=30)
    assert sorted(r.data for r in got) == [b"one", b"three", b"two"]


def test_async_handler_with_concurrency(pulsar: PulsarBroker) -> None:
    import asyncio

    src, out = unique_topic("in"), unique_topic("out")

    async def slow_upper(text: str) -> str:
        await asyncio.sleep(0.05)
        return text.upper()

    config = config_for(pulsar.service_url, src, output=out, concurrency=16)
    with subscribe_first(pulsar.service_url, out) as sink, running(slow_upper, config):
        produce(pulsar.service_url, src, [f"w{i}".encode() for i in range(64)])
        got = sink.collect(64, timeout_s=30)
    assert sorted(r.data for r in got) == sorted(f"W{i}".encode() for i in range(64))


def test_outputs_the_broker_refuses_fail_their_inputs_to_the_dead_letter_topic(
    pulsar: PulsarBroker,
) -> None:
    """A group's outputs go with one receipt: a refusal must still reach every input.

    The output topic is terminated while the function's producer is open: its sends fail
    from then on (TopicTerminated), each input is retried once, then dead-lettered.
    """
    src, out, dlq = unique_topic("in"), unique_topic("out"), unique_topic("dlq")
    config = config_for(
        pulsar.service_url,
        src,
        output=out,
        max_message_retries=1,
        dead_letter_topic=dlq,
        redelivery_delay_ms=50,
    )
    first = [f"a{i}".encode() for i in range(20)]
    later = [f"b{i}".encode() for i in range(30)]
    with (
        subscribe_first(pulsar.service_url, dlq) as dead,
        subscribe_first(pulsar.service_url, out) as sink,
        running(exclaim, config),
    ):
        produce(pulsar.service_url, src, first)
        outputs = sink.collect(20, timeout_s=30)
        path = out.replace("persistent://", "/admin/v2/persistent/")
        admin(pulsar.admin_url, "POST", f"{path}/terminate")
        produce(pulsar.service_url, src, later)
        letters = dead.collect(30, timeout_s=60)
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
    assert sorted(r.data for r in outputs) == sorted(m + b"!" for m in first)
    assert sorted(r.data for r in letters) == sorted(later)  # none lost, none twice
    assert all("Terminated" in r.properties["pulsarfunc.error.message"] for r in letters)
