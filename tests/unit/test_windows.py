"""Window functions: the pure window manager (a fake clock), configuration, and the window
engine on the fake broker (acknowledgement only after every window holding a message fired and
its output was persisted)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fake_broker import FakeBroker, FakeMessage
from test_instance import OUT, in_thread, make_config
from waiting import wait_for

from pulsarfunc.runtime.config import ProcessingGuarantee, WindowSettings
from pulsarfunc.runtime.engine_window import COUNT, END, START
from pulsarfunc.runtime.errors import ConfigError, HandlerError
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance
from pulsarfunc.runtime.resolve import resolve
from pulsarfunc.runtime.windows import Progress, Spec, WindowRecord, Windows, spec_of

IN = ["--inputs", "in"]


def _spec(**fields: Any) -> Spec:
    return spec_of(WindowSettings(**fields), 1000)


def _fired(progress: Progress[int]) -> list[list[int]]:
    return [list(f.items) for f in progress.fired]


# --- the manager, processing time -------------------------------------------------------------


def test_a_tumbling_count_window_fires_every_n_and_evicts_all() -> None:
    windows: Windows[int] = Windows(_spec(window_length_count=3), 0)
    got = [windows.add(i, ts=i) for i in range(7)]
    assert [_fired(p) for p in got] == [[], [], [[0, 1, 2]], [], [], [[3, 4, 5]], []]
    assert [p.evicted for p in got if p.evicted] == [[0, 1, 2], [3, 4, 5]]
    assert list(windows.items()) == [6]  # its window is still open


def test_a_sliding_count_window_holds_a_message_in_several_windows() -> None:
    windows: Windows[int] = Windows(_spec(window_length_count=4, sliding_interval_count=2), 0)
    fired, evicted = [], []
    for i in range(8):
        step = windows.add(i, ts=i)
        fired += _fired(step)
        evicted += step.evicted
    assert fired == [[0, 1], [0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    # each leaves once the last window holding it fired: 6 and 7 are in the next one too
    assert evicted == [0, 1, 2, 3, 4, 5]


def test_a_tumbling_time_window_fires_on_the_clock() -> None:
    windows: Windows[str] = Windows(_spec(window_length_duration_ms=100), 1000)
    for ts, item in ((1010, "a"), (1050, "b"), (1120, "c")):
        windows.add(item, ts=ts)
        windows.tick(ts)
    assert windows.next_due() == 1200
    first = windows.tick(1100)  # nothing: already fired at 1100 on c's tick
    assert first.fired == []
    step = windows.tick(1200)
    assert [(list(f.items), f.start, f.end) for f in step.fired] == [(["c"], 1100, 1200)]


def test_the_first_time_window_fires_with_its_bounds_and_evicts_what_it_covered() -> None:
    windows: Windows[str] = Windows(_spec(window_length_duration_ms=100), 1000)
    windows.add("a", ts=1010)
    windows.add("b", ts=1090)
    step = windows.tick(1100)
    assert [(list(f.items), f.start, f.end) for f in step.fired] == [(["a", "b"], 1000, 1100)]
    assert step.evicted == ["a", "b"]  # tumbling: in no later window, so they leave now
    assert windows.tick(1200).fired == []  # an empty window does not fire


def test_a_sliding_time_window() -> None:
    spec = _spec(window_length_duration_ms=300, sliding_interval_duration_ms=100)
    windows: Windows[int] = Windows(spec, 0)
    fired: list[list[int]] = []
    evicted: list[int] = []
    for t in range(0, 700, 50):  # one item every 50 ms, the clock ticking with them
        step = windows.add(t, ts=t)
        fired += _fired(step)
        evicted += step.evicted
        step = windows.tick(t + 1)
        fired += _fired(step)
        evicted += step.evicted
    # fired at 100, 200, 300, 400 (ms), each holding (end - 300, end]
    assert fired[:4] == [[0, 50, 100], [0, 50, 100, 150, 200], [50, 100, 150, 200, 250, 300],
                         [150, 200, 250, 300, 350, 400]]  # fmt: skip
    assert evicted[:3] == [0, 50, 100]  # each right after the last window holding it


# --- the manager, event time --------------------------------------------------------------------


def test_event_time_windows_fire_when_the_watermark_passes_and_late_data_is_told() -> None:
    spec = _spec(
        window_length_duration_ms=100, use_event_time=True, max_lag_ms=10,
        watermark_emit_interval_ms=50,
    )  # fmt: skip
    windows: Windows[int] = Windows(spec, 0)
    for ts in (5, 40, 99, 120):  # out of order is fine before the watermark
        windows.add(ts, ts=ts, topic="t")
    windows.add(30, ts=30, topic="t")
    assert windows.tick(49).fired == []  # not yet the watermark's time
    step = windows.tick(50)  # watermark 120 - 10 = 110: the window (0, 100] is done
    assert [(list(f.items), f.start, f.end) for f in step.fired] == [([5, 30, 40, 99], 0, 100)]
    assert sorted(step.evicted) == [5, 30, 40, 99]
    assert windows.watermark == 110
    assert windows.is_late(105)
    assert not windows.is_late(110)


def test_event_time_skips_empty_windows_to_the_next_data() -> None:
    spec = _spec(window_length_duration_ms=10, use_event_time=True)
    windows: Windows[int] = Windows(spec, 0)
    windows.add(1, ts=1, topic="t")
    windows.add(1005, ts=1005, topic="t")
    windows.add(2000, ts=2000, topic="t")
    step = windows.flush_watermark()  # watermark 2000: windows (0, 10], (1000, 1010], ...
    assert [(list(f.items), f.end) for f in step.fired] == [([1], 10), ([1005], 1010),
                                                            ([2000], 2000)]  # fmt: skip


def test_event_time_count_windows_count_what_the_watermark_passed() -> None:
    spec = _spec(window_length_count=2, use_event_time=True)
    windows: Windows[int] = Windows(spec, 0)
    for ts in (30, 10, 20, 40, 50):
        windows.add(ts, ts=ts, topic="t")
    step = windows.flush_watermark()  # watermark 50: all five passed, in time order
    assert _fired(step) == [[10, 20], [30, 40]]
    assert step.evicted == [10, 20, 30, 40]
    assert list(windows.items()) == [50]


def test_the_watermark_waits_for_the_slowest_topic() -> None:
    spec = _spec(window_length_duration_ms=10, use_event_time=True)
    windows: Windows[int] = Windows(spec, 0)
    windows.add(100, ts=100, topic="fast")
    windows.add(5, ts=5, topic="slow")
    windows.flush_watermark()
    assert windows.watermark == 5


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--sliding-interval-count", "2"], "Window length is not specified"),
        (["--window-length-count", "2", "--window-length-duration-ms", "5"],
         "Window length for time and count are set! Please set one or the other."),
        (["--window-length-count", "0"], "Window length must be positive [0]"),
        (["--window-length-count", "2", "--sliding-interval-count", "-1"],
         "Sliding interval must be positive [-1]"),
        (["--window-length-count", "2", "--sliding-interval-count", "3"],
         "the sliding interval (3 messages) is longer than the window (2 messages)"),
        (["--window-length-duration-ms", "9", "--sliding-interval-count", "1",
          "--sliding-interval-duration-ms", "1"], "Sliding interval for time and count are set!"),
        (["--window-length-count", "2", "--late-data-topic", "late"],
         "Late data topic can be defined only when specifying a timestamp extractor class"),
        (["--window-length-count", "2", "--use-event-time", "--max-lag-ms", "-1"],
         "Lag duration must be positive [-1]"),
        (["--window-length-count", "20000"], "more than --max-window-messages 10000"),
        (["--window-length-count", "2", "--processing-guarantees", "EFFECTIVELY_ONCE"],
         "window functions do not support EFFECTIVELY_ONCE"),
        (["--window-length-count", "2", "--processing-guarantees", "MANUAL"],
         "window functions do not support MANUAL"),
    ],
)  # fmt: skip
def test_an_inconsistent_window_is_one_clear_error(argv: list[str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve([*IN, *argv], {})
    assert says in str(caught.value)


def test_window_config_in_yaml_details_and_flags_is_the_same_window(tmp_path: Any) -> None:
    window = {"windowLengthCount": 10, "slidingIntervalCount": 5}
    yaml_file = tmp_path / "f.yaml"
    yaml_file.write_text(
        f"inputs: [in]\nwindowConfig: {json.dumps(window)}\nuserConfig: {{a: 1}}\n"
    )
    user = json.dumps({"__WINDOWCONFIGS__": window, "a": 1})
    details = json.dumps({"source": {"inputSpecs": {"in": {}}}, "userConfig": user})
    flags = [*IN, "--window-length-count", "10", "--sliding-interval-count", "5"]
    configs = [
        resolve(["--function-config", str(yaml_file)], {}),
        resolve(["--function-details", details], {}),
        resolve(flags, {}),
    ]
    expected = WindowSettings(window_length_count=10, sliding_interval_count=5)
    assert [c.window for c in configs] == [expected] * 3
    assert [dict(c.user_config) for c in configs[:2]] == [{"a": 1}, {"a": 1}]  # key taken out


def test_the_function_details_view_keeps_the_window_where_pulsar_does() -> None:
    from pulsarfunc.runtime.details import function_details

    config = resolve([*IN, "--window-length-duration-ms", "500", "--use-event-time"], {})
    user = json.loads(function_details(config).userConfig)
    assert user["__WINDOWCONFIGS__"] == {"windowLengthDurationMs": 500, "useEventTime": True}


# --- handler forms ------------------------------------------------------------------------------


def test_window_handler_forms_and_what_check_says() -> None:
    def total(window: list[int]) -> int:
        return sum(window)

    def keys(window: list[WindowRecord[str]]) -> list[str | None]:
        return [r.key for r in window]

    assert "window function total(window: list[int]) -> int: a window of JSON int" in (
        inspect_handler(total, window=True).describe()
    )
    assert "a window of WindowRecord[str]" in inspect_handler(keys, window=True).describe()

    def not_a_list(window: dict[str, int]) -> int:
        return 0

    with pytest.raises(HandlerError, match="takes the window as a list"):
        inspect_handler(not_a_list, window=True)


# --- the engine on the fake broker ----------------------------------------------------------------


@contextmanager
def running(handler: Callable[..., Any], broker: FakeBroker, **fields: Any) -> Iterator[Instance]:
    """A window function's instance on its own thread (what it gives back at the stop is each
    test's to check)."""
    instance = Instance(make_config(**fields), inspect_handler(handler, window=True), broker)
    with in_thread(instance, must_drain=False):
        yield instance


def _ints(*values: int) -> list[FakeMessage]:
    return [FakeMessage(str(v).encode()) for v in values]


def test_a_count_window_sums_and_acks_only_after_its_output_is_persisted() -> None:
    broker = FakeBroker()
    persisted = threading.Event()
    broker.held[OUT] = persisted
    broker.feed(*_ints(1, 2, 3, 4, 5, 6, 7))

    def total(window: list[int]) -> int:
        return sum(window)

    with running(total, broker, window=WindowSettings(window_length_count=3)):
        wait_for(lambda: len(broker.sent[OUT]) == 2)
        assert broker.sources[0].acked == []  # outputs sent, not yet persisted
        persisted.set()
        wait_for(lambda: len(broker.sources[0].acked) == 6)
    assert [m.payload for m in broker.sent[OUT]] == [b"6", b"15"]
    first = broker.sent[OUT][0].properties
    assert first is not None
    assert first[COUNT] == "3"
    assert int(first[START]) <= int(first[END])
    assert [m.payload for m in broker.sources[0].nacked] == [b"7"]  # its window never fired


def test_a_sliding_window_acks_a_message_after_every_window_holding_it() -> None:
    broker = FakeBroker()
    broker.feed(*_ints(1, 2, 3, 4))
    seen: list[list[int]] = []

    def keep(window: list[int]) -> int:
        seen.append(window)
        return len(window)

    fields = {"window": WindowSettings(window_length_count=4, sliding_interval_count=2)}
    with running(keep, broker, **fields):
        wait_for(lambda: len(broker.sources[0].acked) == 2)
        assert seen == [[1, 2], [1, 2, 3, 4]]
        # 1 and 2 were in both windows; 3 and 4 are in the next one too: not acked yet
        assert [m.payload for m in broker.sources[0].acked] == [b"1", b"2"]
        broker.feed(*_ints(5, 6))
        wait_for(lambda: len(broker.sources[0].acked) == 4)
    assert seen == [[1, 2], [1, 2, 3, 4], [3, 4, 5, 6]]
    assert [m.payload for m in broker.sent[OUT]] == [b"2", b"4", b"4"]


def test_a_failing_window_fails_each_of_its_messages_and_they_come_back() -> None:
    broker = FakeBroker()
    broker.feed(*_ints(1, 2))
    calls: list[list[int]] = []

    def flaky(window: list[int]) -> int:
        calls.append(window)
        if len(calls) == 1:
            raise ValueError("first window fails")
        return sum(window)

    config = {"window": WindowSettings(window_length_count=2), "redelivery_delay_ms": 0}
    with running(flaky, broker, **config):
        wait_for(lambda: len(broker.sent[OUT]) == 1)
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert [m.payload for m in broker.sources[0].nacked] == [b"1", b"2"]
    assert calls == [[1, 2], [1, 2]]
    assert [m.payload for m in broker.sent[OUT]] == [b"3"]


def test_failing_windows_dead_letter_their_messages_after_the_retries() -> None:
    broker = FakeBroker()
    broker.feed(*_ints(1, 2))

    def broken(window: list[int]) -> int:
        raise ValueError("never")

    fields = {
        "window": WindowSettings(window_length_count=2),
        "max_message_retries": 1,
        "dead_letter_topic": "persistent://public/default/dlq",
    }
    with running(broken, broker, **fields):
        wait_for(lambda: len(broker.sent["persistent://public/default/dlq"]) == 2)
    letters = broker.sent["persistent://public/default/dlq"]
    assert sorted(m.payload for m in letters) == [b"1", b"2"]
    assert letters[0].properties is not None
    assert letters[0].properties["pulsarfunc.error.message"] == "never"


def test_late_event_time_data_goes_to_the_late_data_topic() -> None:
    broker = FakeBroker()
    late_topic = "persistent://public/default/late"
    on_time = [FakeMessage(str(t).encode(), event_ts=t) for t in (1010, 1050, 1300)]
    broker.feed(*on_time)
    seen: list[list[int]] = []

    def keep(window: list[int]) -> None:
        seen.append(window)

    window = WindowSettings(
        window_length_duration_ms=100, use_event_time=True, watermark_emit_interval_ms=20,
        late_data_topic=late_topic,
    )  # fmt: skip
    with running(keep, broker, window=window) as instance:
        wait_for(lambda: seen == [[1010, 1050], [1300]])  # (1000, 1100] and (1200, 1300]
        broker.feed(FakeMessage(b"1020", event_ts=1020))  # behind the watermark (1300)
        wait_for(lambda: len(broker.sent[late_topic]) == 1)
        wait_for(lambda: len(broker.sources[0].acked) == 4)
        snapshot = instance.metrics.snapshot()
    assert broker.sent[late_topic][0].payload == b"1020"
    assert snapshot.window_late == 1
    assert sorted(m.payload for m in broker.sources[0].acked) == [
        b"1010",
        b"1020",
        b"1050",
        b"1300",
    ]


def test_a_full_window_refuses_what_does_not_fit_and_says_so() -> None:
    broker = FakeBroker()
    broker.feed(*_ints(1, 2, 3))

    def keep(window: list[int]) -> None:
        return None

    window = WindowSettings(window_length_duration_ms=60_000, max_window_messages=2)
    with running(keep, broker, window=window, redelivery_delay_ms=60_000) as instance:
        wait_for(lambda: len(broker.sources[0].nacked) >= 1)
        snapshot = instance.metrics.snapshot()
    assert snapshot.window_overflow >= 1
    assert broker.sources[0].nacked[0].payload == b"3"


def test_records_carry_key_event_time_topic_id_and_properties() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"v", key="k", props={"p": "1"}, event_ts=5))
    got: list[WindowRecord[str]] = []

    def records(window: list[WindowRecord[str]]) -> None:
        got.extend(window)

    with running(records, broker, window=WindowSettings(window_length_count=1)):
        wait_for(lambda: len(broker.sources[0].acked) == 1)
    (record,) = got
    assert (record.value, record.key, record.event_time, record.properties) == (
        "v",
        "k",
        5,
        {"p": "1"},
    )
    assert record.topic == "persistent://public/default/in"
    assert record.message_id == broker.sources[0].acked[0].mid


def test_under_atmost_once_windows_ack_on_receipt() -> None:
    broker = FakeBroker()
    broker.feed(*_ints(1, 2, 3))

    def total(window: list[int]) -> int:
        return sum(window)

    fields = {"window": WindowSettings(window_length_count=2)}
    with running(total, broker, processing_guarantee=ProcessingGuarantee.ATMOST_ONCE, **fields):
        wait_for(lambda: len(broker.sent[OUT]) == 1)
    assert len(broker.sources[0].acked) == 3
    assert broker.sources[0].nacked == []


def test_outputs_persisted_after_the_stop_still_settle_their_messages() -> None:
    broker = FakeBroker()
    persisted = threading.Event()
    broker.held[OUT] = persisted
    broker.feed(*_ints(1, 2))

    def total(window: list[int]) -> int:
        return sum(window)

    config = make_config(window=WindowSettings(window_length_count=2))
    instance = Instance(config, inspect_handler(total, window=True), broker)
    drained: list[bool] = []
    thread = threading.Thread(target=lambda: drained.append(instance.run()), daemon=True)
    thread.start()
    wait_for(lambda: len(broker.sent[OUT]) == 1)
    instance.stop()  # the window's output is not persisted yet
    threading.Timer(0.2, persisted.set).start()
    thread.join(10)
    assert drained == [True]
    assert [m.payload for m in broker.sources[0].acked] == [b"1", b"2"]


def test_a_payload_that_does_not_decode_fails_only_that_message_of_its_window() -> None:
    broker = FakeBroker()
    broker.feed(FakeMessage(b"1"), FakeMessage(b"not json"), FakeMessage(b"2"))
    seen: list[list[int]] = []

    def keep(window: list[int]) -> int:
        seen.append(window)
        return sum(window)

    fields = {"window": WindowSettings(window_length_count=3), "redelivery_delay_ms": 60_000}
    with running(keep, broker, **fields):
        wait_for(lambda: len(broker.sources[0].nacked) == 1)
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    assert seen == [[1, 2]]
    assert broker.sources[0].nacked[0].payload == b"not json"


def _example(name: str) -> Any:
    from pathlib import Path

    from pulsarfunc.runtime.discovery import load

    root = Path(__file__).resolve().parents[2] / "examples" / name
    return load(str(root)).obj


def test_the_window_sum_example_sums_each_hundred() -> None:
    broker = FakeBroker()
    broker.feed(*_ints(*range(250)))
    with running(_example("window-sum"), broker, window=WindowSettings(window_length_count=100)):
        wait_for(lambda: len(broker.sent[OUT]) == 2)
    assert [m.payload for m in broker.sent[OUT]] == [b"4950", b"14950"]


def test_the_window_average_example_averages_the_last_window() -> None:
    broker = FakeBroker()
    broker.feed(*(FakeMessage(str(v).encode()) for v in (1.0, 2.0, 6.0)))
    window = WindowSettings(window_length_duration_ms=10_000, sliding_interval_duration_ms=100)
    with running(_example("window-average"), broker, window=window):
        wait_for(lambda: len(broker.sent[OUT]) >= 1)
    first = json.loads(broker.sent[OUT][0].payload)
    assert (first["average"], first["count"]) == (3.0, 3)
    assert first["first"] <= first["last"]


class TakesTimeFromTheValue:
    """A timestamp extractor, as `--timestamp-extractor-classname test_windows.TakesTime...`."""

    def extract_timestamp(self, value: dict[str, int]) -> int:
        return value["at"]


def test_event_time_from_a_timestamp_extractor() -> None:
    broker = FakeBroker()
    at = [1010, 1090, 1150, 1400]
    broker.feed(*(FakeMessage(json.dumps({"at": t}).encode()) for t in at))
    seen: list[list[int]] = []

    def times(window: list[dict[str, int]]) -> None:
        seen.append([v["at"] for v in window])

    window = WindowSettings(
        window_length_duration_ms=100,
        timestamp_extractor_class_name=f"{__name__}.TakesTimeFromTheValue",
        watermark_emit_interval_ms=10,
    )
    with running(times, broker, window=window):
        wait_for(lambda: len(seen) == 3)
    assert seen == [[1010, 1090], [1150], [1400]]  # (1000, 1100], (1100, 1200], (1300, 1400]


def test_messages_between_two_firings_in_no_window_are_counted_not_silent() -> None:
    broker = FakeBroker()
    seen: list[list[int]] = []

    def keep(window: list[int]) -> None:
        seen.append(window)

    # the last 2 messages at each 200 ms firing: 5 at once means 3 are in no window
    window = WindowSettings(window_length_count=2, sliding_interval_duration_ms=200)
    with running(keep, broker, window=window) as instance:
        broker.feed(*_ints(1, 2, 3, 4, 5))
        wait_for(lambda: len(seen) == 1)
        wait_for(lambda: len(broker.sources[0].acked) == 3)
        snapshot = instance.metrics.snapshot()
    assert seen == [[4, 5]]
    assert snapshot.window_skipped == 3
