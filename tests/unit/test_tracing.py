"""--tracing on an in-memory broker, spans caught by the SDK's in-memory exporter.

Each test has a TracerProvider of its own (the global one is set at most once per process);
the handlers make their own spans with it, as a function would with the global one. What needs
a fresh process (nothing imported without --tracing, the SDK configured from OTEL_* variables,
the extra missing) runs in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fake_broker import FakeBroker, FakeMessage
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from test_instance import in_thread, make_config
from waiting import wait_for

from pulsarfunc import Context
from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance
from pulsarfunc.runtime.tracing import Tracing

IN = "persistent://public/default/in"
OUT = "persistent://public/default/out"
SIDE = "persistent://public/default/side"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


class Spans:
    """A provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("handler")

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [span for span in self.finished() if span.name.startswith(prefix)]


@pytest.fixture
def spans() -> Iterator[Spans]:
    kept = Spans()
    yield kept
    kept.provider.shutdown()


@contextmanager
def traced(
    handler: Callable[..., Any], broker: FakeBroker, spans: Spans, **fields: Any
) -> Iterator[Instance]:
    """A traced instance on its own thread; stopped and drained on exit."""
    config = make_config(**fields)
    instance = Instance(
        config, inspect_handler(handler), broker, tracing=Tracing(config, spans.provider)
    )
    with in_thread(instance):
        yield instance


def traced_message(payload: bytes, **props: str) -> FakeMessage:
    return FakeMessage(payload, props={"traceparent": TRACEPARENT, "tracestate": "ven=1", **props})


def acked(broker: FakeBroker, count: int) -> Callable[[], bool]:
    return lambda: len(broker.sources[0].acked) == count


def test_the_process_span_continues_the_trace_in_the_input_properties(spans: Spans) -> None:
    broker = FakeBroker()
    msg = traced_message(b"hi")
    broker.feed(msg)
    with traced(lambda text: text, broker, spans, subscription="subs"):
        wait_for(acked(broker, 1))
    (span,) = spans.named("process")
    assert span.name == f"process {IN}"
    assert span.kind is SpanKind.CONSUMER
    assert span.context is not None
    assert span.parent is not None
    assert (span.context.trace_id, span.parent.span_id) == (TRACE_ID, PARENT_ID)
    assert span.parent.is_remote
    assert span.context.trace_state.get("ven") == "1"  # tracestate travels with the trace
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "messaging.system": "pulsar",
        "messaging.destination.name": IN,
        "messaging.message.id": str(msg.mid),
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.operation": "process",
        "messaging.consumer.group.name": "subs",
        "messaging.destination.subscription.name": "subs",
        "faas.name": "public/default/fn",
    }


def test_a_message_without_trace_context_starts_a_trace(spans: Spans) -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"a"), FakeMessage(b"b"))
    with traced(lambda text: text, broker, spans):
        wait_for(acked(broker, 2))
    first, second = spans.named("process")
    assert first.parent is None
    assert second.parent is None
    assert first.context is not None
    assert second.context is not None
    assert first.context.trace_id != second.context.trace_id


def test_outputs_get_a_send_span_and_carry_its_trace_context(spans: Spans) -> None:
    broker = FakeBroker()
    broker.feed(traced_message(b"a b"))

    def split(text: str) -> Iterator[str]:
        yield from text.split()

    with traced(split, broker, spans, forward_source_message_property=True):
        wait_for(acked(broker, 1))
    (process,) = spans.named("process")
    sends = spans.named("send")
    assert len(sends) == 2
    assert process.context is not None
    for send, out in zip(sends, broker.sent[OUT], strict=True):
        assert send.name == f"send {OUT}"
        assert send.kind is SpanKind.PRODUCER
        assert send.parent is not None
        assert send.parent.span_id == process.context.span_id
        assert send.context is not None
        assert send.context.trace_id == TRACE_ID
        props = dict(out.properties or {})
        # the output's traceparent is its send span (not the input's, forwarded with the rest)
        assert props["traceparent"] == f"00-{TRACE_ID:032x}-{send.context.span_id:016x}-01"
        assert props["tracestate"] == "ven=1"
        assert "__pfn_input_msg_id__" in props  # Pulsar's own stamps are kept
        assert dict(send.attributes or {}) == {
            "messaging.system": "pulsar",
            "messaging.destination.name": OUT,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.operation": "publish",
            "faas.name": "public/default/fn",
        }
    assert [m.payload for m in broker.sent[OUT]] == [b"a", b"b"]


def test_baggage_that_came_with_the_input_goes_on_with_outputs_and_publishes(
    spans: Spans,
) -> None:
    broker = FakeBroker()
    broker.feed(traced_message(b"x", baggage="tenant=acme"))
    seen: list[object] = []

    def fanout(ctx: Context, text: str) -> str:
        seen.append(baggage.get_baggage("tenant"))  # the handler sees it too
        ctx.publish(SIDE, text)
        return text

    with traced(fanout, broker, spans):
        wait_for(acked(broker, 1))
    assert seen == ["acme"]
    for topic in (OUT, SIDE):
        (msg,) = broker.sent[topic]
        assert dict(msg.properties or {})["baggage"] == "tenant=acme"


def test_context_publish_gets_a_send_span_that_ends_when_persisted(spans: Spans) -> None:
    broker = FakeBroker()
    broker.feed(traced_message(b"x"))
    held = broker.held[SIDE] = threading.Event()

    def fanout(ctx: Context, text: str) -> None:
        ctx.publish(SIDE, text + "-side", properties={"p": "v"})

    with traced(fanout, broker, spans, output=""):
        wait_for(lambda: len(spans.named("process")) == 1)
        assert spans.named("send") == []  # still in flight: the span is open
        held.set()
        wait_for(acked(broker, 1))
        wait_for(lambda: len(spans.named("send")) == 1)
    (process,) = spans.named("process")
    (send,) = spans.named("send")
    assert process.context is not None
    assert send.context is not None
    assert send.parent is not None
    assert send.parent.span_id == process.context.span_id
    assert send.status.status_code is StatusCode.UNSET
    (msg,) = broker.sent[SIDE]
    props = dict(msg.properties or {})
    assert props["p"] == "v"
    assert props["traceparent"] == f"00-{TRACE_ID:032x}-{send.context.span_id:016x}-01"


def test_a_failed_publish_is_recorded_on_its_send_span(spans: Spans) -> None:
    broker = FakeBroker()
    broker.fail_topics.add(SIDE)
    broker.feed(FakeMessage(b"x"))
    done = threading.Event()

    def fanout(ctx: Context, text: str) -> None:
        ctx.publish(SIDE, text, callback=lambda error, _id: done.set())

    with traced(fanout, broker, spans, output="", max_message_retries=0):
        wait_for(done.is_set)
        wait_for(lambda: len(spans.named("send")) == 1)
    (send,) = spans.named("send")
    assert send.status.status_code is StatusCode.ERROR
    assert "refused" in (send.status.description or "")
    assert [event.name for event in send.events] == ["exception"]


def test_a_failing_message_records_the_exception_and_error_status(spans: Spans) -> None:
    broker = FakeBroker()
    broker.feed(traced_message(b"ok"), traced_message(b"bad"))

    def picky(text: str) -> str:
        if text == "bad":
            raise ValueError("no bad input")
        return text

    with traced(picky, broker, spans, max_message_retries=0):
        wait_for(lambda: len(broker.sources[0].acked) == 2)  # the failure is dead-lettered
    ok, bad = sorted(spans.named("process"), key=lambda s: s.start_time or 0)
    assert ok.status.status_code is StatusCode.UNSET
    assert not ok.events
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.status.description == "ValueError: no bad input"
    assert (bad.attributes or {})["error.type"] == "ValueError"
    (event,) = bad.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.message"] == "no bad input"


def test_an_undecodable_payload_fails_its_span(spans: Spans) -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"not json"))

    def needs_json(data: dict[str, int]) -> None:
        return None

    with traced(needs_json, broker, spans, max_message_retries=0):
        wait_for(acked(broker, 1))
    (span,) = spans.named("process")
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "PayloadError"


def sync_handler(spans: Spans) -> Callable[..., Any]:
    def handler(text: str) -> str:
        with spans.tracer.start_as_current_span("inner"):
            return text.upper()

    return handler


def generator_handler(spans: Spans) -> Callable[..., Any]:
    def handler(text: str) -> Iterator[str]:
        with spans.tracer.start_as_current_span("inner"):
            yield text.upper()

    return handler


def async_handler(spans: Spans) -> Callable[..., Any]:
    async def handler(text: str) -> str:
        await asyncio.sleep(0.001)
        with spans.tracer.start_as_current_span("inner"):
            await asyncio.sleep(0.001)
            return text.upper()

    return handler


def async_generator_handler(spans: Spans) -> Callable[..., Any]:
    async def handler(text: str) -> AsyncIterator[str]:
        await asyncio.sleep(0.001)
        with spans.tracer.start_as_current_span("inner"):
            yield text.upper()

    return handler


HANDLERS: dict[str, tuple[Callable[[Spans], Callable[..., Any]], dict[str, Any]]] = {
    "sync": (sync_handler, {}),
    "sync, 4 threads": (sync_handler, {"concurrency": 4}),
    "sync, timeout": (sync_handler, {"timeout_ms": 5000}),
    "sync, in order": (sync_handler, {"retain_ordering": True}),
    "sync, key lanes": (sync_handler, {"concurrency": 3, "retain_key_ordering": True}),
    "sync, effectively once": (
        sync_handler,
        {"processing_guarantee": ProcessingGuarantee.EFFECTIVELY_ONCE},
    ),
    "generator": (generator_handler, {}),
    "async": (async_handler, {}),
    "async, in order": (async_handler, {"retain_ordering": True}),
    "async generator": (async_generator_handler, {}),
}


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_the_handlers_own_spans_nest_under_the_process_span(kind: str, spans: Spans) -> None:
    make, fields = HANDLERS[kind]
    broker = FakeBroker()
    messages = [traced_message(f"m{i}".encode()) for i in range(12)]
    for i, msg in enumerate(messages):
        msg.key = f"k{i % 3}"
    broker.feed(*messages)
    with traced(make(spans), broker, spans, **fields):
        wait_for(acked(broker, 12))
    processes = spans.named("process")
    inner = spans.named("inner")
    sends = spans.named("send")
    assert len(processes) == len(inner) == len(sends) == 12
    by_id = {span.context.span_id: span for span in processes if span.context is not None}
    assert len(by_id) == 12
    payload_of = {str(msg.mid): msg.payload for msg in messages}
    for children in (inner, sends):  # one of each under every message's process span
        parents = [child.parent.span_id for child in children if child.parent is not None]
        assert sorted(parents) == sorted(by_id)
    for send in sends:
        assert send.parent is not None
        parent = by_id[send.parent.span_id]
        assert parent.attributes is not None
        mid = str(parent.attributes["messaging.message.id"])
        assert send.context is not None
        span_id = f"{send.context.span_id:016x}"
        (out,) = [
            m
            for m in broker.sent[OUT]
            if dict(m.properties or {})["traceparent"].split("-")[2] == span_id
        ]
        assert out.payload == payload_of[mid].upper()
    assert sorted(m.payload for m in broker.sent[OUT]) == sorted(
        m.payload.upper() for m in messages
    )


def test_tracing_gives_the_outputs_and_failures_of_the_untraced_path(spans: Spans) -> None:
    def handler(ctx: Context, text: str) -> Iterator[str]:
        if text == "boom":
            raise RuntimeError("boom")
        yield f"{text}:{ctx.message_key}"
        yield text[::-1]

    results = []
    for tracing in (False, True):
        broker = FakeBroker()
        broker.feed(*(FakeMessage(t.encode(), key="k") for t in ("ab", "boom", "cd")))
        config = make_config(max_message_retries=0)
        instance = Instance(
            config,
            inspect_handler(handler),
            broker,
            tracing=Tracing(config, spans.provider) if tracing else None,
        )
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        wait_for(acked(broker, 3))
        instance.stop()
        thread.join(10)
        dead = broker.sent[f"{IN}-public-default-fn-DLQ"]
        results.append(
            (
                [m.payload for m in broker.sent[OUT]],
                [dict(m.properties or {}).get("pulsarfunc.error.message") for m in dead],
            )
        )
    assert results[0] == results[1] == ([b"ab:k", b"ba", b"cd:k", b"dc"], ["boom"])


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (tests/ and tests/unit importable); fails on a crash."""
    here = os.path.dirname(__file__)
    path = os.pathsep.join([here, os.path.dirname(here)])
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    for name in list(full_env):
        if name.startswith(("OTEL_", "PULSARFUNC_")) and name not in (env or {}):
            del full_env[name]
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def test_nothing_of_opentelemetry_is_imported_without_tracing() -> None:
    result = run_python(
        """
        import sys, threading
        from fake_broker import FakeBroker, FakeMessage
        from waiting import wait_for
        from pulsarfunc import cli, testing  # the whole surface a function process loads
        from pulsarfunc.runtime import start
        from pulsarfunc.runtime.config import FunctionConfig, InputSpec
        from pulsarfunc.runtime.handler import inspect_handler
        from pulsarfunc.runtime.instance import Instance
        from pulsarfunc.runtime.resolve import resolve

        config = resolve(["--inputs", "in", "--output", "out", "--name", "fn"], {})
        assert start.start_tracing(config, {}) is None
        def publishing(ctx, text):
            ctx.publish("side", text)

        for handler, topic in ((lambda text: text, "persistent://public/default/out"),
                               (publishing, "side")):
            broker = FakeBroker()
            broker.feed(*(FakeMessage(b"x") for _ in range(20)))
            instance = Instance(config, inspect_handler(handler), broker)
            thread = threading.Thread(target=instance.run, daemon=True)
            thread.start()
            wait_for(lambda: len(broker.sources[0].acked) == 20)
            assert len(broker.sent[topic]) == 20
            instance.stop()
            thread.join(10)
        print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_tracing_without_the_extra_is_exit_2_naming_the_install_command(
    tmp_path: Any,
) -> None:
    (tmp_path / "fn.py").write_text("def handler(text: str) -> str:\n    return text\n")
    result = run_python(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        from pulsarfunc import cli
        sys.exit(cli.main(["run", {str(tmp_path / "fn.py")!r}, "--inputs", "in", "--tracing",
                           "--service-url", "pulsar://127.0.0.1:1"]))
        """
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        "pulsarfunc: error: --tracing needs OpenTelemetry, which is not installed: pip install "
        "'pulsarfunc[otel]' (in an image: list pulsarfunc[otel] in requirements.txt)"
    ]
    assert "Traceback" not in result.stderr


def test_pulsarfunc_tracing_variable_turns_it_on() -> None:
    from pulsarfunc.runtime.resolve import resolve

    assert resolve(["--inputs", "in"], {"PULSARFUNC_TRACING": "on"}).tracing is True
    assert resolve(["--inputs", "in"], {}).tracing is False


CONFIGURE = """
    import json, os
    from opentelemetry import trace
    from pulsarfunc.runtime.config import FunctionConfig, InputSpec
    from pulsarfunc.runtime.errors import UserError
    from pulsarfunc.runtime.tracing import configure

    config = FunctionConfig(tenant="t", namespace="ns", name="fn", inputs=(InputSpec("in"),))
    try:
        tracing = configure(config, os.environ)
    except UserError as exc:
        print(json.dumps({"error": str(exc)}))
        raise SystemExit(0)
    provider = trace.get_tracer_provider()
    processors = provider._active_span_processor._span_processors
    exporters = [type(p.span_exporter).__name__ for p in processors]
    print(json.dumps({"resource": dict(provider.resource.attributes), "exporters": exporters,
                      "same": tracing.provider is provider}))
    tracing.close()
"""


def configured(env: dict[str, str]) -> dict[str, Any]:
    result = run_python(CONFIGURE, env)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_the_sdk_is_configured_from_otel_variables_with_function_defaults() -> None:
    plain = configured({})
    assert plain["same"] is True
    assert plain["exporters"] == ["OTLPSpanExporter"]  # OTLP over HTTP, the spec's default
    assert plain["resource"]["service.name"] == "t/ns/fn"
    assert plain["resource"]["faas.name"] == "t/ns/fn"
    console = configured(
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "orders",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        }
    )
    assert console["exporters"] == ["ConsoleSpanExporter"]
    assert console["resource"]["service.name"] == "orders"  # the variables win
    assert console["resource"]["deployment.environment"] == "test"
    http = configured(
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    )
    assert http["exporters"] == ["OTLPSpanExporter"]
    assert configured({"OTEL_TRACES_EXPORTER": "none"})["exporters"] == []


def test_an_exporter_the_extra_lacks_is_a_clear_error() -> None:
    answer = configured({"OTEL_TRACES_EXPORTER": "otlp"})  # gRPC: not in the extra
    assert "otlp_proto_grpc" in answer["error"]
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in answer["error"]


def test_a_tracer_provider_set_by_the_function_is_used_as_it_is() -> None:
    result = run_python(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from pulsarfunc.runtime.config import FunctionConfig
        from pulsarfunc.runtime.tracing import configure

        mine = TracerProvider()
        trace.set_tracer_provider(mine)  # as a handler module would, at import
        tracing = configure(FunctionConfig(name="fn"), {"OTEL_TRACES_EXPORTER": "console"})
        print(tracing.provider is mine, trace.get_tracer_provider() is mine)
        tracing.close()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_close_exports_what_the_batch_processor_still_holds() -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracing = Tracing(FunctionConfig(name="fn"), provider, owned=True)
    with trace.get_tracer("t", tracer_provider=provider).start_as_current_span("late"):
        pass
    assert exporter.get_finished_spans() == ()
    tracing.close()
    assert [span.name for span in exporter.get_finished_spans()] == ["late"]


def test_close_waits_for_an_unreachable_collector_only_so_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()

    class Stuck(TracerProvider):
        def shutdown(self) -> None:  # an exporter retrying a collector that is away
            release.wait(10)

    tracing = Tracing(FunctionConfig(name="fn"), Stuck(), owned=True)
    began = time.monotonic()
    tracing.close(timeout_s=0.2)
    took = time.monotonic() - began
    release.set()
    assert 0.2 <= took < 2
    assert "spans still unexported" in caplog.text
