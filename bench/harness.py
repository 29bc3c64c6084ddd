"""What the runtime benchmark measures with: a broker, topics, a backlog, the clock.

- `broker()` uses the broker it is given, or starts one container (PULSAR_IMAGE) on a network
  of its own and removes both at exit.
- `produce_backlog()` sends with batching, as Java and Go producers do by default (the Python
  client's default is off). Unbatched, every message is an entry of its own and the broker's
  dispatch, not the processor, is the limit: about 20k msg/s here for every case alike.
- `drain_rate()` waits for the outputs by the broker's own topic stats (`msgInCounter`,
  polled four times a second: a stats call costs the broker CPU the processor then lacks),
  and takes the rate afterwards from the outputs' publish times, read back from the topic:
  exact, and nothing of the benchmark's own runs while the processor is measured.
- `latency()` sends at a fixed rate, each payload stamped with `time.time_ns()` (and the event
  time), and takes the time each output is received: end-to-end latency with the same clock.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import statistics
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import _pulsar
import pulsar

PAYLOAD_BYTES = 100
_STAMP = struct.Struct("<q")


@dataclass(frozen=True)
class Broker:
    service_url: str  # from the host
    admin_url: str
    network: str  # the docker network containers join ("host" for a given broker)
    internal_url: str  # from containers on `network`


def sh(*command: str, check: bool = True) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


class Cleanup:
    """Things to undo at exit, on SIGTERM/SIGINT too; last registered, first undone."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        atexit.register(self.run)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def add(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def run(self) -> None:
        while self._undo:
            with contextlib.suppress(Exception):
                self._undo.pop()()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.run()
        raise SystemExit(128 + signum)


def _quietly(*command: str) -> None:
    sh(*command, check=False)


def admin_get(admin_url: str, path: str) -> Any:
    with urllib.request.urlopen(admin_url + path, timeout=10) as response:
        body = response.read()
    try:
        return json.loads(body or b"null")
    except ValueError:
        return body.decode()


def broker(service_url: str | None, admin_url: str | None, image: str, cleanup: Cleanup) -> Broker:
    """The given broker, or a new container of `image` (removed at exit)."""
    if service_url:
        admin = admin_url or "http://127.0.0.1:8080"
        _wait_ready(admin, 60)
        return Broker(service_url, admin, "host", service_url)
    name = f"pulsarfunc-bench-{os.getpid()}"
    sh("docker", "network", "create", name)
    cleanup.add(lambda: _quietly("docker", "network", "rm", name))
    sh("docker", "run", "-d", "--name", name, "--network", name, "--network-alias", "pulsar", image)
    cleanup.add(lambda: _quietly("docker", "rm", "-f", "-v", name))
    # Host processes use the container's address on our own network, as containers do: the
    # published loopback ports go through docker-proxy, a userland copy that would cost the
    # host-side cases CPU that the image cases don't pay.
    template = f'{{{{(index .NetworkSettings.Networks "{name}").IPAddress}}}}'
    address = sh("docker", "inspect", "-f", template, name)
    admin = f"http://{address}:8080"
    _wait_ready(admin, 180)
    return Broker(f"pulsar://{address}:6650", admin, name, "pulsar://pulsar:6650")


def _wait_ready(admin_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if "public/default" in admin_get(admin_url, "/admin/v2/namespaces/public"):
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no broker answers at {admin_url} after {timeout_s:.0f} s")
        time.sleep(1)


def topic(prefix: str) -> str:
    return f"persistent://public/default/bench-{prefix}-{uuid.uuid4().hex[:8]}"


def quiet_client(service_url: str) -> Any:
    return pulsar.Client(service_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))


def produce_backlog(
    service_url: str,
    target: str,
    count: int,
    payload: Callable[[int], bytes] | None = None,
    schema: Any = None,
) -> None:
    """`count` messages of PAYLOAD_BYTES (or `payload(i)`, from a producer declaring the
    pulsar-client `schema`), batched, all persisted when this returns."""
    client = quiet_client(service_url)
    try:
        producer = client.create_producer(
            target,
            block_if_queue_full=True,
            batching_enabled=True,
            batching_max_publish_delay_ms=5,
            max_pending_messages=10_000,
            **({} if schema is None else {"schema": schema}),
        )
        native = producer._producer
        now = int(time.time() * 1000)
        for i in range(count):
            builder = _pulsar.MessageBuilder()
            if payload is None:
                builder.content(_STAMP.pack(i) + bytes(PAYLOAD_BYTES - _STAMP.size))
            else:
                builder.content(payload(i))
            builder.event_timestamp(now)
            native.send_async(builder.build(), None)
        producer.flush()  # raises if a send failed: sends complete in order
        producer.close()
    finally:
        client.close()


def published(admin_url: str, target: str) -> int:
    """Messages published to `target` so far, by the broker's own count."""
    path = "/admin/v2/" + target.replace("://", "/") + "/stats"
    try:
        return int(admin_get(admin_url, path).get("msgInCounter", 0))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # no producer yet: the topic does not exist
            return 0
        raise


def drain_rate(
    service_url: str,
    admin_url: str,
    target: str,
    count: int,
    timeout_s: float,
    alive: Callable[[], bool],
) -> float:
    """Messages/s of the last 95% of `count` outputs on `target` (the first 5% include
    subscribing and warm-up), by their publish times once all have arrived."""
    deadline = time.monotonic() + timeout_s
    while (seen := published(admin_url, target)) < count:
        if time.monotonic() > deadline or not alive():
            why = "timed out" if alive() else "the processor exited"
            raise RuntimeError(f"{why}: {seen} of {count} outputs on {target}")
        time.sleep(0.25)
    return publish_rate(service_url, target, count // 20, count)


def publish_rate(service_url: str, target: str, first: int, count: int) -> float:
    """Messages/s between the publish times of output number `first` and the last of `count`
    (a batch's messages share its publish time: a few ms over seconds)."""
    client = quiet_client(service_url)
    try:
        reader = client.create_reader(
            target, pulsar.MessageId.earliest, receiver_queue_size=5000
        )._reader
        times: list[int] = [reader.read_next(10_000).publish_timestamp() for _ in range(count)]
    finally:
        client.close()
    span_ms = times[-1] - times[first]
    return (count - 1 - first) / max(span_ms / 1000, 1e-3)


@contextlib.contextmanager
def receiving(service_url: str, source: str) -> Iterator[Callable[[float], list[int]]]:
    """A consumer of `source` (latest position) receiving in the background.

    Yields `take(timeout_s)`: the (receive time ns - stamp ns) of everything received since the
    last call, waiting up to timeout_s for at least one.
    """
    client = quiet_client(service_url)
    consumer = client.subscribe(
        source, f"bench-{uuid.uuid4().hex[:6]}", initial_position=pulsar.InitialPosition.Latest
    )
    got: list[int] = []
    cond = threading.Condition()
    stop = threading.Event()

    def receive() -> None:
        native = consumer._consumer
        while not stop.is_set():
            try:
                msg = native.receive(100)
            except pulsar.Timeout:
                continue
            now = time.time_ns()
            native.acknowledge(msg)
            with cond:
                got.append(now - _STAMP.unpack_from(msg.data())[0])
                cond.notify_all()

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()

    def take(timeout_s: float) -> list[int]:
        with cond:
            cond.wait_for(lambda: bool(got), timeout_s)
            taken = got[:]
            got.clear()
        return taken

    try:
        yield take
    finally:
        stop.set()
        thread.join()
        client.close()


def latency(
    service_url: str, source: str, sink: str, rate: int, seconds: float
) -> tuple[float, float]:
    """(p50, p99) end-to-end latency in ms at a fixed `rate` of unbatched sends."""
    with receiving(service_url, sink) as take:
        client = quiet_client(service_url)
        try:
            producer = client.create_producer(source, batching_enabled=False)
            native = producer._producer
            total = int(rate * seconds)
            begin = time.perf_counter()
            for i in range(total):
                delay = begin + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                builder = _pulsar.MessageBuilder()
                builder.content(_STAMP.pack(time.time_ns()) + bytes(PAYLOAD_BYTES - _STAMP.size))
                builder.event_timestamp(int(time.time() * 1000))
                native.send_async(builder.build(), lambda *_: None)
            producer.flush()
        finally:
            client.close()
        samples: list[int] = []
        deadline = time.monotonic() + 30
        while len(samples) < total and time.monotonic() < deadline:
            samples += take(1.0)
    if len(samples) < total * 0.99:
        raise RuntimeError(f"latency: {len(samples)} of {total} outputs came back")
    samples = sorted(samples[len(samples) // 10 :])  # the first 10%: warm-up
    p50 = statistics.median(samples) / 1e6
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e6
    return p50, p99


def first_output_after(
    service_url: str, source: str, sink: str, start: Callable[[], Any], timeout_s: float = 60
) -> tuple[float, Any]:
    """Seconds from `start()` to the first output on `sink`, with one message waiting on
    `source`; returns (seconds, what start returned)."""
    with receiving(service_url, sink) as take:
        produce_backlog(service_url, source, 1)
        began = time.perf_counter()
        handle = start()
        if not take(timeout_s):
            raise RuntimeError(f"no output on {sink} within {timeout_s:.0f} s")
        return time.perf_counter() - began, handle


def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process tree's resident memory in MB: the sum of each process's peak (VmHWM, the
    kernel's high-water mark: no sampling misses a peak) or current (VmRSS) resident set."""
    return sum(_status_kb(p, field) for p in tree_pids(pid)) / 1024
