"""Issue 12's defects where the broker's behaviour matters, on the real Apache Pulsar broker.

a non-persistent inputs · b/c effectively-once after a failure, big producer batches, producer
names · f the stop deadline (LocalRun, SIGTERM) · g ordering keys · h a nacked producer batch
with a slow handler · j producers at start · k per-input receiver queue sizes.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from flaky import FailsOnce
from pulsar import BatchingType, ConsumerType, MessageId
from pulsar_helpers import PulsarBroker, client, produce, subscribe_first, unique_topic
from runtime_harness import admin, config_for, running, wait_backlog, wait_for

from pulsarfunc import Context
from pulsarfunc.runtime.config import (
    FunctionConfig,
    InputSpec,
    ProcessingGuarantee,
    SubscriptionType,
)

pytestmark = pytest.mark.integration

PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))
EO = ProcessingGuarantee.EFFECTIVELY_ONCE


def _namespace(pulsar_broker: PulsarBroker, **policies: object) -> str:
    ns = f"public/core-{uuid.uuid4().hex[:8]}"
    admin(pulsar_broker.admin_url, "PUT", f"/admin/v2/namespaces/{ns}", {})
    for policy, value in policies.items():
        admin(pulsar_broker.admin_url, "POST", f"/admin/v2/namespaces/{ns}/{policy}", value)
    return ns


@pytest.fixture
def dedup_ns(pulsar: PulsarBroker) -> str:
    """A namespace with deduplication, which effectively-once relies on."""
    return _namespace(pulsar, deduplication=True)


def _stats(pulsar_broker: PulsarBroker, topic: str) -> dict[str, object]:
    path = topic.replace("persistent://", "/admin/v2/persistent/")
    stats = admin(pulsar_broker.admin_url, "GET", f"{path}/stats")
    assert isinstance(stats, dict)
    return stats


def _effectively_once(
    pulsar_broker: PulsarBroker, namespace: str, **fields: Any
) -> tuple[str, str, FunctionConfig]:
    """Fresh input and output topics in `namespace`, and an effectively-once config for them."""
    tag = uuid.uuid4().hex[:8]
    src, out = f"persistent://{namespace}/in-{tag}", f"persistent://{namespace}/out-{tag}"
    config = config_for(
        pulsar_broker.service_url,
        src,
        output=out,
        processing_guarantee=EO,
        namespace=namespace.split("/")[1],
        **fields,
    )
    return src, out, config


# --- a. non-persistent inputs --------------------------------------------------------------------


def test_a_after_a_failure_later_non_persistent_messages_are_processed_not_skipped(
    pulsar: PulsarBroker,
) -> None:
    src = f"non-persistent://public/default/np-{uuid.uuid4().hex[:8]}"
    out = unique_topic("out")
    handler = FailsOnce("m3")
    config = config_for(pulsar.service_url, src, output=out, redelivery_delay_ms=100)
    with subscribe_first(pulsar.service_url, out) as sink, running(handler, config):
        # a non-persistent topic keeps nothing for a subscription made later: produce now
        produce(pulsar.service_url, src, [f"m{i}".encode() for i in range(100)])
        got = sink.collect(100, timeout_s=30)
    assert sorted(r.data for r in got) == sorted(f"m{i}".encode() for i in range(100))
    assert handler.calls.count("m3") == 2  # retried by the instance: the broker drops a nacked one


# --- b, c. effectively-once ----------------------------------------------------------------------


def test_b_effectively_once_output_of_a_message_that_failed_once_is_on_the_output_topic(
    pulsar: PulsarBroker, dedup_ns: str
) -> None:
    src, out, config = _effectively_once(pulsar, dedup_ns, redelivery_delay_ms=100)
    once = FailsOnce("m20", then=lambda text: text + "!")
    produce(pulsar.service_url, src, [f"m{i}".encode() for i in range(60)])
    with subscribe_first(pulsar.service_url, out) as sink, running(once, config):
        got = sink.collect(60, timeout_s=30)
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
        with pytest.raises(TimeoutError):
            sink.collect(1, timeout_s=2)
    assert [r.data for r in got] == [f"m{i}!".encode() for i in range(60)]  # m20 in its place


def test_c_a_producer_batch_of_1500_messages_loses_no_output_and_names_its_producer(
    pulsar: PulsarBroker, dedup_ns: str
) -> None:
    src, out, config = _effectively_once(pulsar, dedup_ns)
    with client(pulsar.service_url) as c:
        producer = c.create_producer(
            src,
            batching_enabled=True,
            batching_max_messages=2000,
            batching_max_allowed_size_in_bytes=4 * 1024 * 1024,
            batching_max_publish_delay_ms=1000,
            max_pending_messages=5000,
            block_if_queue_full=True,
        )
        ids: list[MessageId] = []
        for i in range(1500):
            producer.send_async(f"b{i}".encode(), lambda res, mid: ids.append(mid))
        producer.flush()
        producer.close()
    wait_for(lambda: len(ids) == 1500)
    entries = collections.Counter((mid.ledger_id(), mid.entry_id()) for mid in ids)
    assert max(entries.values()) > 1023  # batch indexes past 10 bits
    with subscribe_first(pulsar.service_url, out) as sink, running(lambda t: t, config):
        got = sink.collect(1500, timeout_s=60)
        publishers = _stats(pulsar, out)["publishers"]
    assert sorted(r.data for r in got) == sorted(f"b{i}".encode() for i in range(1500))
    assert isinstance(publishers, list)
    names = {p["producerName"] for p in publishers}
    assert f"{config.fqfn}@{src}@{ids[0].ledger_id()}" in names


# --- f. the stop deadline ------------------------------------------------------------------------

HANGS = """
import threading


def handler(text: str) -> str:
    if text == "stuck":
        threading.Event().wait()  # never returns
    return text
"""


def test_f_sigterm_with_a_handler_that_never_returns_exits_1_at_the_deadline_and_nothing_is_lost(
    pulsar: PulsarBroker, tmp_path: Path
) -> None:
    src, out = unique_topic("in"), unique_topic("out")
    (tmp_path / "hangs.py").write_text(HANGS)
    log = tmp_path / "log"
    sub = f"sub-{uuid.uuid4().hex[:6]}"
    args = [
        "--service-url", pulsar.service_url, "--inputs", src, "--output", out,
        "--subscription", sub, "--subscription-position", "EARLIEST",
        "--concurrency", "2", "--drain-timeout-ms", "2000",
    ]  # fmt: skip
    produce(pulsar.service_url, src, [b"stuck", b"fine"])
    with subscribe_first(pulsar.service_url, out) as sink, log.open("wb") as output:
        proc = subprocess.Popen(
            [PULSARFUNC, "run", str(tmp_path / "hangs.py"), *args], stdout=output, stderr=output
        )
        try:
            (fine,) = sink.collect(1, timeout_s=30)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            took = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert code == 1, text
    assert took < 2.0 + 5.0, text  # the deadline, then closing
    assert "stop deadline" in text
    assert fine.data == b"fine"
    # nacked: the next consumer of the subscription gets it at once
    with client(pulsar.service_url) as c:
        consumer = c.subscribe(src, sub, consumer_type=ConsumerType.Shared)
        msg = consumer.receive(30_000)
        assert msg.data() == b"stuck"
        consumer.acknowledge(msg)
        consumer.close()


# --- g. ordering keys ----------------------------------------------------------------------------


def test_g_on_key_shared_each_ordering_key_is_processed_in_order(pulsar: PulsarBroker) -> None:
    src = unique_topic("in")
    order: dict[str, list[int]] = {}
    lock = threading.Lock()

    def record(ctx: Context, text: str) -> None:
        with lock:
            order.setdefault(ctx.get_ordering_key() or "", []).append(int(text))
        time.sleep(0.001)

    config = config_for(
        pulsar.service_url,
        src,
        subscription_type=SubscriptionType.KEY_SHARED,
        concurrency=4,
    )
    with client(pulsar.service_url) as c, running(record, config):
        producer = c.create_producer(src, batching_type=BatchingType.KeyBased)
        for i in range(300):
            producer.send_async(
                str(i).encode(), None, partition_key="one", ordering_key=f"o{i % 5}"
            )
        producer.flush()
        wait_for(lambda: sum(len(v) for v in order.values()) == 300)
    assert sorted(order) == [f"o{k}" for k in range(5)]
    assert all(seq == sorted(seq) for seq in order.values())


# --- h. a nacked producer batch, slow handler ----------------------------------------------------


def test_h_a_slow_handler_does_not_process_the_siblings_of_a_nacked_batch_again(
    pulsar: PulsarBroker,
) -> None:
    src, out = unique_topic("in"), unique_topic("out")
    with client(pulsar.service_url) as c:  # one producer batch of 400 messages
        producer = c.create_producer(
            src,
            batching_enabled=True,
            batching_max_messages=1000,
            batching_max_publish_delay_ms=500,
        )
        for i in range(400):
            producer.send_async(f"s{i}".encode(), None)
        producer.flush()
        producer.close()
    once = FailsOnce("s300")

    def slow(text: str) -> str:
        time.sleep(0.001)  # groups of a few messages
        return once(text)

    config = config_for(pulsar.service_url, src, output=out, redelivery_delay_ms=200)
    with subscribe_first(pulsar.service_url, out) as sink, running(slow, config):
        got = sink.collect(400, timeout_s=60)
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
        with pytest.raises(TimeoutError):
            sink.collect(1, timeout_s=2)
    assert sorted(r.data for r in got) == sorted(f"s{i}".encode() for i in range(400))
    assert len(once.calls) == 401  # the 399 siblings the broker sent back were not processed again


# --- j. producers at start -----------------------------------------------------------------------


def test_j_an_output_topic_the_broker_will_not_create_fails_the_start_with_exit_1(
    pulsar: PulsarBroker, tmp_path: Path
) -> None:
    ns = _namespace(pulsar, autoTopicCreation={"allowAutoTopicCreation": False})
    src, out = f"persistent://{ns}/in", f"persistent://{ns}/missing-out"
    admin(pulsar.admin_url, "PUT", src.replace("persistent://", "/admin/v2/persistent/"))
    (tmp_path / "echo.py").write_text("def handler(data: bytes) -> bytes:\n    return data\n")
    began = time.monotonic()
    done = subprocess.run(
        [
            PULSARFUNC,
            "run",
            str(tmp_path / "echo.py"),
            "--service-url",
            pulsar.service_url,
            "--inputs",
            src,
            "--output",
            out,
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot produce to {out}" in done.stderr
    assert "Topic" in done.stderr  # the broker's reason (TopicNotFound)
    assert "Traceback" not in done.stderr
    assert time.monotonic() - began < 40


# --- k. per-input receiver queue sizes -----------------------------------------------------------


def test_k_each_input_consumer_gets_its_own_receiver_queue_size(pulsar: PulsarBroker) -> None:
    small, large = unique_topic("small"), unique_topic("large")
    produce(pulsar.service_url, small, [b"x"])
    produce(pulsar.service_url, large, [b"y"])
    config = config_for(pulsar.service_url, small, large, receiver_queue_size=500)
    config = config.__class__(
        **{
            **{f: getattr(config, f) for f in config.__dataclass_fields__},
            "inputs": (InputSpec(small, receiver_queue_size=7), InputSpec(large)),
        }
    )
    with running(lambda data: None, config):
        assert wait_backlog(pulsar.admin_url, small, config.subscription_name, 0) == 0
        assert wait_backlog(pulsar.admin_url, large, config.subscription_name, 0) == 0

        def permits(topic: str) -> int:
            subs = _stats(pulsar, topic)["subscriptions"]
            assert isinstance(subs, dict)
            (consumer,) = subs[config.subscription_name]["consumers"]
            return int(consumer["availablePermits"])

        # the broker counts the permits the consumer asked for: its queue, less what is out
        wait_for(lambda: 0 < permits(small) <= 7 and 400 < permits(large) <= 500)
