"""Batch handlers on the fake broker: per-item failures, whole-batch failures, delay, ordering.

(Named apart from tests/integration/test_batch_handlers.py: pytest imports test modules by
basename.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fake_broker import FakeBroker, FakeMessage
from test_instance import OUT, make_config, payloads, started
from waiting import wait_for

from pulsarfunc import Batch, BatchItemFailures, Context, current_context
from pulsarfunc.runtime.batching import BatchItemError, BatchResultError
from pulsarfunc.runtime.config import ProcessingGuarantee, SubscriptionType, WindowSettings
from pulsarfunc.runtime.engine_batching import BatchingEngine, batched
from pulsarfunc.runtime.errors import ConfigError, HandlerError
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.resolve import resolve

DLQ = "persistent://public/default/dlq"
DEAD = {"max_message_retries": 0, "dead_letter_topic": DLQ}


def feed(broker: FakeBroker, count: int, key: str = "") -> list[FakeMessage]:
    msgs = [FakeMessage(f"m{i}".encode(), key=key) for i in range(count)]
    broker.feed(*msgs)
    return msgs


def dead(broker: FakeBroker) -> dict[bytes, dict[str, str]]:
    """Dead-lettered payloads, each with its properties."""
    return {m.payload: dict(m.properties or {}) for m in broker.sent[DLQ]}


class Recorder:
    """A batch handler that upper-cases, failing what `fails` says; records each call."""

    def __init__(self, fails: Any = None) -> None:
        self.calls: list[list[str]] = []
        self.fails = fails or (lambda item: False)
        self.lock = threading.Lock()

    def __call__(self, items: Batch[str]) -> list[str | Exception | None]:
        with self.lock:
            self.calls.append(list(items))
        return [ValueError(f"bad {i}") if self.fails(i) else i.upper() for i in items]


# -- the basic contract -------------------------------------------------------------------------
def test_a_batch_handler_gets_lists_and_each_input_gets_its_output() -> None:
    broker = FakeBroker()
    feed(broker, 250)
    handler = Recorder()
    with started(handler, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 250)
    assert payloads(broker) == [f"M{i}".encode() for i in range(250)]  # in input order
    assert max(len(c) for c in handler.calls) == 100  # Batch[T]: at most 100 a call
    assert len(handler.calls) < 250
    assert [i for c in handler.calls for i in c] == [f"m{i}" for i in range(250)]


def test_the_batch_max_size_flag_bounds_a_batch_and_list_t_is_per_item() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(str(i).encode()) for i in range(20)))
    seen: list[list[int]] = []

    def doubled(items: list[int]) -> list[int]:
        seen.append(items)
        return [2 * i for i in items]

    with started(doubled, broker, batch_max_size=7):
        wait_for(lambda: len(broker.sources[0].acked) == 20)
    assert all(len(batch) <= 7 for batch in seen)
    assert [i for batch in seen for i in batch] == list(range(20))  # decoded per item by int
    assert payloads(broker) == [str(2 * i).encode() for i in range(20)]


def test_a_backlog_is_taken_many_batches_a_group_so_sends_stay_few() -> None:
    broker = FakeBroker()
    feed(broker, 1000)
    handler = Recorder()
    with started(handler, broker, batch_max_size=10):
        wait_for(lambda: len(broker.sources[0].acked) == 1000)
    assert max(len(c) for c in handler.calls) == 10
    assert len(handler.calls) >= 100
    assert broker.batches < 20  # one send_batch per group of batches, not one per batch


def test_none_in_an_item_s_place_means_no_output_and_the_item_is_acked() -> None:
    broker = FakeBroker()
    feed(broker, 10)

    def odd_only(items: Batch[str]) -> list[str | None]:
        return [i if int(i[1:]) % 2 else None for i in items]

    with started(odd_only, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 10)
    assert payloads(broker) == [f"m{i}".encode() for i in range(1, 10, 2)]


# -- per-item failures --------------------------------------------------------------------------
def test_an_exception_in_an_item_s_place_dead_letters_exactly_that_item() -> None:
    broker = FakeBroker()
    feed(broker, 30)
    handler = Recorder(fails=lambda item: int(item[1:]) % 7 == 3)
    with started(handler, broker, **DEAD):
        wait_for(lambda: len(broker.sources[0].acked) == 30)
    failed = {b"m3", b"m10", b"m17", b"m24"}
    assert set(dead(broker)) == failed
    assert dead(broker)[b"m10"]["pulsarfunc.error.message"] == "bad m10"
    assert dead(broker)[b"m10"]["pulsarfunc.error.type"] == "ValueError"
    want = [f"M{i}".encode() for i in range(30) if f"m{i}".encode() not in failed]
    assert payloads(broker) == want


def test_batch_item_failures_retries_only_the_named_items() -> None:
    broker = FakeBroker()
    feed(broker, 12)
    tried: set[str] = set()
    calls: list[list[str]] = []

    def first_try_fails_for_odd(items: Batch[str]) -> list[str]:
        calls.append(list(items))
        failed = {n: ValueError(i) for n, i in enumerate(items) if i not in tried and n % 2}
        tried.update(items)
        if failed:
            raise BatchItemFailures(failed, outputs=[i.upper() for i in items])
        return [i.upper() for i in items]

    with started(first_try_fails_for_odd, broker, max_message_retries=3, redelivery_delay_ms=0):
        wait_for(lambda: len(broker.sources[0].acked) == 12)
    nacked = sorted(m.payload for m in broker.sources[0].nacked)
    assert nacked == sorted(f"m{i}".encode() for i in range(1, 12, 2))  # only those items
    assert sorted(payloads(broker)) == sorted(f"M{i}".encode() for i in range(12))  # each once
    retried = [i for c in calls[1:] for i in c]
    assert sorted(retried) == sorted(f"m{i}" for i in range(1, 12, 2))


def test_batch_item_failures_by_index_alone_gives_a_generic_reason() -> None:
    broker = FakeBroker()
    feed(broker, 5)

    def two_fail(items: Batch[str]) -> list[str]:
        raise BatchItemFailures([1, 3])

    with started(two_fail, broker, **DEAD):
        wait_for(lambda: len(broker.sources[0].acked) == 5)
    assert set(dead(broker)) == {b"m1", b"m3"}
    assert dead(broker)[b"m3"]["pulsarfunc.error.type"] == BatchItemError.__name__
    assert payloads(broker) == []  # the rest succeeded, without outputs


def test_an_item_that_cannot_be_decoded_fails_alone() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"1"), FakeMessage(b"x"), FakeMessage(b"3"))

    def plus_one(items: Batch[int]) -> list[int]:
        return [i + 1 for i in items]

    with started(plus_one, broker, **DEAD):
        wait_for(lambda: len(broker.sources[0].acked) == 3)
    assert set(dead(broker)) == {b"x"}
    assert payloads(broker) == [b"2", b"4"]


# -- whole-batch failures -----------------------------------------------------------------------
def test_an_exception_that_is_not_per_item_fails_the_whole_batch() -> None:
    broker = FakeBroker()
    feed(broker, 6)  # fed before the start: batches [m0..m2], [m3..m5]

    def boom(items: Batch[str]) -> list[str]:
        if "m4" in items:
            raise RuntimeError("database down")
        return items

    with started(boom, broker, batch_max_size=3, **DEAD):
        wait_for(lambda: len(broker.sources[0].acked) == 6)
    assert set(dead(broker)) == {b"m3", b"m4", b"m5"}
    assert {p["pulsarfunc.error.message"] for p in dead(broker).values()} == {"database down"}
    assert payloads(broker) == [b"m0", b"m1", b"m2"]


@pytest.mark.parametrize(
    ("result", "fragment"),
    [
        (lambda items: items[:-1], "returned 2 outputs for a batch of 3 inputs"),
        (lambda items: None, "returned NoneType None for a batch of 3 inputs, not a list"),
        (lambda items: "abc", "not a list"),
        (lambda items: (_ for _ in ()).throw(BatchItemFailures([3])), "names items [3]"),
    ],
)
def test_a_wrong_result_fails_the_whole_batch_with_a_clear_error(
    result: Any, fragment: str
) -> None:
    broker = FakeBroker()
    feed(broker, 3)

    def wrong(items: Batch[str]) -> Any:
        return result(items)

    with started(wrong, broker, **DEAD):
        wait_for(lambda: len(broker.sources[0].acked) == 3)
    assert set(dead(broker)) == {b"m0", b"m1", b"m2"}
    reasons = {p["pulsarfunc.error.message"] for p in dead(broker).values()}
    assert len(reasons) == 1
    assert fragment in reasons.pop()
    assert {p["pulsarfunc.error.type"] for p in dead(broker).values()} == {
        BatchResultError.__name__
    }


# -- gathering ------------------------------------------------------------------------------------
def test_the_max_delay_calls_with_a_partial_batch() -> None:
    broker = FakeBroker()
    handler = Recorder()
    with started(handler, broker, batch_max_delay_ms=300):
        broker.feed(FakeMessage(b"a"))
        time.sleep(0.05)
        broker.feed(FakeMessage(b"b"), FakeMessage(b"c"))  # within the delay: same batch
        began = time.monotonic()
        wait_for(lambda: len(broker.sources[0].acked) == 3)
        assert time.monotonic() - began < 2.0  # not held for a batch of 100
        time.sleep(0.4)  # past the delay: a batch of its own
        broker.feed(FakeMessage(b"d"))
        wait_for(lambda: len(broker.sources[0].acked) == 4)
    assert handler.calls == [["a", "b", "c"], ["d"]]


def test_a_zero_delay_calls_with_what_the_consumer_holds() -> None:
    broker = FakeBroker()
    broker.receive_limit = 2
    feed(broker, 5)
    handler = Recorder()
    with started(handler, broker, batch_max_delay_ms=0):
        wait_for(lambda: len(broker.sources[0].acked) == 5)
    assert [len(c) for c in handler.calls] == [2, 2, 1]


def test_a_copy_gathered_with_its_original_is_processed_once() -> None:
    broker = FakeBroker()
    calls: list[str] = []

    def strict(items: Batch[str]) -> list[str | Exception]:
        calls.extend(items)
        return [ValueError(i) if i.startswith("bad") else i for i in items]

    with started(strict, broker, batch_max_delay_ms=300, **DEAD):
        broker.feed(FakeMessage(b"bad-first"))  # a failure: copies may come from now on
        wait_for(lambda: len(broker.sent[DLQ]) == 1)
        twice = FakeMessage(b"bad-twice")
        broker.feed(twice, FakeMessage(b"ok"))
        time.sleep(0.05)
        broker.feed(FakeMessage(b"bad-twice", mid=twice.mid))  # the broker's second copy
        wait_for(lambda: len(broker.sent[DLQ]) == 2)
        wait_for(lambda: b"ok" in payloads(broker))
        time.sleep(0.3)
    assert sorted(dead(broker)) == [b"bad-first", b"bad-twice"]
    assert len(broker.sent[DLQ]) == 2  # once each
    assert calls.count("bad-twice") == 1


def test_a_copy_taken_while_its_original_waits_for_its_sends_is_not_processed_again() -> None:
    broker = FakeBroker()
    calls: list[str] = []

    def strict(items: Batch[str]) -> list[str | Exception]:
        calls.extend(items)
        return [ValueError(i) if i.startswith("bad") else i for i in items]

    with started(strict, broker, batch_max_delay_ms=0, **DEAD):
        broker.feed(FakeMessage(b"bad-first"))  # a failure: copies may come from now on
        wait_for(lambda: len(broker.sent[DLQ]) == 1)
        held = broker.held[OUT] = threading.Event()  # outputs wait: their group stays pending
        broker.receive_limit = 1  # one message a take: the copy comes in the next group
        slow = FakeMessage(b"slow")
        broker.feed(slow, FakeMessage(b"slow", mid=slow.mid), FakeMessage(b"next"))
        wait_for(lambda: len(broker.sources[0].queue) <= 1)  # the copy was taken
        time.sleep(0.05)
        held.set()
        wait_for(lambda: len(payloads(broker)) == 2)
        time.sleep(0.2)
    assert calls.count("slow") == 1
    assert sorted(payloads(broker)) == [b"next", b"slow"]


# -- ordering -------------------------------------------------------------------------------------
def test_key_shared_runs_one_batch_at_a_time_keys_in_order() -> None:
    broker = FakeBroker()
    broker.receive_limit = 3
    msgs = [FakeMessage(f"{k}{i}".encode(), key=k) for i in range(20) for k in "abc"]
    broker.feed(*msgs)
    active, most = [0], [0]
    lock = threading.Lock()

    def slow(items: Batch[str]) -> list[str]:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.002)
        with lock:
            active[0] -= 1
        return items

    with started(
        slow, broker, subscription_type=SubscriptionType.KEY_SHARED, concurrency=4
    ) as instance:
        assert instance.concurrency == 1  # lowered: no two batches of a key at once
        wait_for(lambda: len(broker.sources[0].acked) == 60)
    assert most[0] == 1
    out = [p.decode() for p in payloads(broker)]
    for k in "abc":
        assert [o for o in out if o[0] == k] == [f"{k}{i}" for i in range(20)]


def test_retain_ordering_keeps_output_order_across_an_item_s_retry() -> None:
    broker = FakeBroker()
    feed(broker, 10)
    failed_once: set[str] = set()

    def m4_fails_once(items: Batch[str]) -> list[str | Exception]:
        out: list[str | Exception] = []
        for i in items:
            if i == "m4" and i not in failed_once:
                failed_once.add(i)
                out.append(ValueError("once"))
            else:
                out.append(i)
        return out

    with started(
        m4_fails_once, broker, retain_ordering=True, max_message_retries=2, redelivery_delay_ms=0
    ):
        wait_for(lambda: len(broker.sources[0].acked) == 10)
    assert payloads(broker) == [f"m{i}".encode() for i in range(10)]  # in order, each once


def test_effectively_once_batches_number_outputs_by_input() -> None:
    broker = FakeBroker()
    broker.dedup = True
    feed(broker, 8)
    handler = Recorder(fails=lambda item: item == "m5")
    with started(
        handler,
        broker,
        processing_guarantee=ProcessingGuarantee.EFFECTIVELY_ONCE,
        **DEAD,
    ):
        wait_for(lambda: len(broker.sources[0].acked) == 8)
    assert set(dead(broker)) == {b"m5"}
    assert payloads(broker) == [f"M{i}".encode() for i in range(8) if i != 5]
    assert all(m.sequence_id is not None for m in broker.sent[OUT])


# -- forms: async, Context ------------------------------------------------------------------------
def test_an_async_batch_handler_with_the_context_first() -> None:
    broker = FakeBroker()
    msgs = feed(broker, 4)

    async def tagged(ctx: Context, items: Batch[str]) -> list[str]:
        assert current_context() is ctx
        first = ctx.get_message_id().entry_id()
        return [f"{i}@{first}" for i in items]

    with started(tagged, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 4)
    first = msgs[0].mid.entry  # the Context is the batch's first message's
    assert payloads(broker) == [f"m{i}@{first}".encode() for i in range(4)]


def test_current_context_in_a_batch_handler_without_a_context_parameter() -> None:
    broker = FakeBroker()
    msgs = feed(broker, 5)

    def tagged(items: Batch[str]) -> list[str]:
        ctx = current_context()
        assert ctx is current_context()  # one Context for the whole call
        return [f"{i}@{ctx.get_message_id().entry_id()}" for i in items]

    with started(tagged, broker, batch_max_size=5):
        wait_for(lambda: len(broker.sources[0].acked) == 5)
    first = msgs[0].mid.entry
    assert payloads(broker) == [f"m{i}@{first}".encode() for i in range(5)]


def test_a_batch_handler_s_publish_holds_the_first_item_until_persisted() -> None:
    broker = FakeBroker()
    feed(broker, 3)
    side = "persistent://public/default/side"

    def audit(ctx: Context, items: Batch[str]) -> list[None]:
        ctx.publish(side, ",".join(items))
        return [None] * len(items)

    with started(audit, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 3)
    assert payloads(broker, side) == [b"m0,m1,m2"]


# -- what is accepted, what is refused -----------------------------------------------------------
def test_a_plain_list_annotation_still_means_one_json_array() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"[1, 2, 3]"))

    def total(numbers: list[int]) -> int:
        return sum(numbers)

    with started(total, broker):
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    assert payloads(broker) == [b"6"]


def test_describe_names_the_batch_form() -> None:
    def upper(items: Batch[str]) -> list[str]:
        return items

    text = inspect_handler(upper).describe()
    assert "batch handler" in text
    assert "up to 100 inputs" in text
    assert "each input str" in text
    config = make_config(batch_max_size=5)
    assert "up to 5 inputs" in batched(inspect_handler(upper), config).describe()


@pytest.mark.parametrize(
    ("handler_text", "fragment"),
    [
        ("def h(items: str) -> list[str]: ...", "takes str, not a list"),
        ("def h(items: list[str]) -> str: ...", "return annotation str is not a list"),
        ("def h(ctx: Context) -> list[str]: ...", "takes no input"),
        ("def h(items: list[str]):\n    yield items", "is a generator"),
    ],
)
def test_batch_max_size_refuses_a_handler_that_cannot_batch(
    handler_text: str, fragment: str
) -> None:
    namespace: dict[str, Any] = {"Context": Context}
    exec(handler_text, namespace)
    with pytest.raises(HandlerError) as caught:
        batched(inspect_handler(namespace["h"]), make_config(batch_max_size=10))
    assert fragment in str(caught.value)
    assert "--batch-max-size 10" in str(caught.value)


def test_a_batch_generator_is_refused_at_inspection() -> None:
    def gen(items: Batch[str]) -> Any:
        yield from items

    with pytest.raises(HandlerError, match="a generator cannot"):
        inspect_handler(gen)


def test_manual_acknowledgement_with_a_batch_is_refused() -> None:
    def upper(items: Batch[str]) -> list[str]:
        return items

    config = make_config(processing_guarantee=ProcessingGuarantee.MANUAL)
    with pytest.raises(ConfigError, match="MANUAL") as caught:
        batched(inspect_handler(upper), config)
    assert caught.value.exit_code == 2


def test_a_batch_with_a_window_is_refused() -> None:
    def upper(items: list[str]) -> list[str]:
        return items

    config = make_config(batch_max_size=10, window=WindowSettings(window_length_count=5))
    with pytest.raises(ConfigError, match="with a window") as caught:
        batched(inspect_handler(upper, window=True), config)
    assert caught.value.exit_code == 2


def test_batch_settings_from_flags_variables_and_the_function_config(tmp_path: Path) -> None:
    base = ["--inputs", "in"]
    assert resolve(base, {}).batch_max_size == 0
    assert resolve(base, {}).batch_max_delay_ms == 10
    assert resolve([*base, "--batch-max-size", "50"], {}).batch_max_size == 50
    env = {"PULSARFUNC_BATCH_MAX_SIZE": "20", "PULSARFUNC_BATCH_MAX_DELAY_MS": "5"}
    config = resolve(base, env)
    assert (config.batch_max_size, config.batch_max_delay_ms) == (20, 5)
    path = tmp_path / "function.yaml"
    path.write_text("inputs: [in]\nbatchMaxSize: 30\nbatchMaxDelayMs: 25\n")
    config = resolve(["--function-config", str(path)], {})
    assert (config.batch_max_size, config.batch_max_delay_ms) == (30, 25)
    path.write_text("inputs: [in]\nbatchMaxSize: -1\n")
    with pytest.raises(ConfigError, match="batchMaxSize"):
        resolve(["--function-config", str(path)], {})
    with pytest.raises(ConfigError, match="--batch-max-delay-ms"):
        resolve([*base, "--batch-max-delay-ms", "-1"], {})


def test_a_pulsar_function_class_with_the_batch_flag_gets_a_list() -> None:
    broker = FakeBroker()
    feed(broker, 4)

    class Upper:
        def process(self, items: Any, context: Any) -> list[str]:
            return [i.upper() for i in items]

    handler: Any = Upper()  # Pulsar's form: an object with process(input, context)
    with started(handler, broker, batch_max_size=4):
        wait_for(lambda: len(broker.sources[0].acked) == 4)
    assert payloads(broker) == [b"M0", b"M1", b"M2", b"M3"]  # Pulsar's serde, per item


def test_a_reload_swaps_between_a_single_message_and_a_batch_handler() -> None:
    broker = FakeBroker()
    feed(broker, 10)

    def single(text: str) -> str:
        return f"one:{text}"

    sizes: list[int] = []

    def batch(items: Batch[str]) -> list[str]:
        sizes.append(len(items))
        return [f"many:{i}" for i in items]

    with started(single, broker) as instance:
        wait_for(lambda: len(broker.sources[0].acked) == 10)
        assert instance.swap(inspect_handler(batch))
        assert type(instance.engine) is BatchingEngine
        broker.feed(*(FakeMessage(f"n{i}".encode()) for i in range(10)))
        wait_for(lambda: len(broker.sources[0].acked) == 20)
        assert instance.swap(inspect_handler(single))
        assert type(instance.engine) is not BatchingEngine
        broker.feed(FakeMessage(b"last"))
        wait_for(lambda: len(broker.sources[0].acked) == 21)
    out = [p.decode() for p in payloads(broker)]
    assert out == [f"one:m{i}" for i in range(10)] + [f"many:n{i}" for i in range(10)] + [
        "one:last"
    ]
    assert sum(sizes) == 10
    assert max(sizes) > 1


def test_a_reload_under_the_batch_flag_makes_the_new_handler_a_batch_handler_too() -> None:
    broker = FakeBroker()

    def first(items: list[str]) -> list[str]:
        return [f"a:{i}" for i in items]

    def second(items: list[int]) -> list[int]:
        return [i * 10 for i in items]

    with started(first, broker, batch_max_size=5) as instance:
        broker.feed(FakeMessage(b"x"))
        wait_for(lambda: len(broker.sources[0].acked) == 1)
        assert instance.swap(inspect_handler(second))
        broker.feed(FakeMessage(b"1"), FakeMessage(b"2"))
        wait_for(lambda: len(broker.sources[0].acked) == 3)
    assert payloads(broker) == [b"a:x", b"10", b"20"]  # items decoded as int, per item
