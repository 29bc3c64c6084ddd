"""Run a function instance in-process against the real broker, for runtime integration tests."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import waiting

from pulsarfunc.runtime.config import FunctionConfig, InputSpec, SubscriptionPosition
from pulsarfunc.runtime.start import run


@dataclasses.dataclass
class Running:
    """A running instance: stop it to make it drain and return."""

    thread: threading.Thread
    stop_event: threading.Event
    errors: list[BaseException]

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"instance did not stop within {timeout_s} s"
        if self.errors:
            raise self.errors[0]


def config_for(service_url: str, *inputs: str, output: str = "", **fields: Any) -> FunctionConfig:
    """A FunctionConfig for tests: Earliest position, a name unique to the output/input."""
    specs = tuple(
        InputSpec(topic[len("regex:") :], is_regex=True)
        if topic.startswith("regex:")
        else InputSpec(topic)
        for topic in inputs
    )
    fields.setdefault("name", "fn-" + (output or inputs[0]).rsplit("-", 1)[-1])
    fields.setdefault("subscription_position", SubscriptionPosition.EARLIEST)
    return FunctionConfig(service_url=service_url, inputs=specs, output=output, **fields)


@contextmanager
def running(handler: object, config: FunctionConfig) -> Iterator[Running]:
    """Start `handler` in a thread; on exit, stop it and wait for the graceful drain."""
    ready = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(handler, config, ready=ready.set, stop=stop)
        except BaseException as exc:  # reported by Running.stop
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=target, daemon=True, name="instance-under-test")
    thread.start()
    assert ready.wait(60), "instance did not become ready within 60 s"
    if errors:
        raise errors[0]
    handle = Running(thread, stop, errors)
    try:
        yield handle
    finally:
        if thread.is_alive():
            handle.stop()


def admin(admin_url: str, method: str, path: str, body: Any = None) -> Any:
    """Call the broker's REST admin API; returns the decoded JSON answer (or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        admin_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def backlog(admin_url: str, topic: str, subscription: str) -> int:
    """Unacknowledged messages of a subscription (0 = everything was acked)."""
    path = topic.replace("persistent://", "/admin/v2/persistent/")
    stats = admin(admin_url, "GET", f"{path}/stats")
    return int(stats["subscriptions"][subscription]["msgBacklog"])


def wait_backlog(
    admin_url: str, topic: str, subscription: str, expected: int, timeout_s: float = 20
) -> int:
    """Poll until the backlog equals `expected` (acks are grouped, so they land a bit later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = backlog(admin_url, topic, subscription)
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """`waiting.wait_for` at a broker's pace: a longer deadline, fewer polls."""
    waiting.wait_for(predicate, timeout_s, poll_s=0.05)
