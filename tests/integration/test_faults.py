"""Fault tests: a function image on the real broker, killed, stopped, poisoned, broker restarted.

Each test streams 10,000 messages and checks that every input has its output (at-least-once),
then prints the figures: lost, duplicated, dead-lettered, seconds to drain. The broker-restart
test runs last: the broker is shared by the whole session, and `restart_pulsar` waits until it
serves again.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest
from docker.models.containers import Container
from images import built, image_tags
from pulsar_helpers import PulsarBroker, Received, Subscription, produce, subscribe_first
from pulsar_helpers import unique_topic as topic_named

pytestmark = [pytest.mark.integration, pytest.mark.docker]

TOTAL = 10_000
POISON = 100
HANDLER = '''\
"""A function for fault tests: upper-cases text, fails on poison, sleeps delay_ms per message."""

import time

from pulsarfunc import Context


def handler(ctx: Context, text: str) -> str:
    if text.startswith("poison"):
        raise ValueError(f"cannot digest {text}")
    delay_ms = ctx.user_config_value("delay_ms", 0)
    if delay_ms:
        time.sleep(delay_ms / 1000)
    return text.upper()
'''


@dataclass
class Figures:
    """What a fault test measured, printed for the closing note."""

    test: str
    sent: int
    lost: int
    duplicated: int
    dead_lettered: int
    drain_s: float
    note: str = ""

    def line(self) -> str:
        return (
            f"FIGURES {self.test}: sent {self.sent}, lost {self.lost}, duplicated "
            f"{self.duplicated}, dead-lettered {self.dead_lettered}, seconds to drain "
            f"{self.drain_s:.1f}{'; ' + self.note if self.note else ''}"
        )


def report(figures: Figures) -> None:
    print(figures.line())
    out = os.environ.get("PULSARFUNC_FIGURES_FILE")  # the closing note's figures, when asked
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(figures.line() + "\n")


@pytest.fixture(scope="module")
def image(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The fault-test function, built once for the module with `pulsarfunc build`."""
    function = tmp_path_factory.mktemp("faultfn")
    (function / "handler.py").write_text(HANDLER)
    with image_tags(docker_client) as make:
        tag = make("faults")
        built([str(function), "-t", tag])
        yield tag


@pytest.fixture
def start_function(
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    pulsar: PulsarBroker,
    image: str,
) -> Iterator[Callable[..., Container]]:
    """Start the image on the broker's network, read-only; removed after the test."""
    started: list[Container] = []

    def start(*args: str) -> Container:
        container = docker_client.containers.run(
            image,
            ["--service-url", pulsar.internal_service_url, "--subscription-position", "EARLIEST",
             *args],
            detach=True, network=pulsar.network, read_only=True, labels=docker_labels,
        )  # fmt: skip
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove(force=True)


def payloads(count: int = TOTAL, poison_every: int = 0) -> list[bytes]:
    """m0..mN, with `poison-i` in place of every `poison_every`-th message."""
    return [
        f"poison-{i}".encode() if poison_every and i % poison_every == poison_every - 1 else
        f"m{i}".encode()
        for i in range(count)
    ]  # fmt: skip


class Tally:
    """Outputs received so far: how many in all, which distinct ones."""

    def __init__(self, sink: Subscription) -> None:
        self.sink = sink
        self.received = 0
        self.seen: set[bytes] = set()
        self.records: list[Received] = []

    def add(self, batch: list[Received]) -> None:
        self.received += len(batch)
        self.seen.update(r.data for r in batch)
        self.records.extend(batch)

    def until(self, expected: set[bytes], timeout_s: float, why: Callable[[], str]) -> None:
        """Collect until every expected output arrived; fail saying how many did not."""
        deadline = time.monotonic() + timeout_s
        while missing := len(expected - self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{missing} of {len(expected)} outputs never came\n{why()}")
            try:
                self.add(self.sink.collect(missing, timeout_s=min(left, 30)))
            except TimeoutError:
                continue

    def at_least(self, count: int, timeout_s: float) -> None:
        """Collect until `count` outputs in all arrived (the stream is then mid-way)."""
        while self.received < count:
            self.add(self.sink.collect(min(500, count - self.received), timeout_s=timeout_s))

    def rest(self, quiet_s: float = 3.0) -> None:
        """Collect late duplicates until the sink has been quiet for `quiet_s`."""
        with contextlib.suppress(TimeoutError):
            while True:
                self.add(self.sink.collect(1, timeout_s=quiet_s))

    def finish(self, expected: set[bytes], container: Container, since: float) -> float:
        """Every expected output, then late duplicates; returns seconds from `since` to the last."""
        self.until(expected, 240, lambda: logs(container))
        drain_s = time.monotonic() - since
        self.rest()
        return drain_s

    def duplicated(self) -> int:
        return self.received - len(self.seen)


def logs(container: Container) -> str:
    return container.logs(tail=30).decode(errors="replace")


def state(container: Container) -> dict[str, Any]:
    container.reload()
    return dict(container.attrs["State"], RestartCount=container.attrs["RestartCount"])


def flags(src: str, out: str, **user_config: Any) -> list[str]:
    return ["--inputs", src, "--output", out, "--user-config", json.dumps(user_config)]


def test_kill_9_mid_stream_then_restart_loses_nothing(
    pulsar: PulsarBroker, start_function: Callable[..., Container]
) -> None:
    src, out = topic_named("kill-in"), topic_named("kill-out")
    sent = payloads()
    expected = {p.upper() for p in sent}
    with subscribe_first(pulsar.service_url, out) as sink:
        tally = Tally(sink)
        container = start_function(*flags(src, out, delay_ms=1))
        producer = threading.Thread(target=produce, args=(pulsar.service_url, src, sent))
        producer.start()  # a live stream: the function consumes while it is produced
        tally.at_least(3000, timeout_s=120)
        container.kill()  # SIGKILL: no drain, no flush, no acks of what was in flight
        assert container.wait(timeout=30)["StatusCode"] == 137
        killed_at = tally.received
        producer.join(120)
        assert not producer.is_alive()
        restarted = time.monotonic()
        container.start()
        drain_s = tally.finish(expected, container, restarted)
    lost = len(expected - tally.seen)
    assert tally.seen == expected  # nothing that was not an input's output
    report(
        Figures("kill -9", TOTAL, lost, tally.duplicated(), 0, drain_s,
                f"killed after {killed_at} outputs; drain = restart to last output")
    )  # fmt: skip


def test_sigterm_under_load_exits_0_within_10_s_and_loses_nothing(
    pulsar: PulsarBroker, start_function: Callable[..., Container]
) -> None:
    src, out = topic_named("term-in"), topic_named("term-out")
    sent = payloads()
    expected = {p.upper() for p in sent}
    produce(pulsar.service_url, src, sent)
    with subscribe_first(pulsar.service_url, out) as sink:
        tally = Tally(sink)
        container = start_function(*flags(src, out, delay_ms=1))
        tally.at_least(2000, timeout_s=120)
        signalled = time.monotonic()
        container.stop(timeout=30)  # SIGTERM; SIGKILL only after 30 s, which would fail below
        code = container.wait(timeout=60)["StatusCode"]
        stop_s = time.monotonic() - signalled
        assert code == 0, logs(container)
        assert stop_s < 10, f"took {stop_s:.1f} s to stop\n{logs(container)}"
        stopped_at = tally.received
        assert stopped_at < TOTAL  # work was left when it stopped: a restart must finish it
        restarted = time.monotonic()
        container.start()
        drain_s = tally.finish(expected, container, restarted)
    lost = len(expected - tally.seen)
    assert tally.seen == expected
    report(
        Figures("SIGTERM", TOTAL, lost, tally.duplicated(), 0, drain_s,
                f"exit 0 in {stop_s:.1f} s after SIGTERM at {stopped_at} outputs")
    )  # fmt: skip


def test_100_poison_messages_among_10000_are_dead_lettered_with_reasons(
    pulsar: PulsarBroker, start_function: Callable[..., Container]
) -> None:
    src, out, dlq = topic_named("poison-in"), topic_named("poison-out"), topic_named("poison-dlq")
    sent = payloads(poison_every=TOTAL // POISON)
    poison = {p for p in sent if p.startswith(b"poison")}
    expected = {p.upper() for p in sent if p not in poison}
    assert (len(poison), len(expected)) == (POISON, TOTAL - POISON)
    retry = ["--max-message-retries", "2", "--redelivery-delay-ms", "100"]
    with (
        subscribe_first(pulsar.service_url, out) as sink,
        subscribe_first(pulsar.service_url, dlq) as dead,
    ):
        tally, letters = Tally(sink), Tally(dead)
        container = start_function(*flags(src, out), *retry, "--dead-letter-topic", dlq)
        started = time.monotonic()
        produce(pulsar.service_url, src, sent)
        tally.until(expected, 180, lambda: logs(container))
        letters.until(poison, 120, lambda: logs(container))
        drain_s = time.monotonic() - started
        tally.rest()
        letters.rest()
        assert state(container)["Running"], logs(container)
        assert state(container)["RestartCount"] == 0
    assert letters.received == POISON  # exactly 100: none twice
    assert letters.seen == poison
    assert tally.seen == expected  # 9,900 outputs, and no poison among them
    for letter in letters.records:
        props = letter.properties
        assert props["pulsarfunc.error.type"] == "ValueError"
        assert props["pulsarfunc.error.message"] == f"cannot digest {letter.data.decode()}"
        assert props["pulsarfunc.attempts"] == "3"
        assert props["REAL_TOPIC"] == src
        assert props["ORIGIN_MESSAGE_ID"]
    report(
        Figures("poison", TOTAL, len(expected - tally.seen), tally.duplicated(),
                letters.received, drain_s, f"{POISON} poison, 2 retries each, 100 ms apart")
    )  # fmt: skip


def test_broker_restart_mid_stream_loses_nothing_and_the_function_keeps_running(
    pulsar: PulsarBroker,
    start_function: Callable[..., Container],
    restart_pulsar: Callable[[], None],
) -> None:
    src, out = topic_named("restart-in"), topic_named("restart-out")
    sent = payloads()
    expected = {p.upper() for p in sent}
    produce(pulsar.service_url, src, sent)
    with subscribe_first(pulsar.service_url, out) as sink:
        tally = Tally(sink)
        container = start_function(*flags(src, out, delay_ms=1))
        before = state(container)
        tally.at_least(2000, timeout_s=120)
        restarting = time.monotonic()
        restart_pulsar()  # docker restart of the broker; returns once it serves again
        down_s = time.monotonic() - restarting
        restarted_at = tally.received
        drain_s = tally.finish(expected, container, restarting)
        after = state(container)
    assert after["Running"], logs(container)
    assert after["StartedAt"] == before["StartedAt"]  # the same process all along
    assert after["RestartCount"] == 0
    lost = len(expected - tally.seen)
    assert tally.seen == expected
    report(
        Figures("broker restart", TOTAL, lost, tally.duplicated(), 0, drain_s,
                f"broker restarted after {restarted_at} outputs, serving again in "
                f"{down_s:.1f} s; drain = restart to last output")
    )  # fmt: skip
