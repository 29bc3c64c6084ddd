"""The handler timeout (`--timeout-ms`): a message whose handler runs too long fails.

`with_timeout(handler, ms, concurrency)` returns a Handler whose `call` keeps the deadline; the
instance loop sees a `TimeoutError` raised like any handler exception, so retries, the
dead-letter topic and acks work exactly as for other failures. With no timeout the handler is
returned unchanged: no cost per message.

- async handlers: `asyncio.wait_for` cancels the coroutine at the deadline (an async generator
  gets the deadline for all of its outputs together).
- sync handlers cannot be interrupted. Each call runs on a handler thread while the caller waits
  at most the timeout; at the deadline the caller fails the message and the call goes on in the
  background, its result discarded. A generator is run to its end on that thread, so its
  outputs are sent only once it finished in time. At most `MAX_LATE_CALLS` calls may run late
  at once; beyond that a message fails at its deadline without being started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pulsarfunc.runtime.handler import Handler

MAX_LATE_CALLS = 16  # sync calls still running past their deadline before new ones are refused


def with_timeout(handler: Handler, timeout_ms: int | None, concurrency: int = 1) -> Handler:
    """`handler` with a per-message deadline of `timeout_ms`; unchanged when it is None."""
    if timeout_ms is None:
        return handler
    fields = {f.name: getattr(handler, f.name) for f in dataclasses.fields(handler)}
    runner = None if handler.is_async else _Runner(max(1, concurrency) + MAX_LATE_CALLS)
    return TimedHandler(**fields, timeout_s=timeout_ms / 1000.0, runner=runner)


def _expired(timeout_s: float) -> TimeoutError:
    return TimeoutError(f"handler did not finish within {timeout_s * 1000:g} ms (--timeout-ms)")


@dataclasses.dataclass(frozen=True)
class TimedHandler(Handler):
    """A Handler whose `call` fails with TimeoutError once `timeout_s` has passed."""

    timeout_s: float = 0.0
    runner: _Runner | None = dataclasses.field(default=None, compare=False, repr=False)

    def plain_call(self) -> None:
        return None  # every call goes through the deadline

    def call(self, context: Any, value: Any) -> Any:
        if self.is_async_gen:
            return _limited_iteration(super().call(context, value), self.timeout_s)
        if self.is_async:
            return _limited(super().call(context, value), self.timeout_s)
        assert self.runner is not None
        return self.runner.run(functools.partial(Handler.call, self, context, value), self)


async def _within(awaitable: Awaitable[Any], timeout_s: float, limit_s: float) -> Any:
    """The awaitable's result, or `_expired` once `timeout_s` passed (the awaitable cancelled).

    A task of its own, so a TimeoutError the handler raises itself is told apart from ours; a
    handler that ignores the cancellation is not waited for.
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
    if not done:
        task.cancel()
        task.add_done_callback(_discard)
        raise _expired(limit_s)
    return task.result()


def _discard(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a late failure is not logged as never retrieved


async def _limited(awaitable: Awaitable[Any], timeout_s: float) -> Any:
    return await _within(awaitable, timeout_s, timeout_s)


async def _limited_iteration(outputs: AsyncIterator[Any], timeout_s: float) -> AsyncIterator[Any]:
    """The outputs of an async generator, all of them within one deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            item = await _within(outputs.__anext__(), deadline - loop.time(), timeout_s)
        except StopAsyncIteration:
            return
        yield item


def _complete(call: Callable[[], Any], yields: bool) -> Any:
    """Run the handler to its end on the handler thread: a generator fully, a coroutine too."""
    result = call()
    if inspect.isawaitable(result):  # a sync wrapper around a coroutine
        result = asyncio.run(_awaited(result))
    if yields:
        return list(result)
    return result


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class _Runner:
    """Handler threads, so that a caller can stop waiting for a sync call at its deadline.

    Threads are made on demand up to `limit`, and reused; a thread whose call is late goes back
    to the pool once the call returns. Calls run in a copy of the caller's context, so
    `current_context()` works on the handler thread.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._idle: queue.SimpleQueue[_Thread] = queue.SimpleQueue()
        self._made = 0
        self._lock = threading.Lock()

    def run(self, call: Callable[[], Any], handler: TimedHandler) -> Any:
        timeout_s = handler.timeout_s
        thread = self._take(timeout_s)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        context = contextvars.copy_context()
        thread.jobs.put((functools.partial(context.run, _complete, call, handler.yields), future))
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            if future.done():  # finished just now: its own outcome stands
                return future.result()
            raise _expired(timeout_s) from None

    def _take(self, timeout_s: float) -> _Thread:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._made < self._limit:
                self._made += 1
                return _Thread(self._idle, self._made)
        try:
            return self._idle.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(
                f"no handler thread free within {timeout_s * 1000:g} ms: {self._limit} handler "
                "calls are still running past their deadline (--timeout-ms)"
            ) from None


Job = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class _Thread:
    """One handler thread: runs jobs one at a time, then offers itself back to the pool."""

    def __init__(self, idle: queue.SimpleQueue[_Thread], number: int) -> None:
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._idle = idle
        threading.Thread(target=self._serve, name=f"pf-handler-{number}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            job, future = self.jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the waiting caller, who re-raises it
                future.set_exception(exc)
            self._idle.put(self)
