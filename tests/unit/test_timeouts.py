"""The handler timeout (`--timeout-ms`) on the in-memory broker and on its own."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from fake_broker import FakeBroker, FakeMessage
from test_instance import OUT
from test_instance import started as started_instance
from waiting import wait_for

from pulsarfunc import Context, current_context
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.context import FunctionEnv
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance
from pulsarfunc.runtime.invoke import Invoker
from pulsarfunc.runtime.timeouts import HandlerThreads

DLQ = "persistent://public/default/dead"


def started(
    handler: Callable[..., Any], broker: FakeBroker, **fields: Any
) -> AbstractContextManager[Instance]:
    """The instance loop on the fake broker; failures go straight to the dead-letter topic."""
    fields.setdefault("max_message_retries", 0)
    fields.setdefault("dead_letter_topic", DLQ)
    return started_instance(handler, broker, **fields)


def outputs(broker: FakeBroker, topic: str = OUT) -> list[bytes]:
    return [m.payload for m in broker.sent.get(topic, [])]


def letter_props(broker: FakeBroker) -> list[dict[str, str]]:
    return [dict(m.properties or {}) for m in broker.sent.get(DLQ, [])]


def test_without_a_timeout_a_sync_handler_runs_on_the_calling_thread() -> None:
    def where(text: str) -> str:
        return threading.current_thread().name

    handler = inspect_handler(where)
    ctx = Context(FunctionEnv(FunctionConfig(name="fn"), None, None, None), None)  # type: ignore[arg-type]
    here = threading.current_thread().name
    assert Invoker(handler).call(ctx, "x") == [here]
    assert Invoker(handler, timeout_ms=1000).call(ctx, "x")[0].startswith("pf-handler-")


@pytest.mark.parametrize("concurrency", [1, 3])  # batch mode, then worker threads
def test_a_slow_sync_handler_is_dead_lettered_at_the_deadline_and_its_result_dropped(
    concurrency: int,
) -> None:
    broker = FakeBroker()
    release = threading.Event()
    finished: list[str] = []

    def slow_on_stuck(text: str) -> str:
        if text == "stuck":
            release.wait(10)
            finished.append(text)
        return text.upper()

    broker.feed(FakeMessage(b"a"), FakeMessage(b"stuck"), FakeMessage(b"b"))
    with started(slow_on_stuck, broker, timeout_ms=200, concurrency=concurrency):
        wait_for(lambda: len(broker.sources[0].acked) == 3)
        release.set()  # the late call returns now: its output must go nowhere
        wait_for(lambda: finished == ["stuck"])
        time.sleep(0.1)
    assert sorted(outputs(broker)) == [b"A", b"B"]
    (props,) = letter_props(broker)
    assert props["pulsarfunc.error.type"] == "TimeoutError"
    assert "200 ms" in props["pulsarfunc.error.message"]
    assert [m.payload for m in broker.sources[0].acked].count(b"stuck") == 1  # acked once
    assert broker.sources[0].nacked == []


def test_a_timed_out_message_is_retried_and_succeeds_when_fast_enough() -> None:
    broker = FakeBroker()
    calls: list[int] = []

    def slow_first_time(text: str) -> str:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.5)
        return text + "!"

    broker.feed(FakeMessage(b"x"))
    with started(slow_first_time, broker, timeout_ms=100, max_message_retries=3):
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    assert outputs(broker) == [b"x!"]  # the late first result was discarded, not sent
    assert len(broker.sources[0].nacked) == 1
    assert broker.sent.get(DLQ) is None


def test_a_sync_generator_sends_outputs_only_when_it_finished_in_time() -> None:
    broker = FakeBroker()

    def words(text: str) -> Iterator[str]:
        for word in text.split():
            if word == "slow":
                time.sleep(0.5)
            yield word

    broker.feed(FakeMessage(b"one two"), FakeMessage(b"three slow four"))
    with started(words, broker, timeout_ms=150):
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert outputs(broker) == [b"one", b"two"]
    assert letter_props(broker)[0]["pulsarfunc.error.type"] == "TimeoutError"


def test_the_context_is_there_on_the_handler_thread() -> None:
    broker = FakeBroker()

    def topic_of(text: str) -> str:
        return current_context().message_topic.rsplit("/", 1)[-1] + ":" + text

    broker.feed(FakeMessage(b"x"))
    with started(topic_of, broker, timeout_ms=1000):
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    assert outputs(broker) == [b"in:x"]


def test_a_timeout_error_the_handler_raises_itself_keeps_its_own_message() -> None:
    broker = FakeBroker()

    def raises(text: str) -> str:
        raise TimeoutError("the database did not answer")

    broker.feed(FakeMessage(b"x"))
    with started(raises, broker, timeout_ms=1000):
        wait_for(lambda: len(broker.sent.get(DLQ, [])) == 1)
    (props,) = letter_props(broker)
    assert props["pulsarfunc.error.message"] == "the database did not answer"


def test_an_async_handler_is_cancelled_at_the_deadline() -> None:
    broker = FakeBroker()
    cancelled: list[str] = []

    async def slow(text: str) -> str:
        try:
            if text == "slow":
                await asyncio.sleep(5)
            return text
        except asyncio.CancelledError:
            cancelled.append(text)
            raise

    async def own_timeout(text: str) -> str:
        raise TimeoutError("mine")

    broker.feed(FakeMessage(b"slow"), FakeMessage(b"fast"))
    with started(slow, broker, timeout_ms=100, concurrency=4):
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert outputs(broker) == [b"fast"]
    assert cancelled == ["slow"]
    assert letter_props(broker)[0]["pulsarfunc.error.type"] == "TimeoutError"

    broker = FakeBroker()
    broker.feed(FakeMessage(b"x"))
    with started(own_timeout, broker, timeout_ms=1000):
        wait_for(lambda: len(broker.sent.get(DLQ, [])) == 1)
    assert letter_props(broker)[0]["pulsarfunc.error.message"] == "mine"


def test_an_async_generator_has_one_deadline_for_all_its_outputs() -> None:
    broker = FakeBroker()

    async def ticks(text: str) -> AsyncIterator[str]:
        for i in range(int(text)):
            await asyncio.sleep(0.04)
            yield f"{text}.{i}"

    broker.feed(FakeMessage(b"2"), FakeMessage(b"20"))  # ~0.08 s and ~0.8 s
    with started(ticks, broker, timeout_ms=300, concurrency=2):
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    sent = outputs(broker)
    assert sorted(x for x in sent if x.startswith(b"2.")) == [b"2.0", b"2.1"]
    assert b"20.19" not in sent  # cut off: the rest was never produced
    assert letter_props(broker)[0]["pulsarfunc.error.type"] == "TimeoutError"


def test_late_calls_are_bounded_and_their_threads_come_back() -> None:
    threads = HandlerThreads(0.1, limit=1)
    release = threading.Event()
    with pytest.raises(TimeoutError, match="within 100 ms"):
        threads.run(lambda: release.wait(10))
    with pytest.raises(TimeoutError, match="no handler thread free"):
        threads.run(lambda: "never started")
    release.set()
    assert threads.run(lambda: "ran") == "ran"
