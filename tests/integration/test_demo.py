"""The README's demo command, run as a user runs it: build, broker, image, messages, clean-up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

pytestmark = pytest.mark.docker  # the demo starts its own broker

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_shows_messages_flowing_and_cleans_up(
    docker_client: docker.DockerClient,
) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo"), "ping", "pong"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "received 'ping!'" in result.stdout
    assert "received 'pong!'" in result.stdout
    leftovers = docker_client.containers.list(all=True, filters={"name": "pulsarfunc-demo-"})
    assert leftovers == []
