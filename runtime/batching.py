"""What a batch handler writes and raises: the `Batch[T]` annotation and `BatchItemFailures`.

A batch handler takes a list of inputs and returns one output per input, in order:

    def handler(items: Batch[str]) -> list[str | None]:        up to 100 items a call
    def handler(items: list[str]) -> list[str]                 with --batch-max-size N only

`Batch[T]` is `list[T]` to a type checker (an `Annotated` alias): it only marks the parameter,
so that a plain `list[T]` keeps meaning one JSON array payload. Per-item failures are told in
one of two ways, and only those items are retried or dead-lettered:

    return [out0, ValueError("bad"), None]      an exception object in that item's place
    raise BatchItemFailures({1: ValueError("bad")}, outputs=[out0, None, None])

Pure: no I/O; `invoke_batch.py` applies these rules to a group of messages.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from pulsarfunc.runtime.errors import PulsarFuncError

T = TypeVar("T")

DEFAULT_BATCH_SIZE = 100  # the batch size a `Batch[T]` annotation asks for without a flag


class _BatchMarker:
    """Marks a `Batch[T]` parameter (the metadata of its `Annotated`)."""

    def __repr__(self) -> str:
        return "pulsarfunc.Batch"


BATCH_MARKER = _BatchMarker()

Batch = Annotated[list[T], BATCH_MARKER]
"""`Batch[T]`: the handler takes a list of up to N inputs, each decoded by `T`."""


def batch_element(annotation: Any) -> Any | None:
    """`T` of a `Batch[T]` annotation (`Any` for a bare `Batch`); None for anything else."""
    if typing.get_origin(annotation) is not Annotated:
        return None
    if not any(meta is BATCH_MARKER for meta in annotation.__metadata__):
        return None
    element = list_element(typing.get_args(annotation)[0])
    return Any if isinstance(element, TypeVar) else element


def list_element(annotation: Any) -> Any:
    """`T` of a `list[T]` (or `Sequence[T]`, ...) annotation; `Any` when it names none."""
    args = typing.get_args(annotation)
    return args[0] if args and typing.get_origin(annotation) is not Annotated else Any


class BatchItemFailures(PulsarFuncError):  # noqa: N818 (the name says what the handler raises)
    """Raised by a batch handler: these items failed, the rest succeeded.

    `failed` holds indexes in the batch, or maps each to its error (None: a generic one).
    `outputs`, when given, is the batch's outputs (one per item, as a return would be); the
    failed items' places are ignored. Without it, the items that succeeded have no output.
    """

    def __init__(
        self,
        failed: Mapping[int, BaseException | None] | Iterable[int],
        outputs: Sequence[Any] | None = None,
    ) -> None:
        items = dict(failed) if isinstance(failed, Mapping) else dict.fromkeys(failed)
        self.failures: dict[int, BaseException | None] = items
        self.outputs = None if outputs is None else list(outputs)
        shown = ", ".join(str(i) for i in sorted(items)[:10]) + (", ..." if len(items) > 10 else "")
        super().__init__(f"{len(items)} items of the batch failed: {shown}")


class BatchItemError(PulsarFuncError):
    """One item's failure, named by `BatchItemFailures` without an error of its own."""


class BatchResultError(PulsarFuncError):
    """A batch handler's result that does not fit its batch: every item of it fails."""
