"""Smoke tests: the broker works from the host, from a container on the test network, and
survives a restart. If these fail, every other integration test's failure is noise."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from pulsar_helpers import PulsarBroker, collect, produce, subscribe_first

CONTAINER_SITE = "/opt/pulsar-client"

# Runs inside the container: consume what the host produced, then produce for the host.
CONTAINER_SCRIPT = """
import json, sys
import pulsar
url, inbound, outbound, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
consumer = client.subscribe(inbound, "in-container",
                            initial_position=pulsar.InitialPosition.Earliest)
received = []
for _ in range(count):
    msg = consumer.receive(timeout_millis=30000)
    consumer.acknowledge(msg)
    received.append(msg.data().decode())
producer = client.create_producer(outbound)
for text in received:
    producer.send(("echo:" + text).encode(), properties={"from": "container"})
client.close()
print(json.dumps(received))
"""


@pytest.mark.integration
def test_round_trip_from_host(pulsar: PulsarBroker, topic: Callable[..., str]) -> None:
    name = topic()
    payloads = [f"hello-{i}".encode() for i in range(20)]
    keys = [f"k{i % 3}" for i in range(20)]

    with subscribe_first(pulsar.service_url, name) as sub:
        ids = produce(pulsar.service_url, name, payloads, keys=keys, properties={"p": "v"})
        got = sub.collect(len(payloads), timeout_s=30)

    assert len(ids) == len(payloads)
    assert [m.data for m in got] == payloads
    assert [m.key for m in got] == keys
    assert all(m.properties == {"p": "v"} and m.topic == name for m in got)


@pytest.mark.integration
@pytest.mark.docker
def test_round_trip_from_container_on_test_network(
    pulsar: PulsarBroker,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    pulsar_client_site: Path,
    topic: Callable[..., str],
) -> None:
    inbound, outbound = topic("to-container"), topic("from-container")
    payloads = [f"ping-{i}" for i in range(5)]
    produce(pulsar.service_url, inbound, [p.encode() for p in payloads])
    image = os.environ.get("PULSARFUNC_BASE_IMAGE") or "python:3.11-slim"

    with subscribe_first(pulsar.service_url, outbound) as sub:
        container = docker_client.containers.run(
            image,
            [
                "python3",
                "-c",
                CONTAINER_SCRIPT,
                pulsar.internal_service_url,
                inbound,
                outbound,
                "5",
            ],
            detach=True,
            network=pulsar.network,
            labels=docker_labels,
            environment={"PYTHONPATH": CONTAINER_SITE},
            volumes={str(pulsar_client_site): {"bind": CONTAINER_SITE, "mode": "ro"}},
        )
        try:
            exit_code = container.wait(timeout=120)["StatusCode"]
            stdout = container.logs(stderr=False).decode()
            stderr = container.logs(stdout=False).decode()
        finally:
            container.remove(force=True)
        assert exit_code == 0, f"container script failed:\n{stderr}"
        echoed = sub.collect(len(payloads), timeout_s=30)

    assert json.loads(stdout.strip().splitlines()[-1]) == payloads
    assert [m.data.decode() for m in echoed] == [f"echo:{p}" for p in payloads]
    assert {m.properties["from"] for m in echoed} == {"container"}


@pytest.mark.integration
def test_unacked_messages_survive_broker_restart(
    pulsar: PulsarBroker, restart_pulsar: Callable[[], None], topic: Callable[..., str]
) -> None:
    name = topic()
    payloads = [f"durable-{i}".encode() for i in range(10)]
    # Create the durable subscription first, then leave its messages unacknowledged.
    collect(pulsar.service_url, name, 0, timeout_s=5, subscription_name="durable")
    produce(pulsar.service_url, name, payloads)

    restart_pulsar()

    got = collect(
        pulsar.service_url, name, len(payloads), timeout_s=60, subscription_name="durable"
    )
    assert [m.data for m in got] == payloads
