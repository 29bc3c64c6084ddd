"""Fixtures shared by the integration tests that build images."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import docker
import pytest


@pytest.fixture
def image_tag(docker_client: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    """Unique image tags for one test, removed afterwards."""
    tags: list[str] = []

    def make(name: str) -> str:
        tags.append(f"pulsarfunc-test/{name}:{uuid.uuid4().hex[:8]}")
        return tags[-1]

    yield make
    for tag in tags:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True, noprune=True)
