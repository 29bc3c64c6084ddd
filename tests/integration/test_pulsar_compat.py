"""A pulsarfunc image started the way Function Mesh starts Pulsar's own Python instance."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from images import built
from pulsar_helpers import PulsarBroker, produce, subscribe_first, unique_topic

pytestmark = [pytest.mark.integration, pytest.mark.docker]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
INSTANCE_MAIN = "/pulsar/instances/python-instance/python_instance_main.py"


def test_function_mesh_command_line_runs_the_image_function(
    pulsar: PulsarBroker,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    image_tag: Callable[[str], str],
) -> None:
    tag = image_tag("compat")
    built([str(EXAMPLES / "exclaim"), "-t", tag])
    src, out = unique_topic("in"), unique_topic("out")
    details = {
        "tenant": "public",
        "namespace": "default",
        "name": f"mesh-{src.rsplit('-', 1)[-1]}",
        "className": "handler.handler",
        "runtime": "PYTHON",
        "source": {"inputSpecs": {src: {}}, "subscriptionPosition": "EARLIEST"},
        "sink": {"topic": out},
    }
    # As Function Mesh renders it: the JSON in single quotes, Pulsar's process-model flags too.
    argv = [
        INSTANCE_MAIN,
        "--py", "/pulsar/handler.py",
        "--logging_directory", "logs",
        "--instance_id", "0",
        "--function_id", "f-1",
        "--function_version", "1",
        "--function_details", "'" + json.dumps(details) + "'",
        "--pulsar_serviceurl", pulsar.internal_service_url,
        "--max_buffered_tuples", "100",
        "--port", "9093",
        "--metrics_port", "9094",
        "--expected_healthcheck_interval", "-1",
        "--cluster_name", "standalone",
    ]  # fmt: skip
    container = docker_client.containers.run(
        tag,
        argv,
        entrypoint=["python3"],
        detach=True,
        network=pulsar.network,
        read_only=True,
        labels=docker_labels,
    )
    try:
        with subscribe_first(pulsar.service_url, out) as sink:
            produce(pulsar.service_url, src, [b"mesh"])
            (got,) = sink.collect(1, timeout_s=60)
        logs = container.logs().decode()
    finally:
        container.remove(force=True)
    assert got.data == b"mesh!"
    assert f"public/default/{details['name']}" in logs  # the FunctionDetails name, not the image's
