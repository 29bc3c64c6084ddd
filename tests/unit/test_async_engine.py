"""The async engine's fast path: handlers that complete without waiting share a task per batch;
one that waits keeps a task of its own from its first line to its last."""

from __future__ import annotations

import asyncio
import time

from fake_broker import FakeBroker, FakeMessage
from test_instance import overlap_probe, payloads, started
from waiting import wait_for


def feed(broker: FakeBroker, count: int) -> list[bytes]:
    data = [f"m{i}".encode() for i in range(count)]
    broker.feed(*(FakeMessage(d) for d in data))
    return data


def test_handlers_that_never_wait_get_no_task_each() -> None:
    broker = FakeBroker()
    sent = feed(broker, 300)
    tasks: list[asyncio.Task[object] | None] = []

    async def echo(text: str) -> str:
        tasks.append(asyncio.current_task())
        return text

    with started(echo, broker, concurrency=16):
        wait_for(lambda: len(broker.sources[0].acked) == 300)
    assert sorted(payloads(broker)) == sorted(sent)
    assert None not in tasks  # each ran inside a task: current_task() works
    assert len({id(task) for task in tasks}) <= 30  # a task per batch, not per message


def test_a_handler_that_waits_keeps_its_task_and_the_limit_holds() -> None:
    """16 handlers wait for each other (possible only when they run at once, as before), each
    under `asyncio.timeout`, which needs the task it started in to be the one it waits in."""
    broker = FakeBroker()
    sent = feed(broker, 48)
    running, peak, moved = 0, 0, []

    async def gathered(text: str) -> str:
        nonlocal running, peak
        mine = asyncio.current_task()
        running += 1
        peak = max(peak, running)
        try:
            async with asyncio.timeout(5):
                while peak < 16:
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.001)
        finally:
            running -= 1
        if asyncio.current_task() is not mine:
            moved.append(text)
        return text

    with started(gathered, broker, concurrency=16):
        wait_for(lambda: len(broker.sources[0].acked) == 48)
    assert sorted(payloads(broker)) == sorted(sent)
    assert peak == 16  # as many at once as allowed, and no more
    assert moved == []


def test_waiting_and_not_waiting_messages_mix_in_one_batch() -> None:
    broker = FakeBroker()
    sent = feed(broker, 200)
    outcome: dict[str, bool] = {}

    async def every_third_waits(text: str) -> str:
        mine = asyncio.current_task()
        if int(text[1:]) % 3 == 0:
            await asyncio.sleep(0.001)
        outcome[text] = asyncio.current_task() is mine
        return text.upper()

    with started(every_third_waits, broker, concurrency=16):
        wait_for(lambda: len(broker.sources[0].acked) == 200)
    assert sorted(payloads(broker)) == sorted(d.upper() for d in sent)
    assert outcome == {d.decode(): True for d in sent}


def test_a_failure_after_a_wait_fails_that_message_only() -> None:
    broker = FakeBroker()
    feed(broker, 30)

    async def picky(text: str) -> str:
        if text == "m7":
            await asyncio.sleep(0.001)
            raise ValueError("no sevens")
        return text

    with started(picky, broker, concurrency=4, max_message_retries=0, dead_letter_topic="dlq"):
        wait_for(lambda: len(broker.sources[0].acked) == 30)
    assert sorted(payloads(broker)) == sorted(f"m{i}".encode() for i in range(30) if i != 7)
    assert [m.payload for m in broker.sent["dlq"]] == [b"m7"]


def test_messages_after_a_lull_are_taken_by_the_receiver_again() -> None:
    """The loop takes batches itself while messages keep coming; after a lull the receiver
    thread waits for the next ones and hands them over."""
    broker = FakeBroker()
    first = feed(broker, 20)

    async def echo(text: str) -> str:
        return text

    with started(echo, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 20)
        time.sleep(0.3)  # a lull: the receiver thread waits for the next message
        second = [f"n{i}".encode() for i in range(20)]
        broker.feed(*(FakeMessage(d) for d in second))
        wait_for(lambda: len(broker.sources[0].acked) == 40)
    assert sorted(payloads(broker)) == sorted(first + second)


def test_a_loop_short_of_room_goes_on_once_room_frees() -> None:
    """With room for 4 messages in flight, the loop keeps running short of room and the
    receiver thread hands back as room frees: every message is still processed, and no more
    than the limit are ever in flight."""
    broker = FakeBroker()
    sent = feed(broker, 120)
    slow, seen = overlap_probe(0.001)
    with started(slow, broker, receiver_queue_size=2, concurrency=2):
        wait_for(lambda: len(broker.sources[0].acked) == 120)
    assert sorted(payloads(broker)) == sorted(sent)
    assert seen["peak"] == 2
