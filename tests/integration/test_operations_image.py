"""A built function image in operation: /metrics scraped from outside, and Docker's health."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from docker.models.containers import Container
from images import built, image_tags
from pulsar_helpers import PulsarBroker, produce, subscribe_first, unique_topic
from test_operations import only, pulsar_labels, scrape  # the same checks as in-process

pytestmark = [pytest.mark.docker, pytest.mark.integration]

HANDLER = """\
from pulsarfunc import Context


def handler(context: Context, text: str) -> str:
    if text.startswith("bad"):
        raise ValueError("bad input")
    context.record_metric("chars", len(text))
    return text.upper()
"""


@pytest.fixture(scope="module")
def image(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The handler above, built by `pulsarfunc build` (removed afterwards)."""
    function = tmp_path_factory.mktemp("opsfn")
    (function / "handler.py").write_text(HANDLER)
    with image_tags(docker_client) as make:
        tag = make("ops")
        summary = built([str(function), "-t", tag])
        assert summary["tag"] == tag
        yield tag


def wait_until(predicate: object, what: str, timeout_s: float = 90.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.5)


@contextlib.contextmanager
def started(
    client: docker.DockerClient,
    labels: dict[str, str],
    pulsar: PulsarBroker,
    image: str,
    *args: str,
) -> Iterator[Container]:
    """The image on the broker's network, read-only, its metrics port published on loopback."""
    ports: dict[str, Any] = {"9094/tcp": ("127.0.0.1", None)}  # None: any free host port
    container = client.containers.run(
        image,
        ["--service-url", pulsar.internal_service_url, *args],
        detach=True,
        network=pulsar.network,
        read_only=True,
        labels=labels,
        ports=ports,
    )
    try:
        yield container
    finally:
        container.remove(force=True)


def metrics_port(container: Container) -> int:
    """The loopback port Docker published the container's 9094 on."""
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"]["9094/tcp"][0]["HostPort"])


def test_metrics_of_a_running_image_scraped_from_the_host(
    pulsar: PulsarBroker,
    image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    src, out, dlq = unique_topic("in"), unique_topic("out"), unique_topic("dlq")
    payloads = [b"one", b"bad-1", b"three", b"four", b"bad-2", b"six"]
    good = [p for p in payloads if not p.startswith(b"bad")]
    flags = [
        "--inputs", src, "--output", out, "--name", "ops", "--instance-id", "2",
        "--subscription-position", "EARLIEST", "--max-message-retries", "0",
        "--dead-letter-topic", dlq,
    ]  # fmt: skip
    with (
        subscribe_first(pulsar.service_url, out) as sink,
        started(docker_client, docker_labels, pulsar, image, *flags) as container,
    ):
        produce(pulsar.service_url, src, payloads)
        assert sorted(r.data for r in sink.collect(len(good), timeout_s=60)) == sorted(
            p.upper() for p in good
        )
        port = metrics_port(container)
        wait_until(lambda: only(scrape(port), "pulsarfunc_dead_lettered_total") == 2, "bad inputs")
        samples = scrape(port)

    labels = pulsar_labels("ops", 2)
    assert only(samples, "pulsar_function_received_total", **labels) == len(payloads)
    assert only(samples, "pulsar_function_processed_successfully_total", **labels) == len(good)
    assert only(samples, "pulsar_function_user_exceptions_total", **labels) == 2
    assert only(samples, "pulsar_function_user_exceptions_1min_total", **labels) == 2
    assert only(samples, "pulsar_function_process_latency_ms_count", **labels) == len(good)
    assert only(samples, "pulsar_function_user_metric_count", metric="chars") == len(good)
    assert only(samples, "pulsar_function_user_metric_sum", metric="chars") == sum(map(len, good))


def test_docker_ps_shows_the_image_healthy_once_it_consumes(
    pulsar: PulsarBroker,
    image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    with started(
        docker_client, docker_labels, pulsar, image, "--inputs", unique_topic("in")
    ) as container:

        def status() -> str:
            return subprocess.run(
                ["docker", "ps", "--filter", f"id={container.id}", "--format", "{{.Status}}"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.strip()

        wait_until(lambda: "(healthy)" in status(), "docker ps shows (healthy)")
        container.reload()
        health = container.attrs["State"]["Health"]
        assert health["Status"] == "healthy"
        assert "/readyz: 200 ready" in health["Log"][-1]["Output"]


def test_the_health_check_follows_a_moved_metrics_port(
    pulsar: PulsarBroker,
    image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    args = ["--inputs", unique_topic("in"), "--metrics-port", "9300"]
    with started(docker_client, docker_labels, pulsar, image, *args) as container:

        def healthy() -> bool:
            container.reload()
            return bool(container.attrs["State"]["Health"]["Status"] == "healthy")

        wait_until(healthy, "healthy on --metrics-port 9300")
        assert "127.0.0.1:9300/readyz" in container.attrs["State"]["Health"]["Log"][-1]["Output"]
