"""`pulsarfunc.testing`: run a handler on inputs in a unit test, without a broker.

    from pulsarfunc.testing import run_function

    def test_greets() -> None:
        result = run_function(handler, ["pulsar"], user_config={"greeting": "hi"})
        assert result.outputs == ["hi pulsar"]

The handler is checked and called exactly as the runtime calls it (same forms and argument
order, same codecs, the real `Context`), one input at a time, in order. Each input is what a
producer would send: bytes as they are, str as UTF-8, dict/list/dataclass as JSON (wrap it in
`Message` to give it a key, properties or a topic); it is decoded by the handler's input codec,
and each output is encoded by its output codec, so a payload the runtime would refuse fails here
too. Only the broker is fake: `context.publish` is captured, `record_metric` values are kept in
order, `context.ack()` is recorded. An exception from the handler is raised as it is, unless
`raise_errors=False`, which records it on the call and goes on with the next input.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pulsarfunc.runtime import context as ctxmod
from pulsarfunc.runtime.codec import AUTO, Codec, pulsar_serde
from pulsarfunc.runtime.config import FunctionConfig, InputSpec, ProcessingGuarantee
from pulsarfunc.runtime.context import Context, FunctionEnv
from pulsarfunc.runtime.handler import Handler, inspect_handler
from pulsarfunc.runtime.start import complete

__all__ = ["Call", "Message", "Published", "Result", "run_function"]

DEFAULT_INPUT = "persistent://public/default/input"


@dataclass(frozen=True)
class Message:
    """An input with more than a value: key, properties, topic, event time, redeliveries."""

    value: Any
    key: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    topic: str | None = None  # default: the config's first input, else DEFAULT_INPUT
    event_time: int | None = None  # epoch ms
    redelivery_count: int = 0


@dataclass(frozen=True)
class Published:
    """One `context.publish(...)`, as it would have gone to the broker."""

    topic: str
    payload: bytes
    key: str | None
    properties: Mapping[str, str]
    event_timestamp: int | None
    call: int  # index of the input being processed

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Call:
    """What happened to one input."""

    input: Any  # the value the handler received, after decoding
    outputs: list[Any] = field(default_factory=list)  # returned or yielded (None is no output)
    payloads: list[bytes] = field(default_factory=list)  # the outputs, encoded
    error: BaseException | None = None
    acked: bool = False  # by context.ack(), or by the guarantee (see `run_function`)


@dataclass
class Result:
    """Everything a run produced, input by input and in total."""

    calls: list[Call]
    published: list[Published]
    metrics: dict[str, list[float]]  # record_metric values by name, in order
    logs: list[logging.LogRecord]  # records of the function's logger (context.get_logger())
    config: FunctionConfig

    @property
    def outputs(self) -> list[Any]:
        return [out for call in self.calls for out in call.outputs]

    @property
    def payloads(self) -> list[bytes]:
        return [p for call in self.calls for p in call.payloads]

    @property
    def errors(self) -> list[BaseException]:
        return [call.error for call in self.calls if call.error is not None]

    @property
    def acked(self) -> list[int]:
        """Indexes of the inputs that were acknowledged."""
        return [i for i, call in enumerate(self.calls) if call.acked]


# --- the fake broker side -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Id:
    """A message id shaped like pulsar-client's (str is "(ledger,entry,partition,batch)")."""

    entry: int

    def ledger_id(self) -> int:
        return 1

    def entry_id(self) -> int:
        return self.entry

    def partition(self) -> int:
        return -1

    def batch_index(self) -> int:
        return -1

    def serialize(self) -> bytes:
        return f"1:{self.entry}".encode()

    def __str__(self) -> str:
        return f"(1,{self.entry},-1,-1)"


@dataclass(frozen=True)
class _InMessage:
    """One input as the runtime reads a received message."""

    payload: bytes
    message: Message
    topic: str
    mid: _Id

    def data(self) -> bytes:
        return self.payload

    def partition_key(self) -> str:
        return self.message.key or ""

    def ordering_key(self) -> str:
        return ""

    def properties(self) -> dict[str, str]:
        return dict(self.message.properties)

    def event_timestamp(self) -> int:
        return self.message.event_time or 0

    def publish_timestamp(self) -> int:
        return self.message.event_time or 0

    def topic_name(self) -> str:
        return self.topic

    def message_id(self) -> _Id:
        return self.mid

    def redelivery_count(self) -> int:
        return self.message.redelivery_count


class _Services:
    """The instance side of a Context, recording instead of talking to a broker."""

    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls
        self.published: list[Published] = []
        self.metrics: dict[str, list[float]] = {}

    def publish(
        self,
        owner: Any,
        topic: str,
        payload: bytes,
        key: str | None,
        properties: Mapping[str, str] | None,
        event_timestamp: int | None,
    ) -> concurrent.futures.Future[None]:
        self.published.append(
            Published(topic, payload, key, dict(properties or {}), event_timestamp, owner)
        )
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_result(None)
        return done

    def ack(self, owner: Any) -> None:
        self.calls[owner].acked = True

    def record_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(value)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --- running --------------------------------------------------------------------------------------


def run_function(
    handler: object,
    inputs: Iterable[Any],
    *,
    user_config: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    config: FunctionConfig | None = None,
    raise_errors: bool = True,
) -> Result:
    """Call `handler` on each input in turn, as the runtime would; see the module docstring.

    `config` sets everything else the Context shows (name, topics, guarantee, ...);
    `user_config` is merged over its user config; `secrets` maps secret names to values.
    Acknowledgements follow the guarantee: ATLEAST_ONCE and EFFECTIVELY_ONCE ack an input when
    the handler succeeds, ATMOST_ONCE acks every input on receipt, MANUAL only on context.ack().
    """
    spec = handler if isinstance(handler, Handler) else inspect_handler(handler, where="test")
    base = config or FunctionConfig()
    if user_config:
        base = dataclasses.replace(base, user_config={**base.user_config, **user_config})
    cfg = complete(base, spec)
    calls: list[Call] = []
    services = _Services(calls)
    logger = logging.getLogger(f"pulsarfunc.function.{cfg.name}")
    given = dict(secrets or {})
    env = FunctionEnv(cfg, services, logger, lambda name: given.get(name))
    capture = _Capture()
    level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)  # every record is captured, whatever the root level
    try:
        _run(spec, cfg, env, list(inputs), calls, raise_errors)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    return Result(calls, services.published, services.metrics, capture.records, cfg)


def _run(
    spec: Handler,
    cfg: FunctionConfig,
    env: FunctionEnv,
    inputs: Sequence[Any],
    calls: list[Call],
    raise_errors: bool,
) -> None:
    default_topic = cfg.inputs[0].topic if cfg.inputs else DEFAULT_INPUT
    output_codec = (
        pulsar_serde(cfg.output_serde_class_name) if cfg.output_serde_class_name else None
    ) or spec.output_codec
    guarantee = cfg.processing_guarantee
    with _Invoker(spec) as invoke:
        for i, item in enumerate(inputs):
            message = item if isinstance(item, Message) else Message(item)
            topic = message.topic or default_topic
            raw = _InMessage(AUTO.encode(message.value), message, topic, _Id(i))
            call = Call(input=None, acked=guarantee is ProcessingGuarantee.ATMOST_ONCE)
            calls.append(call)

            def emit(out: Any, call: Call = call) -> None:
                if out is not None:
                    call.payloads.append(output_codec.encode(out))
                    call.outputs.append(out)

            try:
                call.input = _input_codec(spec, cfg, topic).decode(raw.payload)
                invoke(Context(env, raw, i), call.input, emit)
            except Exception as exc:
                call.error = exc
                if raise_errors:
                    raise
                continue
            if guarantee in (
                ProcessingGuarantee.ATLEAST_ONCE,
                ProcessingGuarantee.EFFECTIVELY_ONCE,
            ):
                call.acked = True


Emit = Callable[[Any], None]


class _Invoker:
    """Calls the handler with the Context bound; async handlers on one event loop of their own.

    As in the runtime, the loop runs on its own thread, one loop for every input, so a test may
    call `run_function` from inside a running loop (an async test) too.
    """

    def __init__(self, spec: Handler) -> None:
        self._spec = spec
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Callable[[Context, Any, Emit], None]:
        if not self._spec.is_async:
            return self._call
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="pf-test-loop", daemon=True)
        self._thread.start()
        return self._call_async

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _call(self, ctx: Context, value: Any, emit: Emit) -> None:
        token = ctxmod.bind(ctx)
        try:
            result = self._spec.call(ctx, value)
            for out in result if self._spec.yields else (result,):
                emit(out)
        finally:
            ctxmod.unbind(token)

    def _call_async(self, ctx: Context, value: Any, emit: Emit) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._async(ctx, value, emit), self._loop).result()

    async def _async(self, ctx: Context, value: Any, emit: Emit) -> None:
        token = ctxmod.bind(ctx)
        try:
            result = self._spec.call(ctx, value)
            if self._spec.is_async_gen:
                async for out in result:
                    emit(out)
            else:
                emit(await result)
        finally:
            ctxmod.unbind(token)


def _input_codec(spec: Handler, cfg: FunctionConfig, topic: str) -> Codec:
    """The handler's codec, unless the configuration names a serde for the topic (as Pulsar)."""
    configured: dict[str, InputSpec] = {s.topic: s for s in cfg.inputs if not s.is_regex}
    named = configured.get(topic)
    if named is not None and named.serde_class_name:
        return pulsar_serde(named.serde_class_name)
    return spec.input_codec
