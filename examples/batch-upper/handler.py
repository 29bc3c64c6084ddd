"""batch-upper: a batch handler, called with up to 100 inputs, with a per-item failure.

Each input is decoded by `str` on its own; the handler returns one output per input, in
order. An empty input fails alone: its place holds the exception, so only that message is
retried (or dead-lettered after --max-message-retries); every other one is acknowledged once
its output is persisted.
"""

from pulsarfunc import Batch


def handler(items: Batch[str]) -> list[str | Exception]:
    return [text.upper() if text.strip() else ValueError("empty input") for text in items]
