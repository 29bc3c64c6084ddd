"""Fixtures shared by the integration tests that build images."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import docker
import pytest
from images import image_tags


@pytest.fixture
def image_tag(docker_client: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    """Unique image tags for one test, removed afterwards."""
    with image_tags(docker_client) as make:
        yield make
