"""`Instance.swap` (a reload under `--watch`) on the in-memory broker: the consumer and the
messages in flight are kept, nothing is lost or processed twice, the engine follows the form."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fake_broker import FakeBroker, FakeId, FakeMessage
from pulsar.schema import Record, String
from test_instance import make_config, started
from waiting import wait_for

from pulsarfunc.runtime.config import InputSpec, WindowSettings
from pulsarfunc.runtime.engine_async import AsyncEngine
from pulsarfunc.runtime.engine_batch import BatchEngine
from pulsarfunc.runtime.engine_ordered import OrderedEngine
from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance

IN = "persistent://public/default/in"
OUT = "persistent://public/default/out"


@contextmanager
def running(handler: Callable[..., Any], broker: FakeBroker, **fields: Any) -> Iterator[Instance]:
    """The instance on its own thread, started (see test_instance.in_thread)."""
    with started(handler, broker, **fields) as instance:
        wait_for(lambda: instance.started)
        yield instance


def numbered(start: int, stop: int, **fields: Any) -> list[FakeMessage]:
    return [FakeMessage(str(i).encode(), **fields) for i in range(start, stop)]


def outputs(broker: FakeBroker) -> list[str]:
    return [m.payload.decode() for m in broker.sent[OUT]]


def acked(broker: FakeBroker) -> list[bytes]:
    return [m.payload for m in broker.sources[0].acked]


def tagged(tag: str) -> Callable[[str], str]:
    def handler(text: str) -> str:
        return f"{tag}:{text}"

    return handler


def async_tagged(tag: str) -> Callable[[str], Any]:
    async def handler(text: str) -> str:
        return f"{tag}:{text}"

    return handler


def test_swap_goes_on_with_the_new_handler_on_the_same_consumer() -> None:
    broker = FakeBroker()
    broker.feed(*numbered(0, 20))
    with running(tagged("old"), broker) as instance:
        wait_for(lambda: len(acked(broker)) == 20)
        source = broker.sources[0]
        assert instance.swap(inspect_handler(tagged("new")))
        assert broker.sources[0] is source  # the same subscription, never closed
        broker.feed(*numbered(20, 40))
        wait_for(lambda: len(acked(broker)) == 40)
    assert outputs(broker) == [f"old:{i}" for i in range(20)] + [f"new:{i}" for i in range(20, 40)]
    assert broker.sources[0].nacked == []
    assert not broker.closed  # the instance never closes the client (start.run does)


def test_messages_in_flight_finish_with_the_old_handler_before_the_swap() -> None:
    broker = FakeBroker()
    entered, release = threading.Event(), threading.Event()

    def old(text: str) -> str:
        if text == "0":
            entered.set()
            release.wait(5)
        return f"old:{text}"

    broker.feed(*numbered(0, 1))
    with running(old, broker) as instance:
        assert entered.wait(5)
        swapped: list[bool] = []
        swapping = threading.Thread(
            target=lambda: swapped.append(instance.swap(inspect_handler(tagged("new"))))
        )
        swapping.start()
        wait_for(lambda: instance.core.handover.is_set())
        broker.feed(*numbered(1, 5))
        time.sleep(0.2)
        assert swapping.is_alive()  # waits for the message in flight
        assert not instance.ready  # between two engines: not consuming...
        assert instance.alive  # ...but alive
        assert len(broker.sources[0].queue) == 4  # the old engine took nothing more
        release.set()
        swapping.join(5)
        assert swapped == [True]
        wait_for(lambda: len(acked(broker)) == 5)
        wait_for(lambda: instance.ready)
    assert outputs(broker) == ["old:0", "new:1", "new:2", "new:3", "new:4"]


def test_the_engine_follows_the_form_sync_to_async_and_back() -> None:
    broker = FakeBroker()
    with running(tagged("a"), broker) as instance:
        assert isinstance(instance.engine, BatchEngine)
        broker.feed(*numbered(0, 10))
        wait_for(lambda: len(acked(broker)) == 10)
        assert instance.swap(inspect_handler(async_tagged("b")))
        assert isinstance(instance.engine, AsyncEngine)
        assert instance.concurrency == 16  # auto for async on a shared subscription
        broker.feed(*numbered(10, 20))
        wait_for(lambda: len(acked(broker)) == 20)
        assert instance.swap(inspect_handler(tagged("c")))
        assert isinstance(instance.engine, BatchEngine)
        assert instance.concurrency == 1
        broker.feed(*numbered(20, 30))
        wait_for(lambda: len(acked(broker)) == 30)
    got = sorted(outputs(broker), key=lambda out: int(out.partition(":")[2]))
    assert got == [f"{'abc'[i // 10]}:{i}" for i in range(30)]


def test_an_ordered_engine_is_rebuilt_as_ordered() -> None:
    broker = FakeBroker()
    with running(tagged("a"), broker, retain_ordering=True) as instance:
        assert instance.swap(inspect_handler(async_tagged("b")))
        assert isinstance(instance.engine, OrderedEngine)  # order holds whatever the form
        broker.feed(*numbered(0, 10))
        wait_for(lambda: len(acked(broker)) == 10)
    assert outputs(broker) == [f"b:{i}" for i in range(10)]


def test_no_message_is_lost_or_processed_twice_across_swaps_under_load() -> None:
    broker = FakeBroker()
    broker.receive_limit = 7
    total = 3000
    handlers = [tagged("g0"), async_tagged("g1"), tagged("g2"), async_tagged("g3")]
    with running(handlers[0], broker) as instance:

        def feed() -> None:
            for start in range(0, total, 50):
                broker.feed(*numbered(start, start + 50))
                time.sleep(0.002)

        feeder = threading.Thread(target=feed)
        feeder.start()
        for handler in handlers[1:]:
            wait_for(lambda: len(acked(broker)) > 0)
            assert instance.swap(inspect_handler(handler))
        feeder.join()
        wait_for(lambda: len(acked(broker)) == total, timeout_s=30)
    generation = {}
    for out in outputs(broker):
        tag, _, number = out.partition(":")
        assert int(number) not in generation, f"{number} processed twice"
        generation[int(number)] = int(tag[1:])
    assert sorted(generation) == list(range(total))  # each input exactly one output
    # the consumer's order is kept across swaps: an input taken later never ran on an older
    # handler than one taken before it
    ordered = [generation[i] for i in range(total)]
    assert ordered == sorted(ordered)
    assert sorted(acked(broker)) == sorted(str(i).encode() for i in range(total))
    assert broker.sources[0].nacked == []


def test_a_producer_batch_begun_is_not_finished_by_the_old_handler_on_a_swap() -> None:
    """A stop finishes the producer batch it began (the consumer closes next); a swap keeps the
    consumer, so the rest of that batch waits in its queue for the new handler."""
    broker = FakeBroker()
    broker.receive_limit = 5
    entered, release = threading.Event(), threading.Event()

    def old(text: str) -> str:
        if text == "2":
            entered.set()
            release.wait(5)
        return f"old:{text}"

    broker.feed(*(FakeMessage(str(i).encode(), mid=FakeId(9, 1, i)) for i in range(20)))
    with running(old, broker) as instance:
        assert entered.wait(5)
        swapping = threading.Thread(target=instance.swap, args=(inspect_handler(tagged("new")),))
        swapping.start()
        wait_for(lambda: instance.core.handover.is_set())
        taken = len(broker.sources[0].delivered)  # the old engine's last group is one of them
        release.set()
        swapping.join(5)
        wait_for(lambda: len(acked(broker)) == 20)
    assert 2 < taken <= 10  # one or two groups of at most 5: the batch was begun, not finished
    old_part = [f"old:{i}" for i in range(taken)]
    assert outputs(broker) == old_part + [f"new:{i}" for i in range(taken, 20)]


def test_a_parked_retry_is_kept_and_retried_by_the_new_handler() -> None:
    """A failed message of a non-persistent topic waits here for its retry (the broker would
    drop it): a swap hands it to the new handler instead of giving it up."""
    topic = "non-persistent://public/default/in"
    for new in (tagged("new"), async_tagged("new")):
        broker = FakeBroker()

        def old(text: str) -> str:
            raise ValueError("the old handler fails")

        broker.feed(FakeMessage(b"x", topic=topic))
        fields = {"inputs": (InputSpec(topic),), "redelivery_delay_ms": 300}
        with running(old, broker, **fields) as instance:
            wait_for(lambda: instance.core.tracker.parked() == 1)
            assert instance.swap(inspect_handler(new))
            wait_for(lambda: len(acked(broker)) == 1)  # noqa: B023
            assert instance.core.tracker.lost == 0
        assert outputs(broker) == ["new:x"]
        assert broker.sources[0].nacked == []


def test_a_stop_during_a_swap_cancels_it_and_drains_as_usual() -> None:
    broker = FakeBroker()
    entered, release = threading.Event(), threading.Event()

    def old(text: str) -> str:
        entered.set()
        release.wait(5)
        return f"old:{text}"

    broker.feed(*numbered(0, 1))
    instance = Instance(make_config(), inspect_handler(old), broker)
    drained: list[bool] = []
    runner = threading.Thread(target=lambda: drained.append(instance.run()), daemon=True)
    runner.start()
    assert entered.wait(5)
    wait_for(lambda: instance.started)  # the handler may run before `run` says it started
    swapped: list[bool] = []
    swapping = threading.Thread(
        target=lambda: swapped.append(instance.swap(inspect_handler(tagged("new"))))
    )
    swapping.start()
    wait_for(lambda: instance.core.handover.is_set())
    instance.stop()
    swapping.join(5)
    assert swapped == [False]  # nothing changed: the stop drains the old engine
    release.set()
    runner.join(10)
    assert drained == [True]
    assert outputs(broker) == ["old:0"]
    assert not instance.swap(inspect_handler(tagged("late")))  # after the stop: refused


def test_a_swap_before_the_start_is_refused() -> None:
    instance = Instance(make_config(), inspect_handler(tagged("a")), FakeBroker())
    assert not instance.swap(inspect_handler(tagged("b")))
    assert instance.handler.target.__name__ == "handler"


class Reading(Record):  # type: ignore[misc]  # pulsar-client ships no type hints
    name = String()


def reading_name(reading: Reading) -> str:
    return str(reading.name)


def make_same_reading() -> Any:
    """An equal record class, as a reload of the user's module makes it: a new class object."""

    class Reading(Record):  # type: ignore[misc]
        name = String()

    return Reading


SameReading = make_same_reading()


def reading_again(reading: SameReading) -> str:  # type: ignore[valid-type]
    return "new:" + str(reading.name)  # type: ignore[attr-defined]


def test_a_handler_whose_schema_changed_is_refused_before_anything_stops() -> None:
    broker = FakeBroker()
    with running(tagged("old"), broker) as instance:
        engine = instance.engine
        with pytest.raises(HandlerError, match="schema changed") as refused:
            instance.swap(inspect_handler(reading_name))  # JSON schema inferred: not as started
        assert "restart `pulsarfunc run`" in str(refused.value)
        assert instance.engine is engine
        assert instance.ready
        broker.feed(*numbered(0, 3))
        wait_for(lambda: len(acked(broker)) == 3)
    assert outputs(broker) == ["old:0", "old:1", "old:2"]


def test_an_equal_schema_from_a_reloaded_record_class_is_swapped() -> None:
    assert SameReading is not Reading
    broker = FakeBroker()
    with running(reading_name, broker) as instance:
        assert instance.swap(inspect_handler(reading_again))
        broker.feed(FakeMessage(b'{"name": "x"}'))
        wait_for(lambda: len(acked(broker)) == 1)
    assert outputs(broker) == ["new:x"]


def test_a_window_function_is_not_swapped() -> None:
    def total(window: list[int]) -> int:
        return sum(window)

    config = make_config(window=WindowSettings(window_length_count=2))
    instance = Instance(config, inspect_handler(total, window=True), FakeBroker())
    with pytest.raises(HandlerError, match="window function is not reloaded"):
        instance.swap(inspect_handler(total, window=True))
