"""The benchmark's trivial batch handler: each input's bytes, unchanged (up to 100 a call)."""

from pulsarfunc import Batch


def handler(items: Batch[bytes]) -> list[bytes]:
    return items
