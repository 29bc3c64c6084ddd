"""What integration tests need over and over: topics, produce, collect, broker readiness.

Together with conftest.py this is the only test module that imports `pulsar`: tests speak in
plain bytes and `Received` records, so a client API change is fixed in one place.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulsar

if TYPE_CHECKING:
    from docker.models.containers import Container

Properties = Mapping[str, str]


@dataclass(frozen=True)
class PulsarBroker:
    """How tests reach the session's broker, from the host and from containers on its network."""

    service_url: str  # pulsar://127.0.0.1:PORT, for clients on the host
    internal_service_url: str  # pulsar://pulsar:6650, for containers on `network`
    admin_url: str  # http://127.0.0.1:PORT, the REST admin API
    network: str | None  # the session's Docker network (None for an external broker)
    container: Container | None  # None when PULSAR_SERVICE_URL points at an external broker
    version: str  # as reported by GET /admin/v2/brokers/version


@dataclass(frozen=True)
class StateBroker:
    """A broker with Pulsar's stream storage: managed state at `state_url` (bk://HOST:PORT)."""

    broker: PulsarBroker
    state_url: str  # from the host
    internal_state_url: str  # from containers on the broker's network


@dataclass(frozen=True)
class Received:
    """One consumed message, reduced to what tests assert on."""

    data: bytes
    key: str | None
    properties: dict[str, str]
    topic: str


def unique_topic(prefix: str) -> str:
    """A fresh persistent topic, so tests never see each other's messages."""
    return f"persistent://public/default/{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def client(service_url: str, **client_args: Any) -> Iterator[pulsar.Client]:
    """A client that logs warnings only (the default INFO logging drowns test output).

    `client_args` go to `pulsar.Client` (e.g. `secure_client_args` for auth and TLS).
    """
    c = pulsar.Client(
        service_url,
        operation_timeout_seconds=30,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
        **client_args,
    )
    try:
        yield c
    finally:
        c.close()


def produce(
    service_url: str,
    topic: str,
    payloads: Sequence[bytes],
    *,
    keys: Sequence[str] | None = None,
    properties: Properties | Sequence[Properties] | None = None,
    client_args: Mapping[str, Any] | None = None,
) -> list[pulsar.MessageId]:
    """Send `payloads` in order and return their message ids once all are persisted.

    `properties` is either one mapping for every message or one mapping per message. The
    producer batches and blocks when its queue is full: without that, send_async fails fast
    and messages are silently lost.
    """
    if keys is not None and len(keys) != len(payloads):
        raise ValueError(f"{len(keys)} keys for {len(payloads)} payloads")
    per_message = _per_message_properties(properties, len(payloads))
    results: dict[int, tuple[pulsar.Result, pulsar.MessageId]] = {}
    sent = threading.Condition()

    def on_sent(index: int) -> Callable[[pulsar.Result, pulsar.MessageId], None]:
        def callback(result: pulsar.Result, msg_id: pulsar.MessageId) -> None:
            with sent:
                results[index] = (result, msg_id)
                sent.notify_all()

        return callback

    with client(service_url, **(client_args or {})) as c:
        producer = c.create_producer(
            topic, batching_enabled=True, block_if_queue_full=True, batching_max_publish_delay_ms=5
        )
        for i, data in enumerate(payloads):
            key = keys[i] if keys is not None else None
            producer.send_async(data, on_sent(i), properties=per_message[i], partition_key=key)
        producer.flush()
        with sent:
            if not sent.wait_for(lambda: len(results) == len(payloads), timeout=60):
                raise TimeoutError(f"{len(payloads) - len(results)} sends to {topic} unconfirmed")
        producer.close()
    failed = {i: r for i, (r, _) in results.items() if r != pulsar.Result.Ok}
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(payloads)} sends to {topic} failed: {failed}")
    return [results[i][1] for i in range(len(payloads))]


def _per_message_properties(
    properties: Properties | Sequence[Properties] | None, count: int
) -> list[dict[str, str] | None]:
    if properties is None or isinstance(properties, Mapping):
        one = dict(properties) if properties is not None else None
        return [one] * count
    if len(properties) != count:
        raise ValueError(f"{len(properties)} property mappings for {count} payloads")
    return [dict(p) for p in properties]


class Subscription:
    """An open subscription (Earliest): subscribe first, produce, then `collect`."""

    def __init__(self, consumer: pulsar.Consumer, what: str) -> None:
        self._consumer = consumer
        self._what = what

    def collect(self, count: int, *, timeout_s: float) -> list[Received]:
        """Return as soon as `count` messages arrived (each acked); raise at the deadline."""
        got: list[Received] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [r.data[:40] for r in got[:3]]
                raise TimeoutError(
                    f"collected {len(got)} of {count} messages from {self._what} within "
                    f"{timeout_s:g} s (first: {seen})"
                )
            try:
                msg = self._consumer.receive(timeout_millis=max(1, int(min(remaining, 1.0) * 1000)))
            except pulsar.Timeout:
                continue
            self._consumer.acknowledge(msg)
            got.append(
                Received(
                    data=msg.data(),
                    key=msg.partition_key() or None,
                    properties=dict(msg.properties()),
                    topic=msg.topic_name(),
                )
            )
        return got


@contextmanager
def subscribe_first(
    service_url: str,
    topic: str | Sequence[str],
    client_args: Mapping[str, Any] | None = None,
    **subscribe_args: Any,
) -> Iterator[Subscription]:
    """Subscribe before anything is produced; extra keyword arguments go to `Client.subscribe`."""
    args: dict[str, Any] = {
        "subscription_name": f"test-{uuid.uuid4().hex[:8]}",
        "initial_position": pulsar.InitialPosition.Earliest,
        **subscribe_args,
    }
    topics = topic if isinstance(topic, str) else list(topic)
    with client(service_url, **(client_args or {})) as c:
        consumer = c.subscribe(topics, **args)
        try:
            yield Subscription(consumer, str(topic))
        finally:
            consumer.close()


def collect(
    service_url: str,
    topic: str | Sequence[str],
    count: int,
    *,
    timeout_s: float,
    **subscribe_args: Any,
) -> list[Received]:
    """Subscribe (Earliest), return the first `count` messages, or raise saying how many came."""
    with subscribe_first(service_url, topic, **subscribe_args) as sub:
        return sub.collect(count, timeout_s=timeout_s)


def secure_client_args(token: str | None, trust_certs_file: str | None) -> dict[str, Any]:
    """`pulsar.Client` arguments for token authentication and TLS (for `client_args`)."""
    args: dict[str, Any] = {}
    if token:
        args["authentication"] = pulsar.AuthenticationToken(token)
    if trust_certs_file:
        args["tls_trust_certs_file_path"] = trust_certs_file
    return args


# --- broker readiness ------------------------------------------------------------------------


def admin_get(admin_url: str, path: str, *, timeout_s: float = 5.0) -> Any:
    """GET a Pulsar admin REST path and decode the JSON (or plain text) answer."""
    with urllib.request.urlopen(f"{admin_url}{path}", timeout=timeout_s) as resp:
        body = resp.read().decode()
    try:
        return json.loads(body)
    except ValueError:
        return body.strip()


def broker_not_ready(admin_url: str) -> str | None:
    """Why the broker cannot serve tests yet, or None once it can.

    An open port is not a ready broker: the standalone cluster and `public/default` must exist.
    """
    checks: tuple[tuple[str, Callable[[Any], bool]], ...] = (
        ("/admin/v2/clusters", lambda clusters: clusters == ["standalone"]),
        ("/admin/v2/namespaces/public", lambda namespaces: "public/default" in namespaces),
    )
    for path, ok in checks:
        try:
            value = admin_get(admin_url, path)
        except urllib.error.HTTPError as e:
            return f"GET {path} answered HTTP {e.code}"
        except OSError as e:
            return f"admin API at {admin_url} not answering: {e}"
        if not ok(value):
            return f"GET {path} returned {value!r}"
    return None


def wait_until_ready(
    admin_url: str, *, timeout_s: float, still_starting: Callable[[], str | None]
) -> None:
    """Poll readiness until the deadline; `still_starting` returns why to give up early.

    Raises TimeoutError (or RuntimeError when `still_starting` reports a dead broker) with the
    last reason, for the caller to enrich with container status and logs.
    """
    deadline = time.monotonic() + timeout_s
    while (reason := broker_not_ready(admin_url)) is not None:
        if (dead := still_starting()) is not None:
            raise RuntimeError(f"{dead}; last check: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout_s:g} s; last check: {reason}")
        time.sleep(0.5)


# --- client wheels for containers --------------------------------------------------------------


def stage_pulsar_client(cache_dir: Path) -> Path:
    """Install the host's pulsar-client version for CPython 3.11 manylinux into a cached dir.

    Containers here cannot reach PyPI, so they get the client on PYTHONPATH from this directory.
    """
    version = importlib.metadata.version("pulsar-client")
    target = cache_dir / "site" / f"pulsar-client-{version}-cp311-manylinux_2_28_x86_64"
    if (target / "pulsar").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(tmp)]
    wheel = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]
    subprocess.run([*pip, *wheel, "--only-binary=:all:", f"pulsar-client=={version}"], check=True)
    try:
        tmp.rename(target)
    except OSError:  # another session staged it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
