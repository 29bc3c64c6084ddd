"""One message's bookkeeping on its way through an instance, from receipt to ack or nack."""

from __future__ import annotations

import time

from pulsarfunc.runtime.transport import InMessage, Source


class Receipts:
    """Send receipts of one batch (batch mode): callbacks append, the loop counts."""

    __slots__ = ("done", "issued")

    def __init__(self) -> None:
        self.issued = 0
        self.done: list[None] = []  # list.append is atomic: no lock on the callback path


class Work:
    """One message: where it came from, what is pending, and how it went."""

    __slots__ = (
        "acked",
        "batch",
        "error",
        "msg",
        "outputs",
        "pending",
        "settled",
        "source",
        "started",
    )

    def __init__(
        self,
        source: Source,
        msg: InMessage,
        batch: Receipts | None = None,
        started: float = 0.0,
    ) -> None:
        self.source = source
        self.msg = msg
        self.batch = batch  # set in batch mode: settled after the batch's sends are persisted
        self.pending = 1  # the handler itself; each tracked send adds one (sliding window)
        self.error: BaseException | None = None
        self.settled = False
        self.acked = False  # by the function itself (MANUAL: context.ack())
        self.outputs = 0
        self.started = started or time.perf_counter()


def entry_of(msg: InMessage) -> tuple[int, int, int]:
    """The broker entry (one producer batch) a message came in."""
    mid = msg.message_id()
    return (mid.partition(), mid.ledger_id(), mid.entry_id())


def error_reason(error: BaseException) -> str:
    """`Type: first line of the message`, short enough for a log line or a property."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:1000]
