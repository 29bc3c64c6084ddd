"""Calling a batch handler: a group's messages as lists of items, one outcome per item.

`BatchInvoker` is the `Invoker` of a batch handler (`batching.py`); engines use its
`call_each` as they use any invoker's, so groups, sends and settling are the same as for every
other handler (`groups.py`). Per batch of up to `size` messages:

    decode each message                  as a single-message handler's input (serde, schema,
                                         annotation); one that cannot be decoded fails alone
    call(ctx, [values])                  once, with the Context of the batch's first message
    outcomes                             the returned list, or BatchItemFailures' items: each an
                                         output (None: none) or an exception (that item fails)
    put / fail per item                  outputs to the outbox, failures to the settler

A wrong result (not a list, a list of another length, an index out of range) or any other
exception fails every item of the batch. With `stop_at_failure` (in order: --retain-ordering,
EFFECTIVELY_ONCE) the items before the first failure keep their outputs, the failed one is
settled first, and the items after it are called again behind it, in a later batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pulsarfunc.runtime.batching import BatchItemError, BatchItemFailures, BatchResultError
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.context import Context, Cursor
from pulsarfunc.runtime.errors import asyncio_cancelled
from pulsarfunc.runtime.handler import Handler
from pulsarfunc.runtime.invoke import Fail, Invoker, Put, handler_cancelled
from pulsarfunc.runtime.schemas import Wire
from pulsarfunc.runtime.transport import InMessage

Call = Callable[[Context, Any], list[Any]]
"""Calls the handler with its Context and input (the list), to its outputs (see `Invoker`)."""

_HINT = (
    "return a list with one entry per input, in order: the output, None for no output, or an "
    "exception object for an input that failed (or raise BatchItemFailures naming them)"
)


class BatchInvoker(Invoker):
    """The Invoker of a batch handler; see the module docstring."""

    def __init__(
        self,
        handler: Handler,
        *,
        timeout_ms: int | None = None,
        wire: Wire | None = None,
        concurrency: int = 1,
    ) -> None:
        super().__init__(handler, timeout_ms=timeout_ms, wire=wire, concurrency=concurrency)
        self.size = max(1, handler.batch_size)
        # `_plain`, set when the handler takes its input alone (sync, no timeout), is called
        # with the list directly: no Context unless `current_context()` asks the cursor.

    @classmethod
    def for_config(
        cls,
        handler: Handler,
        config: FunctionConfig,
        concurrency: int = 1,
        wire: Wire | None = None,
    ) -> BatchInvoker:
        invoker = super().for_config(handler, config, concurrency, wire)
        assert isinstance(invoker, BatchInvoker)
        return invoker

    def outcomes(
        self, ctx: Callable[[], Context], values: list[Any], call: Call | None = None
    ) -> list[Any]:
        """Each item's outcome, in order: its output (None: none) or its exception.

        Raised: what fails the whole batch (the handler's own exception, BatchResultError).
        `ctx` makes the batch's Context, when the handler takes one. `call` calls the handler
        instead of `self.call` (`pulsarfunc.testing`: its own loop).
        """
        plain = self._plain
        try:
            if call is None and plain is not None:
                returned = self._outputs_of(plain, values)
            else:
                returned = (call or self.call)(ctx(), values)
        except BatchItemFailures as failures:
            return _failed_items(failures, len(values))
        result = returned[0] if returned else None
        if not isinstance(result, (list, tuple)):
            raise BatchResultError(
                f"the batch handler returned {_shown(result)} for a batch of {len(values)} "
                "inputs, not a list",
                _HINT,
            )
        if len(result) != len(values):
            raise BatchResultError(
                f"the batch handler returned {len(result)} outputs for a batch of "
                f"{len(values)} inputs",
                _HINT,
            )
        return list(result)

    def _outputs_of(self, plain: Callable[[Any], Any], values: list[Any]) -> list[Any]:
        """`call`'s outputs, for a sync handler taking its input alone (the context is the
        cursor the group runner bound)."""
        try:
            return self._collect(plain(values))
        except asyncio_cancelled() as exc:
            raise handler_cancelled() from exc

    def call_each(
        self,
        msgs: Sequence[InMessage],
        cursor: Cursor,
        put: Put,
        fail: Fail,
        *,
        stop_at_failure: bool = False,
    ) -> None:
        """The messages in batches of `size`: outputs to `put`, failures to `fail` (and, with
        `stop_at_failure`, nothing after the first failure)."""
        for start in range(0, len(msgs), self.size):
            end = min(len(msgs), start + self.size)
            if not self._batch(msgs, range(start, end), cursor, put, fail, stop_at_failure):
                return

    def _batch(
        self,
        msgs: Sequence[InMessage],
        span: range,
        cursor: Cursor,
        put: Put,
        fail: Fail,
        stop: bool,
    ) -> bool:
        """One call of the handler; False when a failure stops the group (`stop`)."""
        decode = self.decode
        indexes: Sequence[int] = span
        undecoded: tuple[int, Exception] | None = None
        try:  # the common case: every item decodes
            values = [decode(msgs[index]) for index in span]
        except Exception:  # then item by item: one that cannot be decoded fails alone
            kept: list[int] = []
            values = []
            for index in span:
                try:
                    values.append(decode(msgs[index]))
                    kept.append(index)
                except Exception as exc:
                    if stop:
                        undecoded = (index, exc)  # the items before it are called first
                        break
                    fail(index, exc)
            indexes = kept
        if indexes:
            cursor.index = indexes[0]
            cursor.ctx = None
            try:
                outcomes = self.outcomes(cursor.context, values)
            except Exception as exc:  # not per item: every item fails (`call` turns a
                for index in indexes[:1] if stop else indexes:  # CancelledError into one)
                    fail(index, exc)
                return not stop
            for index, outcome in zip(indexes, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    fail(index, outcome)
                    if stop:
                        return False
                elif outcome is not None:
                    try:
                        put(index, msgs[index], outcome)
                    except Exception as exc:  # an output its codec cannot write
                        fail(index, exc)
                        if stop:
                            return False
        if undecoded is not None:
            fail(*undecoded)
            return False
        return True


def _failed_items(failures: BatchItemFailures, count: int) -> list[Any]:
    """The outcomes `BatchItemFailures` tells: its items' errors, the rest's outputs."""
    wrong = sorted(i for i in failures.failures if not 0 <= i < count)
    if wrong:
        raise BatchResultError(
            f"BatchItemFailures names items {wrong} of a batch of {count} inputs (0-{count - 1})",
            "name items by their index in the list the handler received",
        ) from failures
    outputs = failures.outputs
    if outputs is not None and len(outputs) != count:
        raise BatchResultError(
            f"BatchItemFailures gives {len(outputs)} outputs for a batch of {count} inputs",
            _HINT,
        ) from failures
    outcomes: list[Any] = list(outputs) if outputs is not None else [None] * count
    for index, error in failures.failures.items():
        if not isinstance(error, Exception):
            error = BatchItemError(
                f"item {index} of the batch failed (named by BatchItemFailures)",
                "pass {index: exception} to BatchItemFailures to record why",
            )
        outcomes[index] = error
    return outcomes


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
