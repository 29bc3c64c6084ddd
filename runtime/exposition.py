"""`--metrics-port`: Prometheus metrics with Pulsar's names, and the liveness/readiness probes.

    GET /metrics (and /)   the instance's metrics, named, typed and labelled as Pulsar's Python
                           instance names them, so existing dashboards and alerts keep working
    GET /healthz           liveness: the process answers and the instance's threads are alive
    GET /readyz            readiness: subscribed and consuming, not stopping

Nothing here runs per message. The collector reads `Metrics.snapshot()` when it is scraped, and
a timer thread keeps the snapshot taken at the start of each 60 s window, the base of the `_1min`
variants (Pulsar zeroes those every 60 s; we subtract, which reads the same). The registry is
private: only these metrics, plus process_* and python_* as Pulsar's default registry has them.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.errors import ConfigError
from pulsarfunc.runtime.metrics import Metrics, Snapshot, Summary

__all__ = [
    "LABEL_NAMES",
    "WINDOW_S",
    "FunctionCollector",
    "Health",
    "MetricsServer",
    "Window",
    "function_labels",
    "registry_for",
    "serving",
]

_log = logging.getLogger("pulsarfunc.metrics")

PREFIX = "pulsar_function_"
#: Pulsar's metric labels, in Pulsar's order (function_stats.py `metrics_label_names`).
LABEL_NAMES = ("tenant", "namespace", "name", "instance_id", "cluster", "fqfn")
#: Length of the window of the `_1min` variants.
WINDOW_S = 60.0

# Pulsar's counters: (Snapshot field, name without `_total`, help text as Pulsar words it).
_COUNTERS = (
    ("received", "received", "Total number of messages received from source."),
    (
        "processed_successfully",
        "processed_successfully",
        "Total number of messages processed successfully.",
    ),
    ("system_exceptions", "system_exceptions", "Total number of system exceptions."),
    ("user_exceptions", "user_exceptions", "Total number of user exceptions."),
)


def function_labels(config: FunctionConfig) -> tuple[str, ...]:
    """Label values for LABEL_NAMES; `namespace` is "tenant/namespace", as in Pulsar."""
    return (
        config.tenant,
        f"{config.tenant}/{config.namespace}",
        config.name,
        str(config.instance_id),
        config.cluster_name,
        config.fqfn,
    )


class Window:
    """The snapshot at the start of the current 60 s window; `roll` starts the next one."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._base = Snapshot()  # the first window starts at zero, like Pulsar's counters
        self._started = clock()

    def roll(self) -> None:
        base = self._metrics.snapshot()
        with self._lock:
            self._base, self._started = base, self._clock()

    def base(self) -> tuple[Snapshot, float]:
        """The window's starting snapshot and when the window started (epoch seconds)."""
        with self._lock:
            return self._base, self._started


class FunctionCollector(Collector):
    """Pulsar's function metrics computed from a `Metrics` snapshot at scrape time."""

    def __init__(
        self,
        metrics: Metrics,
        labels: tuple[str, ...],
        window: Window,
        *,
        created: float | None = None,
    ) -> None:
        self._metrics = metrics
        self._labels = list(labels)
        self._window = window
        self._created = time.time() if created is None else created

    def collect(self) -> Iterable[Metric]:
        now = self._metrics.snapshot()
        base, window_start = self._window.base()
        labels, created = self._labels, self._created
        for field, name, doc in _COUNTERS:
            total = CounterMetricFamily(PREFIX + name, doc, labels=LABEL_NAMES)
            total.add_metric(labels, getattr(now, field), created=created)
            yield total
            # Pulsar's Python instance spells it <name>_1min_total (`_1min` before `_total`).
            recent = CounterMetricFamily(
                f"{PREFIX}{name}_1min", doc[:-1] + " in the last 1 minute.", labels=LABEL_NAMES
            )
            recent.add_metric(
                labels, getattr(now, field) - getattr(base, field), created=window_start
            )
            yield recent
        yield _summary(
            "process_latency_ms",
            "Process latency in milliseconds.",
            [(labels, now.process_latency_ms)],
            created,
        )
        since = Summary(
            now.process_latency_ms.count - base.process_latency_ms.count,
            now.process_latency_ms.total - base.process_latency_ms.total,
        )
        yield _summary(
            "process_latency_ms_1min",
            "Process latency in milliseconds in the last 1 minute.",
            [(labels, since)],
            window_start,
        )
        last = GaugeMetricFamily(
            PREFIX + "last_invocation",
            "The timestamp of the last invocation of the function.",
            labels=LABEL_NAMES,
        )
        last.add_metric(labels, float(now.last_invocation_ms))
        yield last
        for kind, texts in (("user", now.user_errors), ("system", now.system_errors)):
            gauge = GaugeMetricFamily(
                f"{PREFIX}{kind}_exception",
                f"Exception from {kind} code.",  # Pulsar's help text
                labels=[*LABEL_NAMES, "error"],
            )
            for text in texts:
                gauge.add_metric([*labels, text], 1.0)
            yield gauge
        yield _summary(
            "user_metric",
            "Pulsar Function user defined metric",
            [([*labels, name], s) for name, s in sorted(now.user_metrics.items())],
            created,
            extra_label="metric",
        )
        own = (  # pulsarfunc's own counters: Pulsar has no such metrics
            (
                "pulsarfunc_dead_lettered",
                "Messages sent to the dead-letter topic (pulsarfunc's own; Pulsar has no such "
                "metric).",
                now.dead_lettered,
            ),
            (
                "pulsarfunc_redelivered_copies_skipped",
                "Redelivered copies of messages already settled, acknowledged without processing.",
                now.copies_skipped,
            ),
            (
                "pulsarfunc_windows_fired",
                "Windows given to a window function's handler.",
                now.windows_fired,
            ),
            (
                "pulsarfunc_window_late_messages",
                "Event-time messages older than the watermark: sent to the late-data topic, or "
                "dropped (acknowledged) when none is set.",
                now.window_late,
            ),
            (
                "pulsarfunc_window_overflow_messages",
                "Messages refused by a window holding --max-window-messages already (failed, "
                "so retried or dead-lettered).",
                now.window_overflow,
            ),
            (
                "pulsarfunc_window_skipped_messages",
                "Messages that left a window function's windows without being in any (a count "
                "length with a time slide, or the reverse, let them through between firings).",
                now.window_skipped,
            ),
        )
        for name, text, value in own:
            counter = CounterMetricFamily(name, text, labels=LABEL_NAMES)
            counter.add_metric(labels, value, created=created)
            yield counter


def _summary(
    name: str,
    doc: str,
    rows: Iterable[tuple[list[str], Summary]],
    created: float,
    *,
    extra_label: str = "",
) -> Metric:
    """A summary family (count and sum, no quantiles) with prometheus_client's `_created`."""
    names = [*LABEL_NAMES, extra_label] if extra_label else list(LABEL_NAMES)
    family = SummaryMetricFamily(PREFIX + name, doc, labels=names)
    for values, summary in rows:
        family.add_metric(values, summary.count, summary.total)
        family.add_sample(
            PREFIX + name + "_created", dict(zip(names, values, strict=True)), created
        )
    return family


def registry_for(config: FunctionConfig, metrics: Metrics, window: Window) -> CollectorRegistry:
    """A private registry: the function's metrics, plus the process and Python collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FunctionCollector(metrics, function_labels(config), window))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Health(Protocol):
    """What the probes ask of a running instance (`Instance` has both)."""

    @property
    def alive(self) -> bool: ...

    @property
    def ready(self) -> bool: ...


class _Starting:
    """Health before the instance exists: alive (connecting), not ready."""

    alive = True
    ready = False


@dataclass
class _Routes:
    registry: CollectorRegistry
    health: Health


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
        routes = self.server.routes
        if path in ("/", "/metrics"):
            encode, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encode(routes.registry), content_type)
        elif path == "/healthz":
            alive = routes.health.alive
            self._reply(200 if alive else 503, b"ok\n" if alive else b"not alive\n")
        elif path == "/readyz":
            ready = routes.health.ready
            self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _reply(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes and probes come every few seconds: not worth a log line each."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    routes: _Routes


class MetricsServer:
    """The HTTP server of one instance, on its own daemon threads."""

    def __init__(self, config: FunctionConfig, metrics: Metrics, *, host: str = "") -> None:
        port = config.metrics_port or 0
        self._window = Window(metrics)
        self._stop = threading.Event()
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on port {port}: {exc.strerror or exc}",
                "choose another --metrics-port, or 0 for any free port",
            ) from exc
        self._server.routes = _Routes(registry_for(config, metrics, self._window), _Starting())
        self.port: int = self._server.server_address[1]
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="pf-metrics", daemon=True),
            threading.Thread(target=self._roll_windows, name="pf-metrics-1min", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        _log.info("metrics on :%d/metrics, probes /healthz and /readyz", self.port)

    def watch(self, health: Health) -> None:
        """Answer the probes from `health` (the instance) from now on."""
        self._server.routes.health = health

    def _roll_windows(self) -> None:
        while not self._stop.wait(WINDOW_S):
            self._window.roll()

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(5)


@contextlib.contextmanager
def serving(config: FunctionConfig, metrics: Metrics) -> Iterator[MetricsServer | None]:
    """Serve metrics and probes while the block runs; None when --metrics-port is not set."""
    if config.metrics_port is None:
        yield None
        return
    server = MetricsServer(config, metrics)
    try:
        yield server
    finally:
        server.close()
