"""A handler that fails once: the failure every retry test needs, in one place."""

from __future__ import annotations

from collections.abc import Callable


def _same(text: str) -> str:
    return text


class FailsOnce:
    """Records every call; raises RuntimeError the first time it sees `on`, else returns
    `then(text)`. A callable object, so the runtime takes it as a handler of str."""

    def __init__(self, on: str, then: Callable[[str], str] = _same) -> None:
        self.on = on
        self.then = then
        self.calls: list[str] = []

    def __call__(self, text: str) -> str:
        self.calls.append(text)
        if text == self.on and self.calls.count(text) == 1:
            raise RuntimeError("once")
        return self.then(text)
