"""Operations against the real broker, in-process: metrics, probes, log topic, JSON logs."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pulsar_helpers import PulsarBroker, Received, produce, subscribe_first, unique_topic
from runtime_harness import config_for, running, wait_for

from pulsarfunc import Context
from pulsarfunc.runtime import broker as broker_module
from pulsarfunc.runtime.config import LogFormat

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body); status 0 while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body
    except (ConnectionError, urllib.error.URLError):
        return 0, ""


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    status, text = http_get(port, "/metrics")
    assert status == 200, text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def only(samples: Samples, metric: str, /, **labels: str) -> float:
    """The one value of `metric` whose labels include `labels`."""
    found = [v for ls, v in samples.get(metric, []) if labels.items() <= ls.items()]
    assert len(found) == 1, f"{metric} {labels}: {samples.get(metric)}"
    return found[0]


def pulsar_labels(name: str, instance_id: int) -> dict[str, str]:
    """Pulsar's labels of a function in public/default on the standalone cluster."""
    return {
        "tenant": "public",
        "namespace": "public/default",
        "name": name,
        "instance_id": str(instance_id),
        "cluster": "standalone",
        "fqfn": f"public/default/{name}",
    }


def counting(context: Context, text: str) -> str:
    """Records a user metric; fails on 'bad' inputs (a user exception)."""
    if text.startswith("bad"):
        raise ValueError(f"refusing {text}")
    context.record_metric("chars", len(text))
    return text.upper()


def test_metrics_of_a_running_instance_have_pulsars_names_labels_and_values(
    pulsar: PulsarBroker,
) -> None:
    src, out, dlq = unique_topic("in"), unique_topic("out"), unique_topic("dlq")
    port = free_port()
    config = config_for(
        pulsar.service_url,
        src,
        output=out,
        name="counting",
        tenant="public",
        namespace="default",
        instance_id=4,
        cluster_name="standalone",
        metrics_port=port,
        max_message_retries=0,  # a failure goes straight to the DLQ: exactly one user exception
        dead_letter_topic=dlq,
    )
    payloads = [b"ab", b"cde", b"bad-1", b"f", b"ghij", b"bad-2", b"k", b"lmnop"]
    good = [p for p in payloads if not p.startswith(b"bad")]
    with subscribe_first(pulsar.service_url, out) as sink, running(counting, config):
        produce(pulsar.service_url, src, payloads)
        sink.collect(len(good), timeout_s=30)
        wait_for(lambda: only(scrape(port), "pulsarfunc_dead_lettered_total") == 2)
        samples = scrape(port)

    labels = pulsar_labels("counting", 4)
    assert only(samples, "pulsar_function_received_total") == len(payloads)
    assert only(samples, "pulsar_function_processed_successfully_total") == len(good)
    assert only(samples, "pulsar_function_user_exceptions_total") == 2
    assert only(samples, "pulsar_function_system_exceptions_total") == 0
    for bad in ("bad-1", "bad-2"):  # Pulsar's per-error gauge, the exception text as label
        assert only(samples, "pulsar_function_user_exception", error=f"refusing {bad}") == 1.0
    assert only(samples, "pulsar_function_received_1min_total") == len(payloads)
    assert only(samples, "pulsar_function_process_latency_ms_count") == len(good)
    assert only(samples, "pulsar_function_process_latency_ms_sum") > 0
    assert only(samples, "pulsar_function_last_invocation") > 1.7e12
    assert only(samples, "pulsar_function_user_metric_count", metric="chars") == len(good)
    assert only(samples, "pulsar_function_user_metric_sum", metric="chars") == sum(map(len, good))
    for name in ("pulsar_function_received_total", "pulsar_function_user_metric_count"):
        (sample_labels, _), *_ = samples[name]
        assert {k: sample_labels[k] for k in labels} == labels


def test_readyz_turns_ready_once_subscribed(
    pulsar: PulsarBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = unique_topic("in")
    port = free_port()
    connect = threading.Event()
    original = broker_module.PulsarBroker.__init__

    def held(self: Any, *args: Any) -> None:
        connect.wait(30)  # the metrics server is up; the subscription waits for the test
        original(self, *args)

    monkeypatch.setattr(broker_module.PulsarBroker, "__init__", held)
    config = config_for(pulsar.service_url, src, metrics_port=port)
    checked = threading.Event()
    entered: list[bool] = []

    def start() -> None:
        with running(lambda data: data, config):
            entered.append(True)
            checked.wait(60)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    wait_for(lambda: http_get(port, "/healthz")[0] != 0)
    assert http_get(port, "/healthz") == (200, "ok\n")  # alive while connecting
    assert http_get(port, "/readyz") == (503, "not ready\n")
    connect.set()
    wait_for(lambda: http_get(port, "/readyz")[0] == 200)
    assert http_get(port, "/readyz") == (200, "ready\n")
    checked.set()
    thread.join(60)
    assert entered == [True]


def chatty(context: Context, text: str) -> str:
    context.get_logger().info("handling %s", text)
    return text


def test_log_topic_receives_the_functions_records(pulsar: PulsarBroker) -> None:
    src, logs = unique_topic("in"), unique_topic("logs")
    config = config_for(pulsar.service_url, src, name="chatty", instance_id=1, log_topic=logs)
    with subscribe_first(pulsar.service_url, logs) as log_sink, running(chatty, config):
        ids = produce(pulsar.service_url, src, [b"one", b"two"])
        records: list[Received] = []
        while len(records) < 2:  # the runtime's own start-up lines come first
            (got,) = log_sink.collect(1, timeout_s=30)
            if got.data.startswith(b"handling"):
                records.append(got)

    assert sorted(r.data for r in records) == [b"handling one", b"handling two"]
    for record in records:
        assert record.properties["loglevel"] == "INFO"
        assert record.properties["logger"] == "pulsarfunc.function.chatty"
        assert record.properties["fqn"] == "public/default/chatty"
        assert record.properties["instance"] == "1"
        assert record.properties["topic"] == src
    assert {r.properties["message_id"] for r in records} == {str(i) for i in ids}


def test_json_log_format_writes_one_object_per_line(
    pulsar: PulsarBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    src = unique_topic("in")
    config = config_for(pulsar.service_url, src, name="chatty", log_format=LogFormat.JSON)
    out: list[str] = []

    def logged() -> bool:
        out.append(capsys.readouterr().out)
        return "handling json" in "".join(out)

    with running(chatty, config):
        produce(pulsar.service_url, src, [b"json"])
        wait_for(logged)
    out.append(capsys.readouterr().out)

    docs = [json.loads(line) for line in "".join(out).splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message", "fqfn"} <= doc.keys() for doc in docs)
    (handled,) = [doc for doc in docs if doc["message"] == "handling json"]
    assert handled["level"] == "INFO"
    assert handled["logger"] == "pulsarfunc.function.chatty"
    assert handled["fqfn"] == "public/default/chatty"
