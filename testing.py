"""`pulsarfunc.testing`: run a handler on inputs in a unit test, without a broker.

    from pulsarfunc.testing import run_function

    def test_greets() -> None:
        result = run_function(handler, ["pulsar"], user_config={"greeting": "hi"})
        assert result.outputs == ["hi pulsar"]

A batch handler (a `Batch[T]` input, or `config=FunctionConfig(batch_max_size=N)`) is called
with the inputs in order, grouped by its batch size (100 for `Batch[T]`, else N): the last
batch holds the rest. Each input still has its own `Call` (its output, its error, `batch`: the
index of its batch). Per-item failures (an exception object returned in an item's place, or
`BatchItemFailures`) are outcomes, recorded on their items' calls and never raised; an
exception that fails the whole batch is raised, or with `raise_errors=False` recorded on every
item of that batch.

The handler is checked and called through the runtime's own invocation core
(`pulsarfunc.runtime.invoke`: same forms and argument order, same codecs, the real `Context`, the
configured timeout), one input at a time, in order. Each input is what a producer would send: bytes
as they are, a value under the topic's schema or serde when one is configured (a
`pulsar.schema.Record` under its schema), else str as UTF-8 and dict/list/dataclass as JSON (wrap it
in `Message` to give it a key, properties or a topic); it is decoded by the handler's input codec,
and each output is encoded by its output codec, so a payload the runtime would refuse fails here
too. Only the broker is fake: `context.publish` is captured, `record_metric` values are kept in
order, `context.ack()` is recorded. An exception from the handler is raised as it is, unless
`raise_errors=False`, which records it on the call and goes on with the next input.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pulsarfunc.runtime.codec import AUTO, SerdeCodec
from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.context import Context, FunctionEnv
from pulsarfunc.runtime.engine_batching import batched
from pulsarfunc.runtime.handler import Handler, inspect_handler
from pulsarfunc.runtime.invoke import Invoker
from pulsarfunc.runtime.invoke_batch import BatchInvoker
from pulsarfunc.runtime.outputs import Outputs
from pulsarfunc.runtime.schemas import SchemaCodec
from pulsarfunc.runtime.settle import ACKED_ON_SUCCESS
from pulsarfunc.runtime.start import complete
from pulsarfunc.runtime.state import MemoryState
from pulsarfunc.runtime.tracker import Ticket
from pulsarfunc.runtime.transport import InMessage, OutMessage

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
    batch: int | None = None  # a batch handler's: the index of the batch the input was in


@dataclass
class Result:
    """Everything a run produced, input by input and in total."""

    calls: list[Call]
    published: list[Published]
    metrics: dict[str, list[float]]  # record_metric values by name, in order
    logs: list[logging.LogRecord]  # records of the function's logger (context.get_logger())
    config: FunctionConfig
    state: dict[str, int | bytes] = field(default_factory=dict)  # counters and values after

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


class _Source:
    """Where the inputs came from: acknowledgements are recorded on their calls."""

    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls
        self.topic: str | None = None  # each message says its topic

    def ack(self, message: InMessage) -> None:
        assert isinstance(message, _InMessage)
        self.calls[message.mid.entry].acked = True

    def ack_all(self, messages: Sequence[InMessage]) -> None:
        for message in messages:
            self.ack(message)

    def nack(self, message: InMessage) -> None:
        """A failed input is not redelivered here."""


class _Services:
    """The instance side of a Context, recording instead of talking to a broker."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.metrics: dict[str, list[float]] = {}

    def publish(
        self,
        ticket: Ticket | None,
        message: OutMessage,
        callback: Callable[[Exception | None], None] | None = None,
    ) -> concurrent.futures.Future[None]:
        call = ticket.msg.message_id().entry_id() if ticket is not None else -1
        self.published.append(
            Published(
                message.topic,
                message.payload,
                message.key,
                dict(message.properties or {}),
                message.event_timestamp,
                call,
            )
        )
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_result(None)
        if callback is not None:
            callback(None)
        return done

    def ack(self, ticket: Ticket | None) -> None:
        if ticket is not None and not ticket.acked:
            ticket.acked = True
            ticket.source.ack(ticket.msg)

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
    state: Mapping[str, int | bytes | str] | None = None,
) -> Result:
    """Call `handler` on each input in turn, as the runtime would; see the module docstring.

    `config` sets everything else the Context shows (name, topics, guarantee, timeout, ...);
    `user_config` is merged over its user config; `secrets` maps secret names to values.
    Acknowledgements follow the guarantee: ATLEAST_ONCE and EFFECTIVELY_ONCE ack an input when
    the handler succeeds, ATMOST_ONCE acks every input on receipt, MANUAL only on context.ack().
    `state` is the managed state before the run (ints are counters, bytes or str values), kept
    in memory; `result.state` is what it holds after.
    """
    spec = handler if isinstance(handler, Handler) else inspect_handler(handler, where="test")
    base = config or FunctionConfig()
    spec = batched(spec, base)
    if user_config:
        base = dataclasses.replace(base, user_config={**base.user_config, **user_config})
    cfg = complete(base, spec)
    calls: list[Call] = []
    services = _Services()
    logger = logging.getLogger(f"pulsarfunc.function.{cfg.name}")
    given = dict(secrets or {})
    store = MemoryState(state)
    env = FunctionEnv(cfg, services, logger, lambda name: given.get(name), state=store)
    capture = _Capture()
    level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)  # every record is captured, whatever the root level
    try:
        run = _run_batches if spec.batch_size else _run
        run(spec, cfg, env, list(inputs), calls, raise_errors)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    return Result(
        calls, services.published, services.metrics, capture.records, cfg, store.snapshot()
    )


def _run(
    spec: Handler,
    cfg: FunctionConfig,
    env: FunctionEnv,
    inputs: Sequence[Any],
    calls: list[Call],
    raise_errors: bool,
) -> None:
    default_topic = cfg.inputs[0].topic if cfg.inputs else DEFAULT_INPUT
    invoker = Invoker.for_config(spec, cfg)
    outputs = Outputs.for_config(cfg, spec)
    guarantee = cfg.processing_guarantee
    source = _Source(calls)
    with _Loop(spec.is_async) as call:
        for i, item in enumerate(inputs):
            message = item if isinstance(item, Message) else Message(item)
            topic = message.topic or default_topic
            raw = _InMessage(_payload(invoker, topic, message.value), message, topic, _Id(i))
            ticket = Ticket(source, raw)
            result = Call(input=None)
            calls.append(result)
            if guarantee is ProcessingGuarantee.ATMOST_ONCE:
                source.ack(raw)
            try:
                result.input = invoker.decode(raw)
                for out in call(invoker, Context(env, raw, ticket), result.input):
                    result.payloads.append(outputs.encode(out))
                    result.outputs.append(out)
            except Exception as exc:
                result.error = exc
                if raise_errors:
                    raise
                continue
            if guarantee in ACKED_ON_SUCCESS:  # the runtime's own rule (settle.py)
                source.ack(raw)


def _run_batches(
    spec: Handler,
    cfg: FunctionConfig,
    env: FunctionEnv,
    inputs: Sequence[Any],
    calls: list[Call],
    raise_errors: bool,
) -> None:
    """`_run` for a batch handler: the inputs in order, `spec.batch_size` at a time."""
    default_topic = cfg.inputs[0].topic if cfg.inputs else DEFAULT_INPUT
    invoker = BatchInvoker.for_config(spec, cfg)
    outputs = Outputs.for_config(cfg, spec)
    guarantee = cfg.processing_guarantee
    source = _Source(calls)
    with _Loop(spec.is_async) as call:
        for start in range(0, len(inputs), invoker.size):
            batch: list[tuple[_InMessage, Call]] = []
            for i, item in enumerate(inputs[start : start + invoker.size], start):
                message = item if isinstance(item, Message) else Message(item)
                topic = message.topic or default_topic
                raw = _InMessage(_payload(invoker, topic, message.value), message, topic, _Id(i))
                result = Call(input=None, batch=start // invoker.size)
                calls.append(result)
                if guarantee is ProcessingGuarantee.ATMOST_ONCE:
                    source.ack(raw)
                try:
                    result.input = invoker.decode(raw)
                except Exception as exc:  # this input alone fails, as in the runtime
                    result.error = exc
                    if raise_errors:
                        raise
                    continue
                batch.append((raw, result))
            if not batch:
                continue
            first = batch[0][0]
            ctx = Context(env, first, Ticket(source, first))
            try:
                outcomes = invoker.outcomes(
                    functools.partial(_same, ctx),
                    [result.input for _, result in batch],
                    lambda ctx, values: call(invoker, ctx, values),
                )
            except Exception as exc:  # not per item: the whole batch fails
                for _, result in batch:
                    result.error = exc
                if raise_errors:
                    raise
                continue
            for (raw, result), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    result.error = outcome
                    continue
                if outcome is not None:
                    result.payloads.append(outputs.encode(outcome))
                    result.outputs.append(outcome)
                if guarantee in ACKED_ON_SUCCESS:
                    source.ack(raw)


def _same(ctx: Context) -> Context:
    return ctx


def _payload(invoker: Invoker, topic: str, value: Any) -> bytes:
    """What a producer would send for `value`: bytes as they are; under a schema or a serde
    configured for the topic (or a Record annotation), its encoding; else str as UTF-8 and the
    rest as JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    codec = invoker.codec_of(topic)
    if isinstance(codec, SchemaCodec | SerdeCodec):
        return codec.encode(value)
    return AUTO.encode(value)


class _Loop:
    """Calls the handler through the runtime's invocation core; async handlers on one event
    loop of their own, on its own thread (one loop for every input, as in the runtime), so a
    test may call `run_function` from inside a running loop (an async test) too."""

    def __init__(self, is_async: bool) -> None:
        self._loop = asyncio.new_event_loop() if is_async else None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Callable[[Invoker, Context, Any], list[Any]]:
        if self._loop is None:
            return lambda invoker, ctx, value: invoker.call(ctx, value)
        loop = self._loop
        self._thread = threading.Thread(target=loop.run_forever, name="pf-test-loop", daemon=True)
        self._thread.start()

        def call(invoker: Invoker, ctx: Context, value: Any) -> list[Any]:
            return asyncio.run_coroutine_threadsafe(invoker.call_async(ctx, value), loop).result()

        return call

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
