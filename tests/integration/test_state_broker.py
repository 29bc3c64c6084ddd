"""Managed state on Apache Pulsar's own stream storage (BookKeeper's table service)."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from images import built
from pulsar_helpers import StateBroker, produce, subscribe_first, unique_topic
from runtime_harness import config_for, running, wait_backlog, wait_for

from pulsarfunc import Context
from pulsarfunc.runtime.config import FunctionConfig, SubscriptionType
from pulsarfunc.runtime.discovery import load
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.resolve import resolve
from pulsarfunc.runtime.state import BookKeeperState, table_of

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "pulsar_examples"
PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))


def _store(stateful: StateBroker, config: FunctionConfig) -> BookKeeperState:
    """The function's table, read directly (as Pulsar's own instance would open it)."""
    return BookKeeperState(stateful.state_url, *table_of(config))


def _config(stateful: StateBroker, src: str, out: str = "", **fields: object) -> FunctionConfig:
    base = config_for(stateful.broker.service_url, src, output=out, **fields)
    return dataclasses.replace(base, state_storage_service_url=stateful.state_url)


def counts(ctx: Context, word: str) -> None:
    ctx.incr_counter(word, 1)


def test_counters_survive_a_restart_of_the_function(pulsar_with_state: StateBroker) -> None:
    src = unique_topic("state-in")
    config = _config(pulsar_with_state, src, name="restarts-" + src[-8:])
    for batch in (["a", "b", "a"], ["a", "c"]):  # one instance, stopped, then another
        with running(counts, config):
            produce(pulsar_with_state.broker.service_url, src, [w.encode() for w in batch])
            assert (
                wait_backlog(pulsar_with_state.broker.admin_url, src, config.subscription_name, 0)
                == 0
            )
    store = _store(pulsar_with_state, config)
    assert (store.counter("a"), store.counter("b"), store.counter("c")) == (3, 1, 1)
    assert store.counter("never") is None


def test_two_instances_incrementing_the_same_counters_give_the_exact_sum(
    pulsar_with_state: StateBroker,
) -> None:
    src = unique_topic("state-sum")
    config = _config(pulsar_with_state, src, name="sums-" + src[-8:])

    def adds(ctx: Context, number: int) -> None:
        ctx.incr_counter("total", number)
        ctx.incr_counter("messages", 1)

    numbers = list(range(1, 401))
    second = dataclasses.replace(config, instance_id=1)
    assert config.subscription_type is SubscriptionType.SHARED
    with running(adds, config), running(adds, second):
        produce(pulsar_with_state.broker.service_url, src, [str(n).encode() for n in numbers])
        assert (
            wait_backlog(
                pulsar_with_state.broker.admin_url, src, config.subscription_name, 0, timeout_s=60
            )
            == 0
        )
    store = _store(pulsar_with_state, config)
    assert store.counter("total") == sum(numbers)
    assert store.counter("messages") == len(numbers)


def test_put_state_and_get_state_round_trip_bytes(pulsar_with_state: StateBroker) -> None:
    src, out = unique_topic("state-bytes"), unique_topic("state-bytes-out")
    config = _config(pulsar_with_state, src, out, name="bytes-" + src[-8:])

    def keeps(ctx: Context, data: bytes) -> bytes:
        ctx.put_state("last", data)
        got = ctx.get_state("last")
        assert got is not None
        return got

    payloads = [bytes(range(256)), b"\x00", "é".encode()]
    with subscribe_first(pulsar_with_state.broker.service_url, out) as sink, running(keeps, config):
        for payload in payloads:  # one by one: each output is that input's stored value
            produce(pulsar_with_state.broker.service_url, src, [payload])
            (got,) = sink.collect(1, timeout_s=30)
            assert got.data == payload
    assert _store(pulsar_with_state, config).get("last") == payloads[-1]


def test_pulsar_s_wordcount_example_runs_unchanged(pulsar_with_state: StateBroker) -> None:
    src, out = unique_topic("wc-in"), unique_topic("wc-out")
    name = "wordcount-" + src[-8:]
    details = {
        "tenant": "public",
        "namespace": "default",
        "name": name,
        "className": "wordcount_function.WordCountFunction",
        "runtime": "PYTHON",
        "source": {"inputSpecs": {src: {}}, "subscriptionPosition": "EARLIEST"},
        "sink": {"topic": out},
    }
    config = resolve(
        ["--function-details", json.dumps(details), "--service-url",
         pulsar_with_state.broker.service_url, "--state-storage-service-url",
         pulsar_with_state.state_url],
        {},
    )  # fmt: skip
    loaded = load(str(EXAMPLES / "wordcount_function.py"))
    handler = inspect_handler(loaded.obj, where=loaded.where)
    lines = ["the quick brown fox", "jumps over the lazy dog", "the end"]
    with (
        subscribe_first(pulsar_with_state.broker.service_url, out) as sink,
        running(handler, config),
    ):
        produce(pulsar_with_state.broker.service_url, src, [line.encode() for line in lines])
        got = sink.collect(3, timeout_s=60)
    assert sorted(r.data.decode() for r in got) == sorted(line + "!" for line in lines)
    store = _store(pulsar_with_state, config)
    assert table_of(config) == ("public_default", name)
    assert store.counter("the") == 3
    assert store.counter("fox") == 1
    wait_for(lambda: store.counter("end") == 1)


def test_an_unreachable_state_storage_fails_the_start(
    pulsar_with_state: StateBroker, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fn = tmp_path / "fn.py"
    fn.write_text("def handler(data: bytes) -> bytes:\n    return data\n")
    proc = subprocess.run(
        [PULSARFUNC, "run", str(fn), "--service-url", pulsar_with_state.broker.service_url,
         "--inputs", unique_topic("nostate"), "--state-storage-service-url",
         f"bk://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"cannot reach the state storage bk://127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.docker
def test_the_counter_example_s_image_counts_in_pulsar_s_state_storage(
    pulsar_with_state: StateBroker,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    image_tag: Callable[[str], str],
) -> None:
    """`pulsarfunc[state]` in its requirements puts the state client into the image."""
    tag = image_tag("counter")
    built([str(Path(__file__).resolve().parents[2] / "examples" / "counter"), "-t", tag])
    broker = pulsar_with_state.broker
    src, out = unique_topic("counter-in"), unique_topic("counter-out")
    name = "counter-" + src[-8:]
    container = docker_client.containers.run(
        tag,
        ["--service-url", broker.internal_service_url, "--inputs", src, "--output", out,
         "--name", name, "--subscription-position", "EARLIEST",
         "--state-storage-service-url", pulsar_with_state.internal_state_url],
        detach=True, network=broker.network, labels=docker_labels, read_only=True,
    )  # fmt: skip
    try:
        with subscribe_first(broker.service_url, out) as sink:
            produce(broker.service_url, src, [b"a b a"])
            (got,) = sink.collect(1, timeout_s=60)
    finally:
        logs = container.logs().decode(errors="replace")
        container.remove(force=True)
    assert got.data == b"a=1 b=1 a=2", logs
    store = BookKeeperState(pulsar_with_state.state_url, "public_default", name)
    assert (store.counter("a"), store.get("last-line")) == (2, b"a b a")
