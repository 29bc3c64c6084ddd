"""Building function images from tests: `pulsarfunc build` in-process, its JSON summary back."""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker

from pulsarfunc.builder.commands import build_main


def build(argv: list[str], **env: str) -> tuple[int, dict[str, Any], str]:
    """Run `pulsarfunc build ... --json` in-process: (exit code, summary, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = build_main([*argv, "--json"], env={**os.environ, **env}, out=out, err=err)
    return code, json.loads(out.getvalue() or "{}"), err.getvalue()


def built(argv: list[str], **env: str) -> dict[str, Any]:
    """`build`, which must succeed: its summary (tag, image id, sizes, ...)."""
    code, summary, err = build(argv, **env)
    assert code == 0, err
    return summary


@contextlib.contextmanager
def image_tags(client: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    """A maker of unique image tags; every image it named is removed at the end."""
    tags: list[str] = []

    def make(name: str) -> str:
        tags.append(f"pulsarfunc-test/{name}:{uuid.uuid4().hex[:8]}")
        return tags[-1]

    yield make
    for tag in tags:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag, force=True, noprune=True)
