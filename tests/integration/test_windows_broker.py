"""Window functions on the real broker: sums, sliding time windows, late data, kill -9."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pulsar_helpers import PulsarBroker, client, produce, subscribe_first, unique_topic
from runtime_harness import config_for, running, wait_backlog

from pulsarfunc.runtime.config import WindowSettings

pytestmark = pytest.mark.integration

PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))
START, END, COUNT = "pulsarfunc.window.start", "pulsarfunc.window.end", "pulsarfunc.window.count"


def test_a_tumbling_count_window_sums_exactly(pulsar: PulsarBroker) -> None:
    src, out = unique_topic("win-in"), unique_topic("win-out")

    def total(window: list[int]) -> int:
        return sum(window)

    config = dataclasses.replace(
        config_for(pulsar.service_url, src, output=out),
        window=WindowSettings(window_length_count=10),
    )
    produce(pulsar.service_url, src, [str(i).encode() for i in range(100)])
    with subscribe_first(pulsar.service_url, out) as sink, running(total, config):
        got = sink.collect(10, timeout_s=60)
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
    sums = [int(r.data) for r in got]
    assert sums == [sum(range(i, i + 10)) for i in range(0, 100, 10)]
    assert all(r.properties[COUNT] == "10" for r in got)


def test_a_sliding_time_window_holds_each_message_in_its_windows(pulsar: PulsarBroker) -> None:
    src, out = unique_topic("slide-in"), unique_topic("slide-out")

    def ids(window: list[int]) -> list[int]:
        return window

    config = dataclasses.replace(
        config_for(pulsar.service_url, src, output=out),
        window=WindowSettings(window_length_duration_ms=1000, sliding_interval_duration_ms=500),
    )
    with subscribe_first(pulsar.service_url, out) as sink, running(ids, config):
        for i in range(30):  # over about 3 s
            produce(pulsar.service_url, src, [str(i).encode()])
            time.sleep(0.1)
        time.sleep(1.2)  # the last windows fire
        got = sink.collect(4, timeout_s=30)
        got += _drain(sink)
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
    windows = [json.loads(r.data) for r in got]
    counts = {i: sum(i in w for w in windows) for i in range(30)}
    assert all(1 <= n <= 2 for n in counts.values()), counts  # length = 2 x slide
    assert sum(n == 2 for n in counts.values()) >= 20  # most are in two windows
    for r in got:
        assert int(r.properties[END]) - int(r.properties[START]) == 1000


def _drain(sink: object) -> list:  # type: ignore[type-arg]
    """Whatever else comes within a short while."""
    more = []
    while True:
        try:
            more += sink.collect(1, timeout_s=1.5)  # type: ignore[attr-defined]
        except TimeoutError:
            return more


def test_late_event_time_data_reaches_the_late_data_topic(pulsar: PulsarBroker) -> None:
    src, out, late = unique_topic("ev-in"), unique_topic("ev-out"), unique_topic("ev-late")

    def total(window: list[int]) -> int:
        return sum(window)

    config = dataclasses.replace(
        config_for(pulsar.service_url, src, output=out),
        window=WindowSettings(
            window_length_duration_ms=1000,
            use_event_time=True,
            watermark_emit_interval_ms=100,
            late_data_topic=late,
        ),
    )
    base = 1_700_000_000_000
    with (
        subscribe_first(pulsar.service_url, out) as sink,
        subscribe_first(pulsar.service_url, late) as late_sink,
        client(pulsar.service_url) as c,
        running(total, config),
    ):
        producer = c.create_producer(src)
        for offset, value in ((100, 1), (200, 2), (1500, 30), (2500, 400)):
            producer.send(str(value).encode(), event_timestamp=base + offset)
        (first,) = sink.collect(1, timeout_s=30)  # (base, base + 1000]: the watermark passed
        producer.send(b"5", event_timestamp=base + 300)  # behind the watermark: late
        (late_one,) = late_sink.collect(1, timeout_s=30)
    assert first.data == b"3"
    assert int(first.properties[END]) == base + 1000
    assert late_one.data == b"5"


def test_a_kill_in_the_middle_of_a_window_loses_no_input(
    pulsar: PulsarBroker, tmp_path: Path
) -> None:
    src, out = unique_topic("kill-in"), unique_topic("kill-out")
    fn = tmp_path / "ids.py"
    fn.write_text(
        "import time\n\n"
        "def handler(window: list[int]) -> list[int]:\n"
        "    time.sleep(0.2)\n"
        "    return window\n"
    )
    total = 200
    produce(pulsar.service_url, src, [str(i).encode() for i in range(total)])
    args = [
        "--service-url", pulsar.service_url, "--inputs", src, "--output", out,
        "--subscription-position", "EARLIEST", "--window-length-count", "20",
        "--sliding-interval-count", "10", "--receiver-queue-size", "50",
    ]  # fmt: skip
    seen: set[int] = set()
    with subscribe_first(pulsar.service_url, out) as sink:
        with (tmp_path / "first.log").open("wb") as log:
            proc = subprocess.Popen([PULSARFUNC, "run", str(fn), *args], stdout=log, stderr=log)
            try:
                first = sink.collect(3, timeout_s=60)  # in the middle of the stream
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
        for r in first:
            seen.update(json.loads(r.data))
        assert len(seen) < total  # the kill came before the end
        # a count window fires per 10 messages: what the kill left may end in a part-window,
        # which 20 more fill (Pulsar's count windows wait for their count too)
        produce(pulsar.service_url, src, [str(i).encode() for i in range(1000, 1020)])
        with (tmp_path / "second.log").open("wb") as log:
            proc = subprocess.Popen([PULSARFUNC, "run", str(fn), *args], stdout=log, stderr=log)
            try:
                while not set(range(total)) <= seen:
                    (r,) = sink.collect(1, timeout_s=60)
                    seen.update(json.loads(r.data))
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(30)
        assert code == 0, (tmp_path / "second.log").read_text()
    assert seen - set(range(1000, 1020)) == set(range(total))  # every input is in a window
