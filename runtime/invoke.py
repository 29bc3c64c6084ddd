"""The one way a handler is called: one input, with its Context, to a list of outputs.

Every engine calls handlers through an `Invoker`, and so does `pulsarfunc.testing`:

    decode(msg)                   -> value    the topic's serde or schema, else the handler's codec
    call(ctx, value)              -> outputs  any handler; an async one runs to completion here
    await call_async(ctx, value)  -> outputs  an async handler, on the caller's event loop
    call_each(msgs, cursor, put, fail)        decode and `call` each message of a group, in order
    await process_async(ctx, put, fail)       decode and `call_async` one message (async engine)

`call_each` and `process_async` are the engines' only ways in: `--tracing` swaps in a subclass
(`tracing.TracedInvoker`) that wraps each message in its span, chosen once at start.

The rules, the same on every path:
- the Context is current (`current_context()`) for the whole call, the iteration of a generator
  or async generator included;
- the return value is the output and None means none; a generator or async generator yields
  outputs (a yielded None is skipped);
- a sync handler that returns an awaitable (a sync wrapper around async code) has it awaited;
- errors are exceptions, raised to the caller unchanged, except that an `asyncio.CancelledError`
  raised by a handler (sync or async) becomes `HandlerCancelledError`: a failure of that
  message, never a stop of the engine that runs it (only the engine's own cancellation of a
  call it gave up at the stop deadline stays a cancellation);
- a generator's outputs count only if it finishes: one that fails half-way gives none;
- with `--timeout-ms`, a call that does not finish in time raises TimeoutError
  (`timeouts.py`: an async call is cancelled, a sync one abandoned on its handler thread).

`call_each` is the batch engines' hot loop. It gives exactly what `decode` and `call` give per
message (tests/unit/test_invoke.py); it only skips what a handler does not need: a Context for
one that takes none (the cursor makes one if `current_context()` is called), and the codec for
bytes in as bytes.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import inspect
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from pulsarfunc.runtime import context as ctxmod
from pulsarfunc.runtime.codec import Codec, RawCodec
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.context import Context, Cursor
from pulsarfunc.runtime.errors import HandlerCancelledError, asyncio_cancelled
from pulsarfunc.runtime.handler import Handler
from pulsarfunc.runtime.naming import strip_partition
from pulsarfunc.runtime.schemas import Wire, wire_for
from pulsarfunc.runtime.timeouts import MAX_LATE_CALLS, HandlerThreads, iterate, within
from pulsarfunc.runtime.transport import InMessage

if TYPE_CHECKING:
    import asyncio

# asyncio is imported where an async handler needs it: a sync handler runs without it.

Put = Callable[[int, InMessage, Any], None]
"""Takes one output: (index of the message in its group, the message, the output value)."""
Fail = Callable[[int, Exception], None]
"""Takes the failure of one message: (index in its group, the exception)."""

# Results that are certainly not awaitable: the common case skips `inspect.isawaitable`.
_PLAIN_RESULTS = frozenset({bytes, str, dict, list, int, float, bool, type(None), tuple})


class Invoker:
    """Calls one handler, as configured; see the module docstring. Any thread may use it."""

    def __init__(
        self,
        handler: Handler,
        *,
        timeout_ms: int | None = None,
        wire: Wire | None = None,
        concurrency: int = 1,
    ) -> None:
        self.handler = handler
        self.is_async = handler.is_async
        self._call = handler.call
        self._yields = handler.yields
        self._async_gen = handler.is_async_gen
        self._codec = handler.input_codec
        wire = wire or Wire()
        self._by_topic: dict[str, Codec] = dict(wire.inputs)  # and each pattern-matched topic
        self._patterns = [(re.compile(pattern), codec) for pattern, codec in wire.patterns]
        # bytes in as bytes: the client's data() is a fresh bytes object already
        self._raw = not (wire.inputs or wire.patterns) and isinstance(self._codec, RawCodec)
        self._raw = self._raw and self._codec.name == "bytes"
        self._timeout_s = None if timeout_ms is None else timeout_ms / 1000.0
        self._threads = (
            HandlerThreads(self._timeout_s, max(1, concurrency) + MAX_LATE_CALLS)
            if self._timeout_s is not None and not self.is_async
            else None
        )
        # The cheapest call: the target itself, for a sync handler taking its input alone.
        self._plain = None if self._threads is not None or self.is_async else handler.plain_call()
        self._loops = threading.local()  # async handlers called with `call`: a loop per thread
        # a coroutine function awaited for one output, without a timeout: the fast async path
        self._plain_async = self.is_async and not self._async_gen and self._timeout_s is None

    @classmethod
    def for_config(
        cls,
        handler: Handler,
        config: FunctionConfig,
        concurrency: int = 1,
        wire: Wire | None = None,
    ) -> Invoker:
        """The Invoker for `handler` under `config`: its timeout, and the serde or schema it
        names per input topic, which wins over the handler's annotation (as in Pulsar)."""
        if wire is None:
            wire = wire_for(config, handler.input_codec, handler.output_codec)
        return cls(handler, timeout_ms=config.timeout_ms, wire=wire, concurrency=concurrency)

    # -- one message ---------------------------------------------------------------------------
    def decode(self, msg: InMessage) -> Any:
        """The handler's input from `msg`; PayloadError if the payload does not fit."""
        if self._raw:
            return msg.data()
        topic = msg.topic_name()
        codec = self._by_topic.get(topic)
        if codec is None:
            codec = self._by_topic[topic] = self.codec_of(topic)
        return codec.decode(msg.data())

    def codec_of(self, topic: str) -> Codec:
        """A topic's codec: its input's (a partition's is its topic's), a pattern's that it
        matches, else the handler's."""
        name = strip_partition(topic)
        if name in self._by_topic:
            return self._by_topic[name]
        for pattern, codec in self._patterns:
            if pattern.fullmatch(name):
                return codec
        return self._codec

    def call(self, ctx: Context, value: Any) -> list[Any]:
        """The outputs of one call, with `ctx` current; the handler's exception is raised."""
        if self.is_async:
            return self._event_loop().run_until_complete(self.call_async(ctx, value))
        token = ctxmod.bind(ctx)
        try:
            if self._threads is None:
                return self._outputs(ctx, value)
            return self._threads.run(lambda: self._outputs(ctx, value))
        finally:
            ctxmod.unbind(token)

    def _outputs(self, ctx: Context, value: Any) -> list[Any]:
        try:
            return self._collect(self._call(ctx, value))
        except asyncio_cancelled() as exc:
            raise handler_cancelled() from exc

    def _collect(self, result: Any) -> list[Any]:
        """A sync handler's outputs from what it returned: an awaitable is awaited, a
        generator run to its end (all of its outputs or, if it fails, none), None dropped."""
        if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
            result = _run(result)
        if self._yields:
            return [out for out in result if out is not None]
        return [] if result is None else [result]

    async def call_async(self, ctx: Context, value: Any) -> list[Any]:
        """`call` for an async handler, on the running event loop."""
        token = ctxmod.bind(ctx)
        try:
            return await self._outputs_async(ctx, value)
        except asyncio_cancelled() as exc:
            raise _cancelled(exc) from exc
        finally:
            ctxmod.unbind(token)

    async def _outputs_async(self, ctx: Context, value: Any) -> list[Any]:
        result = self._call(ctx, value)
        timeout_s = self._timeout_s
        if self._async_gen:
            items = result if timeout_s is None else iterate(result, timeout_s)
            return [out async for out in items if out is not None]
        out = await (result if timeout_s is None else within(result, timeout_s))
        return [] if out is None else [out]

    async def process_async(
        self, ctx: Context, put: Callable[[Any], None], fail: Callable[[Exception], None]
    ) -> None:
        """The async engine's one message: decode `ctx.message`, call the handler as
        `call_async` does, each output to `put`; the first failure (decoding, the handler, an
        output `put` refuses) to `fail`. A plain coroutine handler is awaited right here: one
        coroutine less per message than going through `call_async`."""
        token = ctxmod.bind(ctx)
        try:
            value = self.decode(ctx.message)
            if self._plain_async:
                out = await self._call(ctx, value)
                if out is not None:
                    put(out)
            else:
                for out in await self._outputs_async(ctx, value):
                    put(out)
        except asyncio_cancelled() as exc:
            fail(_cancelled(exc))  # re-raised if the engine cancels the call
        except Exception as exc:
            fail(exc)
        finally:
            ctxmod.unbind(token)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio  # only for async handlers

        loop: asyncio.AbstractEventLoop | None = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = asyncio.new_event_loop()
        return loop

    def release_thread(self) -> None:
        """Close the event loop `call` made on this thread for an async handler, if any."""
        loop: asyncio.AbstractEventLoop | None = getattr(self._loops, "loop", None)
        if loop is not None:
            self._loops.loop = None
            loop.close()

    # -- a group of messages: the batch engines' hot loop ---------------------------------------
    def call_each(
        self,
        msgs: Sequence[InMessage],
        cursor: Cursor,
        put: Put,
        fail: Fail,
        *,
        stop_at_failure: bool = False,
    ) -> None:
        """`decode` and `call` each message in order: outputs to `put`, failures to `fail`
        (and no further message with `stop_at_failure`).

        `cursor` is bound as the current context of this thread; it is moved to each message
        and makes its Context only when the handler takes one or asks for it.
        """
        plain, yields, decode = self._plain, self._yields, self.decode
        for index, msg in enumerate(msgs):
            cursor.index = index
            cursor.ctx = None
            try:
                value = decode(msg)
                if plain is None:
                    for out in self.call(cursor.context(), value):
                        put(index, msg, out)
                    continue
                result = plain(value)
                if yields or type(result) not in _PLAIN_RESULTS:
                    for out in self._collect(result):
                        put(index, msg, out)
                elif result is not None:  # the common case, inline: one plain output
                    put(index, msg, result)
            except Exception as exc:
                fail(index, exc)
                if stop_at_failure:
                    return
            except asyncio_cancelled():
                fail(index, handler_cancelled())
                if stop_at_failure:
                    return


def _cancelled(exc: BaseException) -> HandlerCancelledError:
    """The failure a handler's own CancelledError is; the engine's cancellation of the call
    (the instance gave it up at the stop) is raised on, as a cancellation."""
    import asyncio  # loaded already: something raised its CancelledError

    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    if cancelling is not None and cancelling():
        raise exc
    return handler_cancelled()


def handler_cancelled() -> HandlerCancelledError:
    return HandlerCancelledError(
        "the handler raised asyncio.CancelledError",
        "a cancelled inner task propagated out of the handler: catch it there, or let the "
        "message fail and be retried",
    )


def _run(awaitable: Awaitable[Any]) -> Any:
    """Await what a sync handler returned, on an event loop of its own (on a thread of its own
    when this thread runs a loop already, e.g. `pulsarfunc.testing` in an async test)."""

    import asyncio  # only for what returns an awaitable

    async def awaited() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(awaited())
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, "pf-await") as pool:
        return pool.submit(context.run, asyncio.run, awaited()).result()
