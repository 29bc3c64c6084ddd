"""Deadlines for one handler call (`--timeout-ms`), as the invocation core (`invoke.py`) uses them.

- Async calls: `within` cancels the awaitable at the deadline; `iterate` gives an async
  generator one deadline for all of its outputs together.
- Sync calls cannot be interrupted. `HandlerThreads.run` runs the call on a handler thread while
  the caller waits at most the timeout; at the deadline the caller gets a TimeoutError and the
  call goes on in the background, its result discarded. At most `MAX_LATE_CALLS` calls may run
  late at once; beyond that a call fails at its deadline without being started.

Either way the caller sees a TimeoutError raised like any handler exception, so retries, the
dead-letter topic and acks work exactly as for other failures.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio  # the async deadlines import it when called: sync handlers never load it

MAX_LATE_CALLS = 16  # sync calls still running past their deadline before new ones are refused

_T = TypeVar("_T")


def expired(timeout_s: float) -> TimeoutError:
    """The error of a call that did not finish in time."""
    return TimeoutError(f"handler did not finish within {timeout_s * 1000:g} ms (--timeout-ms)")


async def within(awaitable: Awaitable[_T], timeout_s: float, limit_s: float | None = None) -> _T:
    """The awaitable's result, or `expired` once `timeout_s` passed (the awaitable cancelled).

    A task of its own, so that a TimeoutError the handler raises itself is told apart from ours,
    and a handler that ignores the cancellation is not waited for. `limit_s` is the configured
    timeout named in the error (default `timeout_s`).
    """
    import asyncio

    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
    if not done:
        task.cancel()
        task.add_done_callback(_discard)
        raise expired(timeout_s if limit_s is None else limit_s)
    return task.result()


def _discard(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a late failure is not logged as never retrieved


async def iterate(outputs: AsyncIterator[_T], timeout_s: float) -> AsyncIterator[_T]:
    """The items of an async iterator, all of them within one deadline."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            item = await within(outputs.__anext__(), deadline - loop.time(), timeout_s)
        except StopAsyncIteration:
            return
        yield item


class HandlerThreads:
    """Handler threads, so that a caller can stop waiting for a sync call at its deadline.

    Threads are made on demand up to `limit`, and reused; a thread whose call is late goes back
    to the pool once the call returns. Calls run in a copy of the caller's contextvars, so
    `current_context()` on the handler thread is the caller's message, even for a late call.
    """

    def __init__(self, timeout_s: float, limit: int) -> None:
        self.timeout_s = timeout_s
        self._limit = limit
        self._idle: queue.SimpleQueue[_Thread] = queue.SimpleQueue()
        self._made = 0
        self._lock = threading.Lock()

    def run(self, call: Callable[[], _T]) -> _T:
        """`call()` on a handler thread; its result, or TimeoutError at the deadline."""
        timeout_s = self.timeout_s
        thread = self._take(timeout_s)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        context = contextvars.copy_context()
        thread.jobs.put((functools.partial(context.run, call), future))
        try:
            result: _T = future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            if future.done():  # finished just now: its own outcome stands
                late: _T = future.result()
                return late
            raise expired(timeout_s) from None
        return result

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


_Job = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class _Thread:
    """One handler thread: runs jobs one at a time, then offers itself back to the pool."""

    def __init__(self, idle: queue.SimpleQueue[_Thread], number: int) -> None:
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
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
