"""The exception tree of pulsarfunc.

    PulsarFuncError            root; exit code 1 when it reaches the command line
    ├── UserError              the user can fix it: bad handler, flag, config (exit code 2)
    │   ├── ConfigError        a flag, env var, config file or FunctionDetails value
    │   └── HandlerError       a handler that cannot be loaded or has an unusable signature
    ├── PayloadError           one message cannot be decoded or its output encoded
    ├── HandlerCancelledError  an async handler raised asyncio.CancelledError: fails its message
    ├── BatchItemFailures      raised by a batch handler: these items failed (`batching.py`)
    ├── BatchItemError         one item it named without an error of its own
    ├── BatchResultError       a batch's result that does not fit the batch: every item fails
    └── BrokerError            the Pulsar client failed (connect, subscribe, produce)

Builder errors (`pulsarfunc.builder.errors`) hang under the same root.
Per-message errors never escape the instance loop; start-up errors always do, before connecting.
"""

from __future__ import annotations

import sys


class PulsarFuncError(Exception):
    """Root of every error pulsarfunc raises on purpose."""

    exit_code = 1

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.problem}\n  hint: {self.hint}" if self.hint else self.problem


class UserError(PulsarFuncError):
    """Something the user can fix; says what was found and what to do."""

    exit_code = 2


class ConfigError(UserError):
    """A bad flag, environment variable, config file or FunctionDetails value."""


class HandlerError(UserError):
    """A handler that cannot be loaded, or whose signature no form accepts."""


class PayloadError(PulsarFuncError):
    """A message payload that cannot be decoded, or an output that cannot be encoded."""


class HandlerCancelledError(PulsarFuncError):
    """An async handler raised `asyncio.CancelledError`: a failure of its message, like any
    exception, instead of a task that ends without its message being settled."""


class BrokerError(PulsarFuncError):
    """The Pulsar client failed: connect, subscribe or produce."""


class _NeverRaised(BaseException):
    """Matched by no exception: `asyncio.CancelledError` before asyncio is imported."""


def asyncio_cancelled() -> type[BaseException]:
    """`asyncio.CancelledError`, for an `except` clause, without importing asyncio (4 MB
    resident, for a sync handler that never needs it): until something imported asyncio,
    nothing can have raised it, and the clause matches nothing."""
    asyncio = sys.modules.get("asyncio")
    return _NeverRaised if asyncio is None else asyncio.CancelledError
