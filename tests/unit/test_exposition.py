"""Prometheus exposition with Pulsar's names, the 1-minute window, and the HTTP probes."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from fake_broker import FakeBroker, FakeMessage
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

from pulsarfunc.runtime.config import FunctionConfig, InputSpec
from pulsarfunc.runtime.errors import ConfigError
from pulsarfunc.runtime.exposition import (
    LABEL_NAMES,
    MetricsServer,
    Window,
    function_labels,
    registry_for,
    serving,
)
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance
from pulsarfunc.runtime.metrics import Metrics

CONFIG = FunctionConfig(
    tenant="acme",
    namespace="orders",
    name="enrich",
    instance_id=3,
    cluster_name="east",
    metrics_port=0,
    inputs=(InputSpec("persistent://acme/orders/in"),),
)
LABELS = {
    "tenant": "acme",
    "namespace": "acme/orders",
    "name": "enrich",
    "instance_id": "3",
    "cluster": "east",
    "fqfn": "acme/orders/enrich",
}
# Every name Pulsar's Python instance exposes for a function (function_stats.py, contextimpl.py),
# as prometheus_client renders it: (sample name, family type).
PULSAR_SAMPLES = {
    "pulsar_function_received_total": "counter",
    "pulsar_function_processed_successfully_total": "counter",
    "pulsar_function_user_exceptions_total": "counter",
    "pulsar_function_system_exceptions_total": "counter",
    "pulsar_function_received_1min_total": "counter",
    "pulsar_function_processed_successfully_1min_total": "counter",
    "pulsar_function_user_exceptions_1min_total": "counter",
    "pulsar_function_system_exceptions_1min_total": "counter",
    "pulsar_function_process_latency_ms_count": "summary",
    "pulsar_function_process_latency_ms_sum": "summary",
    "pulsar_function_process_latency_ms_1min_count": "summary",
    "pulsar_function_process_latency_ms_1min_sum": "summary",
    "pulsar_function_last_invocation": "gauge",
    "pulsar_function_user_metric_count": "summary",
    "pulsar_function_user_metric_sum": "summary",
}


def scrape(
    metrics: Metrics, window: Window | None = None
) -> dict[str, list[tuple[dict[str, str], float, str]]]:
    """Sample name -> [(labels, value, family type)] from the text exposition."""
    text = generate_latest(registry_for(CONFIG, metrics, window or Window(metrics))).decode()
    samples: dict[str, list[tuple[dict[str, str], float, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value, family.type))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float, str]]], name: str, **extra: str
) -> float:
    matches = [v for labels, v, _ in samples[name] if labels == {**LABELS, **extra}]
    assert len(matches) == 1, f"{name}{extra}: {samples.get(name)}"
    return matches[0]


def busy_metrics() -> Metrics:
    metrics = Metrics()
    metrics.note_received(5)
    for latency in (2.0, 3.0, 5.0):
        metrics.note_processed(latency)
    metrics.note_user_exception()
    metrics.note_user_exception()
    metrics.note_system_exception()
    metrics.record("chars", 4)
    metrics.record("chars", 6)
    metrics.record("batch", 1)
    return metrics


def test_labels_are_pulsars_with_namespace_as_tenant_slash_namespace() -> None:
    assert dict(zip(LABEL_NAMES, function_labels(CONFIG), strict=True)) == LABELS


def test_every_pulsar_python_instance_name_is_exposed_with_its_type() -> None:
    samples = scrape(busy_metrics())
    for name, kind in PULSAR_SAMPLES.items():
        assert name in samples, f"{name} missing"
        assert {t for _, _, t in samples[name]} == {kind}, name


def test_values_after_some_messages() -> None:
    samples = scrape(busy_metrics())
    assert value(samples, "pulsar_function_received_total") == 5
    assert value(samples, "pulsar_function_processed_successfully_total") == 3
    assert value(samples, "pulsar_function_user_exceptions_total") == 2
    assert value(samples, "pulsar_function_system_exceptions_total") == 1
    assert value(samples, "pulsar_function_process_latency_ms_count") == 3
    assert value(samples, "pulsar_function_process_latency_ms_sum") == 10.0
    assert value(samples, "pulsar_function_user_metric_count", metric="chars") == 2
    assert value(samples, "pulsar_function_user_metric_sum", metric="chars") == 10.0
    assert value(samples, "pulsar_function_user_metric_count", metric="batch") == 1
    assert value(samples, "pulsar_function_last_invocation") > 1.7e12  # epoch ms, as Python's
    assert value(samples, "pulsarfunc_dead_lettered_total") == 0


def test_created_samples_are_there_as_prometheus_client_makes_them() -> None:
    samples = scrape(busy_metrics())
    for name in (
        "pulsar_function_received_created",
        "pulsar_function_process_latency_ms_created",
        "pulsar_function_user_metric_created",
    ):
        assert name in samples


def test_the_one_minute_variants_count_since_the_window_started() -> None:
    now = [1000.0]
    metrics = busy_metrics()
    window = Window(metrics, clock=lambda: now[0])
    first = scrape(metrics, window)
    assert value(first, "pulsar_function_received_1min_total") == 5  # first window: since start

    now[0] += 60
    window.roll()
    metrics.note_received(2)
    metrics.note_processed(7.0)
    later = scrape(metrics, window)
    assert value(later, "pulsar_function_received_total") == 7
    assert value(later, "pulsar_function_received_1min_total") == 2
    assert value(later, "pulsar_function_processed_successfully_1min_total") == 1
    assert value(later, "pulsar_function_user_exceptions_1min_total") == 0
    assert value(later, "pulsar_function_process_latency_ms_1min_count") == 1
    assert value(later, "pulsar_function_process_latency_ms_1min_sum") == 7.0
    assert value(later, "pulsar_function_received_1min_created") == 1060.0


def test_process_and_python_collectors_are_included_as_in_pulsars_default_registry() -> None:
    samples = scrape(Metrics())
    assert "python_info" in samples
    assert any(name.startswith("process_") for name in samples)


# --- the HTTP server ----------------------------------------------------------------------


class FakeHealth:
    def __init__(self) -> None:
        self.alive = True
        self.ready = False


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    metrics = busy_metrics()
    with serving(CONFIG, metrics) as srv:
        assert srv is not None
        yield srv


def get(port: int, path: str, **headers: str) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, exc.headers["Content-Type"], body


def test_metrics_are_served_as_prometheus_text(server: MetricsServer) -> None:
    status, content_type, body = get(server.port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'pulsar_function_received_total{cluster="east"' in body
    root_status, _, root_body = get(server.port, "/")  # Pulsar's instances answer on / too
    assert root_status == 200
    assert 'pulsar_function_received_total{cluster="east"' in root_body


def test_openmetrics_when_the_scraper_asks_for_it(server: MetricsServer) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    status, content_type, body = get(server.port, "/metrics", Accept=accept)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_probes_before_the_instance_exists_are_alive_not_ready(server: MetricsServer) -> None:
    assert get(server.port, "/healthz")[:1] == (200,)
    assert get(server.port, "/readyz")[0] == 503


def test_probes_follow_the_watched_instance(server: MetricsServer) -> None:
    health = FakeHealth()
    server.watch(health)
    assert get(server.port, "/readyz") == (503, "text/plain; charset=utf-8", "not ready\n")
    health.ready = True
    assert get(server.port, "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
    health.alive = False
    assert get(server.port, "/healthz") == (503, "text/plain; charset=utf-8", "not alive\n")


def test_unknown_paths_are_404_and_say_what_exists(server: MetricsServer) -> None:
    status, _, body = get(server.port, "/nope")
    assert status == 404
    assert "/metrics" in body


def test_no_metrics_port_means_no_server() -> None:
    with serving(FunctionConfig(), Metrics()) as srv:
        assert srv is None


def test_a_port_in_use_is_a_config_error_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port}") as info:
            MetricsServer(FunctionConfig(metrics_port=port), Metrics())
    assert "--metrics-port" in info.value.hint


# --- the instance's liveness and readiness -------------------------------------------------


def test_instance_is_ready_once_consuming_and_not_after_stop() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"x"))
    instance = Instance(CONFIG, inspect_handler(lambda data: data), broker)
    assert not instance.ready
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_for(lambda: instance.ready)
    assert instance.alive
    instance.stop()
    assert not instance.ready
    assert instance.alive  # draining is not death: no restart in the middle of a graceful stop
    thread.join(10)


class _Crash(BaseException):
    """Escapes the receive loop's `except Exception`, as a bug in it would."""


class CrashingBroker(FakeBroker):
    def receive(self, source: Any, max_messages: int, timeout_ms: int) -> Any:
        raise _Crash


def test_instance_is_not_alive_when_a_receiver_thread_died(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the crash is the point
    instance = Instance(CONFIG, inspect_handler(lambda data: data), CrashingBroker())
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_for(lambda: not instance.alive)
    assert not instance.ready
    instance.stop()
    thread.join(10)


def test_exception_gauges_carry_the_text_at_most_five_times_a_minute() -> None:
    now = [1000.0]
    metrics = Metrics(clock=lambda: now[0])
    for i in range(7):
        metrics.note_user_exception(f"bad input {i}")
    metrics.note_system_exception("broker away")
    samples = scrape(metrics)
    user = {labels["error"] for labels, _, _ in samples["pulsar_function_user_exception"]}
    assert user == {f"bad input {i}" for i in range(5)}  # Pulsar's limit: 5 per 60 s
    assert value(samples, "pulsar_function_system_exception", error="broker away") == 1.0
    assert value(samples, "pulsar_function_user_exceptions_total") == 7  # the counter counts all
    now[0] += 60.0
    metrics.note_user_exception("bad input 7")
    user = {labels["error"] for labels, _, _ in scrape(metrics)["pulsar_function_user_exception"]}
    assert "bad input 7" in user


def test_exception_texts_kept_are_bounded() -> None:
    now = [0.0]
    metrics = Metrics(clock=lambda: now[0])
    for i in range(200):
        now[0] += 60.0  # a new minute each time: never rate-limited
        metrics.note_user_exception(f"error {i}")
    texts = metrics.snapshot().user_errors
    assert len(texts) == 50
    assert texts[-1] == "error 199"
