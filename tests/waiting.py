"""Polling until a condition holds, for tests that wait on threads, processes or a broker."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0, poll_s: float = 0.005) -> None:
    """Poll until `predicate` holds; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(poll_s)
