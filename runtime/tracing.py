"""OpenTelemetry tracing of every message (`--tracing`, the `otel` extra): imported only when on.

    process span (CONSUMER)  one per message, the child of the W3C `traceparent`/`tracestate` in
                             its properties (read by the global propagator: OTEL_PROPAGATORS,
                             default tracecontext and baggage); current while the handler runs,
                             generators and async handlers included, so the handler's own spans
                             nest under it; a failed message records its exception, status ERROR
    send span (PRODUCER)     one per output and per `ctx.publish`, the child of the process span;
                             its context is injected into the message's properties, so the next
                             function continues the same trace. An output's span ends once it is
                             queued (outputs go out in batches with one receipt); a publish's span
                             ends when the broker has persisted it, or records why not

Attributes follow OpenTelemetry's messaging conventions (`messaging.system` pulsar, the
destination, the message id, the operation, the subscription as consumer group) and name the
function (`faas.name`: tenant/namespace/name).

The engines meet tracing only through subclasses that `Instance` picks once, at start:
`TracedInvoker` (each message in its span), `TracedOutputs` (outputs) and `TracedServices`
(`ctx.publish`). Without --tracing none of them exists and nothing here is imported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from pulsarfunc._version import __version__
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.context import Context, Cursor, Services
from pulsarfunc.runtime.errors import UserError
from pulsarfunc.runtime.handler import Handler
from pulsarfunc.runtime.invoke import Fail, Invoker, Put, handler_cancelled
from pulsarfunc.runtime.naming import strip_partition
from pulsarfunc.runtime.outputs import Outputs
from pulsarfunc.runtime.schemas import Wire
from pulsarfunc.runtime.transport import InMessage, OutMessage

if TYPE_CHECKING:
    from pulsarfunc.runtime.tracker import Ticket

_log = logging.getLogger("pulsarfunc.tracing")

CLOSE_TIMEOUT_S = 5.0  # how long the stop waits for the last spans to be exported
# The OTLP exporter the `otel` extra installs: OTEL_TRACES_EXPORTER's default ("otlp") over HTTP.
DEFAULT_EXPORTER = "otlp_proto_http"


def configure(config: FunctionConfig, env: Mapping[str, str]) -> Tracing:
    """Tracing for this instance, with the process's tracer provider.

    When nothing set one up yet (the handler's module, `opentelemetry-instrument`), the SDK is
    configured from the OTEL_* variables by its own configurator, as `opentelemetry-instrument`
    does; the service name defaults to the function's tenant/namespace/name, and the exporter
    to OTLP over HTTP. `env` is the environment the SDK reads (it says whether an exporter is
    named). A configuration the SDK refuses is a UserError.
    """
    provider = trace.get_tracer_provider()
    if not isinstance(provider, trace.ProxyTracerProvider):
        return Tracing(config, provider, owned=False)
    from opentelemetry.sdk._configuration import _OTelSDKConfigurator
    from opentelemetry.sdk.resources import OTELResourceDetector

    given = OTELResourceDetector().detect().attributes  # OTEL_RESOURCE_ATTRIBUTES, *_SERVICE_NAME
    resource = {"service.name": config.fqfn, "faas.name": config.fqfn, **given}
    exporters = [] if env.get("OTEL_TRACES_EXPORTER", "").strip() else [DEFAULT_EXPORTER]
    try:
        _OTelSDKConfigurator().configure(  # type: ignore[no-untyped-call]
            trace_exporter_names=exporters, resource_attributes=dict(resource)
        )
    except (RuntimeError, ValueError, ImportError) as exc:
        raise UserError(
            f"--tracing: OpenTelemetry refused the OTEL_* configuration: {exc}",
            "the otel extra exports OTLP over HTTP: unset OTEL_TRACES_EXPORTER or set it to "
            "otlp with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf (for gRPC, also install "
            "opentelemetry-exporter-otlp-proto-grpc)",
        ) from exc
    return Tracing(config, trace.get_tracer_provider(), owned=True)


class Tracing:
    """The spans of one instance: makes the traced pieces, starts and ends spans."""

    def __init__(
        self, config: FunctionConfig, provider: trace.TracerProvider, *, owned: bool = False
    ) -> None:
        self.provider = provider
        self._owned = owned  # configured here: shut down (and so flushed) at the stop
        self._tracer = provider.get_tracer("pulsarfunc", __version__)
        common: dict[str, str] = {"messaging.system": "pulsar", "faas.name": config.fqfn}
        subscription = config.subscription_name
        self._process = {
            **common,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.operation": "process",  # the name before semconv 1.26, still widely read
            "messaging.consumer.group.name": subscription,
            "messaging.destination.subscription.name": subscription,
        }
        self._send = {
            **common,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.operation": "publish",
        }
        self._inputs: dict[str, tuple[str, dict[str, str]]] = {}  # topic: span name, attributes
        self._outputs: dict[str, tuple[str, dict[str, str]]] = {}

    # -- the traced pieces, chosen once by Instance ----------------------------------------------
    def invoker(
        self, handler: Handler, config: FunctionConfig, concurrency: int, wire: Wire
    ) -> Invoker:
        return TracedInvoker(
            self, handler, timeout_ms=config.timeout_ms, wire=wire, concurrency=concurrency
        )

    def outputs(self, config: FunctionConfig, handler: Handler, wire: Wire) -> Outputs:
        return TracedOutputs(self, config, wire.output or handler.output_codec)

    def services(self, services: Services) -> Services:
        return TracedServices(self, services)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Export what is still buffered: shut down a provider configured here, else flush.

        Waits at most `timeout_s`: an exporter whose collector is away retries for longer,
        and the stop must not wait for it (what is left is lost, and said so).
        """
        name = "shutdown" if self._owned else "force_flush"
        finish: Callable[[], object] | None = getattr(self.provider, name, None)
        if finish is None:
            return
        closing = threading.Thread(target=finish, name="pf-spans", daemon=True)
        closing.start()
        closing.join(timeout_s)
        if closing.is_alive():
            _log.warning(
                "spans still unexported %.0f s after the stop: is the collector "
                "(OTEL_EXPORTER_OTLP_ENDPOINT) reachable?",
                timeout_s,
            )

    # -- spans ------------------------------------------------------------------------------------
    def begin(self, msg: InMessage) -> tuple[Span, object]:
        """Start the process span of `msg` and make it current (with the baggage that came with
        the message); `end` undoes both, on the same thread or task."""
        parent = propagate.extract(msg.properties())
        topic = msg.topic_name()
        mid = msg.message_id()
        named = self._inputs.get(topic)
        if named is None:
            named = self._inputs[topic] = self._named_input(topic, mid.partition())
        span = self._tracer.start_span(
            named[0],
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={**named[1], "messaging.message.id": str(mid)},
        )
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    @staticmethod
    def end(span: Span, token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]  # the token `begin` returned
        span.end()

    def sending(self, message: OutMessage) -> tuple[Span, OutMessage]:
        """A send span for `message` (a child of the current span), and the message with the
        span's context in its properties."""
        named = self._outputs.get(message.topic)
        if named is None:
            named = self._outputs[message.topic] = self._named_output(message.topic)
        span = self._tracer.start_span(named[0], kind=SpanKind.PRODUCER, attributes=named[1])
        properties = dict(message.properties or {})
        propagate.inject(properties, context=trace.set_span_in_context(span))
        return span, message._replace(properties=properties)

    def _named_input(self, topic: str, partition: int) -> tuple[str, dict[str, str]]:
        """A topic's process span name and attributes (the same for all of its messages)."""
        name = strip_partition(topic)
        attributes = {**self._process, "messaging.destination.name": name}
        if partition >= 0:
            attributes["messaging.destination.partition.id"] = str(partition)
        return f"process {name}", attributes

    def _named_output(self, topic: str) -> tuple[str, dict[str, str]]:
        return f"send {topic}", {**self._send, "messaging.destination.name": topic}


def failed(span: Span, error: BaseException) -> None:
    """Record a failure on `span`: the exception event, `error.type`, status ERROR."""
    span.record_exception(error)
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class TracedInvoker(Invoker):
    """`Invoker` with each message's decoding, call and outputs inside its process span."""

    def __init__(self, tracing: Tracing, handler: Handler, **options: Any) -> None:
        super().__init__(handler, **options)
        self.tracing = tracing

    def call_each(
        self,
        msgs: Sequence[InMessage],
        cursor: Cursor,
        put: Put,
        fail: Fail,
        *,
        stop_at_failure: bool = False,
    ) -> None:
        """`Invoker.call_each` without its inlined shortcuts, one span per message."""
        begin, end, plain = self.tracing.begin, self.tracing.end, self._plain
        for index, msg in enumerate(msgs):
            cursor.index = index
            cursor.ctx = None
            span, token = begin(msg)
            error: Exception | None = None
            try:
                value = self.decode(msg)
                if plain is None:
                    outs = self.call(cursor.context(), value)
                else:  # a handler of its input alone: no Context made for it
                    outs = self._collect(plain(value))
                for out in outs:
                    put(index, msg, out)
            except Exception as exc:
                error = exc
                failed(span, error)
            except asyncio.CancelledError:
                error = handler_cancelled()
                failed(span, error)
            finally:
                end(span, token)  # before `fail`: settling is not the message's processing
            if error is not None:
                fail(index, error)
                if stop_at_failure:
                    return

    async def process_async(
        self, ctx: Context, put: Callable[[Any], None], fail: Callable[[Exception], None]
    ) -> None:
        span, token = self.tracing.begin(ctx.message)

        def traced_fail(error: Exception) -> None:
            failed(span, error)
            fail(error)

        try:
            await super().process_async(ctx, put, traced_fail)
        finally:
            self.tracing.end(span, token)


class TracedOutputs(Outputs):
    """`Outputs` whose every output gets a send span and carries its trace context."""

    def __init__(self, tracing: Tracing, config: FunctionConfig, codec: Any) -> None:
        super().__init__(config, codec)
        self.tracing = tracing

    def build(
        self, msg: InMessage, value: Any, previous: int, topic: str | None = None
    ) -> OutMessage:
        span, out = self.tracing.sending(super().build(msg, value, previous, topic))
        span.end()  # queued: outputs are sent in batches, with one receipt per batch
        return out


class TracedServices:
    """The instance's services, with a send span per `ctx.publish` until it is persisted."""

    def __init__(self, tracing: Tracing, inner: Services) -> None:
        self.tracing = tracing
        self.inner = inner

    def publish(
        self,
        ticket: Ticket | None,
        message: OutMessage,
        callback: Callable[[Exception | None], None] | None = None,
    ) -> concurrent.futures.Future[None]:
        span, message = self.tracing.sending(message)

        def sent(error: Exception | None) -> None:
            if error is not None:
                failed(span, error)
            span.end()
            if callback is not None:
                callback(error)

        try:
            return self.inner.publish(ticket, message, sent)
        except Exception as exc:
            failed(span, exc)
            span.end()
            raise

    def ack(self, ticket: Ticket | None) -> None:
        self.inner.ack(ticket)

    def record_metric(self, name: str, value: float) -> None:
        self.inner.record_metric(name, value)
