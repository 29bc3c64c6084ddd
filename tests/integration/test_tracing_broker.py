"""--tracing on the real broker: two chained functions continue the trace of their input.

In-process, the spans go to the SDK's in-memory exporter (set as the process's tracer provider,
as a function's own module would): they must form one trace per input. Through the command
line, each function exports with the SDK configured from OTEL_* variables (the console
exporter), and its last spans must be out before the process exits. Built as an image, a
function gets OpenTelemetry by listing `pulsarfunc[otel]` in its requirements.txt.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
from images import built
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pulsar_helpers import PulsarBroker, produce, subscribe_first, unique_topic
from runtime_harness import config_for, running, wait_for

pytestmark = pytest.mark.integration

FNS = Path(__file__).parent / "fns"
PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))
TRACE_IDS = (0x0AF7651916CD43DD8448EB211C80319C, 0x4BF92F3577B34DA6A3CE929D0E0E4736)
PARENT_ID = 0xB7AD6B7169203331


def traceparent(trace_id: int, span_id: int = PARENT_ID) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def trace_id_of(properties: dict[str, str]) -> int:
    return int(properties["traceparent"].split("-")[1], 16)


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider, keeping spans in memory (set once per process)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        trace.set_tracer_provider(provider)
    assert isinstance(provider, TracerProvider)
    exporters: list[InMemorySpanExporter] = [
        p.span_exporter  # type: ignore[attr-defined]
        for p in provider._active_span_processor._span_processors
        if isinstance(getattr(p, "span_exporter", None), InMemorySpanExporter)
    ]
    assert exporters, "the process has a tracer provider of its own: cannot catch spans"
    return exporters[0]


def tagged(text: str) -> str:
    """Function A: its own span nests under the message's process span."""
    with trace.get_tracer("fn-a").start_as_current_span("tag"):
        return text + "-a"


def suffixed(text: str) -> str:
    """Function B."""
    return text + "-b"


def test_two_chained_functions_continue_the_trace_of_the_first_input(
    pulsar: PulsarBroker, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    src, mid, out = unique_topic("in"), unique_topic("mid"), unique_topic("out")
    first = config_for(pulsar.service_url, src, output=mid, name="trace-a", tracing=True)
    second = config_for(pulsar.service_url, mid, output=out, name="trace-b", tracing=True)
    with (
        subscribe_first(pulsar.service_url, out) as sink,
        running(tagged, first),
        running(suffixed, second),
    ):
        produce(
            pulsar.service_url,
            src,
            [b"x", b"y", b"z"],
            properties=[
                {"traceparent": traceparent(TRACE_IDS[0]), "tracestate": "ven=1"},
                {"traceparent": traceparent(TRACE_IDS[1])},
                {},  # no trace context: function A starts the trace
            ],
        )
        got = {r.data: r.properties for r in sink.collect(3, timeout_s=30)}
        wait_for(lambda: len(exporter.get_finished_spans()) >= 3 * 5)
    assert set(got) == {b"x-a-b", b"y-a-b", b"z-a-b"}
    assert trace_id_of(got[b"x-a-b"]) == TRACE_IDS[0]
    assert trace_id_of(got[b"y-a-b"]) == TRACE_IDS[1]
    assert got[b"x-a-b"]["tracestate"] == "ven=1"

    spans = exporter.get_finished_spans()
    for data, props in got.items():
        chain = _chain(spans, trace_id_of(props))
        names = [(s.name, s.kind) for s in chain]
        assert names == [
            (f"process {src}", SpanKind.CONSUMER),
            ("tag", SpanKind.INTERNAL),
            (f"send {mid}", SpanKind.PRODUCER),
            (f"process {mid}", SpanKind.CONSUMER),
            (f"send {out}", SpanKind.PRODUCER),
        ], data
        a_process, tag, a_send, b_process, b_send = chain
        expected_root = None if data == b"z-a-b" else PARENT_ID
        assert (a_process.parent.span_id if a_process.parent else None) == expected_root
        assert _parent(tag) == _parent(a_send) == _id(a_process)
        assert _parent(b_process) == _id(a_send)  # B continues from A's output
        assert _parent(b_send) == _id(b_process)
        assert props["traceparent"].split("-")[2] == f"{_id(b_send):016x}"
        for process, fqfn, subscription in (
            (a_process, "public/default/trace-a", first.subscription_name),
            (b_process, "public/default/trace-b", second.subscription_name),
        ):
            attributes = dict(process.attributes or {})
            assert attributes["messaging.system"] == "pulsar"
            assert attributes["faas.name"] == fqfn
            assert attributes["messaging.consumer.group.name"] == subscription
            assert str(attributes["messaging.message.id"]).startswith("(")


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _chain(spans: Any, trace_id: int) -> list[ReadableSpan]:
    """The spans of one trace, each after its parent (by start time among siblings)."""
    mine = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]
    ordered = sorted(mine, key=lambda s: s.start_time or 0)
    assert len(ordered) == 5, [s.name for s in ordered]
    return ordered


def console_spans(output: str) -> list[dict[str, Any]]:
    """The spans the console exporter printed (indented JSON objects among the log lines)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    position = 0
    while (start := output.find("\n{\n", position)) >= 0:
        span, position = decoder.raw_decode(output, start + 1)
        found.append(span)
    return found


def test_through_the_command_line_each_function_exports_its_spans_before_exiting(
    pulsar: PulsarBroker, tmp_path: Path
) -> None:
    src, mid, out = unique_topic("in"), unique_topic("mid"), unique_topic("out")
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "chain"}
    common = ["--service-url", pulsar.service_url, "--subscription-position", "EARLIEST"]
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, inputs, output in (("a", src, mid), ("b", mid, out)):
            argv = [
                PULSARFUNC,
                "run",
                str(FNS / "exclaim.py"),
                "--tracing",
                "--name",
                f"otel-{name}",
            ]
            argv += ["--inputs", inputs, "--output", output, *common]
            with logs[name].open("wb") as log:
                procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))
        with subscribe_first(pulsar.service_url, out) as sink:
            produce(pulsar.service_url, src, [b"hi"], properties={"traceparent": traceparent(7)})
            (got,) = sink.collect(1, timeout_s=60)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0, 0], {name: log.read_text()[-2000:] for name, log in logs.items()}
    assert got.data == b"hi!!"
    assert trace_id_of(got.properties) == 7
    a, b = (console_spans(logs[name].read_text()) for name in ("a", "b"))
    assert [s["name"] for s in a] == [f"send {mid}", f"process {src}"]  # ended child first
    assert [s["name"] for s in b] == [f"send {out}", f"process {mid}"]
    for span in [*a, *b]:
        assert span["context"]["trace_id"] == f"0x{7:032x}"
        assert span["resource"]["attributes"]["service.name"] == "chain"
    a_send, a_process = a
    b_send, b_process = b
    assert a_process["parent_id"] == f"0x{PARENT_ID:016x}"
    assert b_process["parent_id"] == a_send["context"]["span_id"]
    assert got.properties["traceparent"].split("-")[2] == b_send["context"]["span_id"][2:]
    assert a_process["attributes"]["faas.name"] == "public/default/otel-a"


@pytest.mark.docker
def test_an_image_with_pulsarfunc_otel_in_its_requirements_traces(
    pulsar: PulsarBroker,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    image_tag: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The extra reaches the image through requirements.txt; an image without it refuses
    --tracing with exit 2 and the install line."""
    traced, plain = image_tag("otel"), image_tag("no-otel")
    for tag, requirements in ((traced, "pulsarfunc[otel]\n"), (plain, "")):
        fn = tmp_path / tag.rsplit(":", 1)[-1]
        fn.mkdir()
        shutil.copy(FNS / "exclaim.py", fn / "handler.py")
        (fn / "requirements.txt").write_text(requirements)
        built([str(fn), "-t", tag])
    src, out = unique_topic("in"), unique_topic("out")
    flags = ["--service-url", pulsar.internal_service_url, "--inputs", src, "--output", out]
    flags += ["--subscription-position", "EARLIEST", "--tracing"]
    refused = docker_client.containers.run(
        plain, flags, network=pulsar.network, labels=docker_labels, detach=True
    )
    try:
        assert refused.wait(timeout=60)["StatusCode"] == 2
        # stderr alone: docker does not keep the order between the two streams
        lines = refused.logs(stdout=False, stderr=True).decode().strip().splitlines()
        assert lines[-1].startswith("pulsarfunc: error: --tracing needs OpenTelemetry")
        assert "pip install 'pulsarfunc[otel]'" in lines[-1]
    finally:
        refused.remove(force=True)
    container = docker_client.containers.run(
        traced,
        flags,
        network=pulsar.network,
        labels=docker_labels,
        read_only=True,
        detach=True,
        environment={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "in-image"},
    )
    try:
        with subscribe_first(pulsar.service_url, out) as sink:
            produce(pulsar.service_url, src, [b"hi"], properties={"traceparent": traceparent(9)})
            (got,) = sink.collect(1, timeout_s=60)
        container.stop(timeout=20)
        assert container.wait(timeout=30)["StatusCode"] == 0
        logs = container.logs(stdout=True, stderr=False).decode()
    finally:
        container.remove(force=True)
    assert (got.data, trace_id_of(got.properties)) == (b"hi!", 9)
    spans = console_spans(logs)
    assert [s["name"] for s in spans] == [f"send {out}", f"process {src}"]
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"in-image"}
    assert spans[1]["parent_id"] == f"0x{PARENT_ID:016x}"
