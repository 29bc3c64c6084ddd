"""The builder's only door to Docker: a thin seam over docker-py's low-level API.

Everything else in the builder works with plain dicts and bytes, so it stays testable without
an engine; docker-py's exceptions become `EngineError` here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, TypeVar

import docker
import docker.errors
import docker.utils

from pulsarfunc.builder.errors import EngineError

__all__ = ["Engine"]

T = TypeVar("T")

_HINT = "start the Docker engine (e.g. `dockerd`), or point DOCKER_HOST at one"


class Engine:
    """Calls the Docker engine through `docker.APIClient` (API version negotiated)."""

    def __init__(self, connect: Callable[[], docker.APIClient]) -> None:
        self._connect = connect
        self._api: docker.APIClient | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Engine:
        """Connect as the docker CLI would (DOCKER_HOST, ...), on first use: a build that
        fails its host checks never talks to the engine."""
        settings = dict(env)

        def connect() -> docker.APIClient:
            kwargs = docker.utils.kwargs_from_env(environment=settings)
            return docker.APIClient(version="auto", **kwargs)

        return cls(connect)

    @property
    def _client(self) -> Any:  # docker-py's stubs leave several APIClient methods untyped
        if self._api is None:
            try:
                self._api = self._connect()
            except docker.errors.DockerException as exc:
                raise EngineError(f"cannot reach the Docker engine: {exc}", hint=_HINT) from exc
        return self._api

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except docker.errors.DockerException as exc:
            raise EngineError(f"Docker engine: {what} failed: {exc}", hint=_HINT) from exc

    def close(self) -> None:
        """Release the connection (if one was made)."""
        if self._api is not None:
            self._api.close()
            self._api = None

    def architecture(self) -> str:
        """The engine's CPU architecture as Python wheels name it (x86_64, aarch64)."""
        info = self._call("info", self._client.info)
        arch = str(info.get("Architecture", "x86_64"))
        return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)

    def image_id(self, ref: str) -> str | None:
        """The id of image `ref`, or None when the engine has no such image."""
        try:
            return str(self._client.inspect_image(ref)["Id"])
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.DockerException as exc:
            raise EngineError(f"Docker engine: inspect {ref} failed: {exc}", hint=_HINT) from exc

    def inspect(self, ref: str) -> dict[str, Any]:
        """`docker image inspect` of `ref`."""
        return dict(self._call(f"inspect {ref}", lambda: self._client.inspect_image(ref)))

    def history(self, ref: str) -> list[dict[str, Any]]:
        """`docker history` of `ref`, newest entry first (the engine's order)."""
        return list(self._call(f"history {ref}", lambda: self._client.history(ref)))

    def build(
        self,
        context: IO[bytes],
        *,
        tag: str | None = None,
        nocache: bool = False,
        buildargs: Mapping[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Run a classic build of a tar `context`, yielding the engine's decoded log events.

        RUN steps get no network (`network_mode="none"`): everything is staged on the host.
        """
        try:
            stream = self._client.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                nocache=nocache,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                buildargs=dict(buildargs or {}),
                network_mode="none",
                use_config_proxy=False,
            )
            yield from stream
        except docker.errors.DockerException as exc:
            raise EngineError(f"Docker engine: build failed to run: {exc}", hint=_HINT) from exc

    def load(self, archive: bytes) -> None:
        """`docker load` an image archive (layers the engine already has may be omitted)."""
        events = self._call("load", lambda: list(self._client.load_image(archive)))
        for event in events:
            if isinstance(event, dict) and event.get("error"):
                raise EngineError(f"Docker engine: load failed: {event['error']}", hint=_HINT)

    def tags(self, repository: str) -> list[str]:
        """Every `repository:tag` the engine has for `repository`."""
        images = self._call(f"list {repository}", lambda: self._client.images(name=repository))
        return sorted(t for image in images for t in image.get("RepoTags") or [])

    def remove(self, ref: str) -> bool:
        """Remove tag `ref` (and its image if nothing else uses it); False when still in use."""
        try:
            self._client.remove_image(ref, noprune=False)
        except docker.errors.APIError as exc:
            if exc.status_code in (404, 409):  # gone already, or a container/child image uses it
                return False
            raise EngineError(f"Docker engine: remove {ref} failed: {exc}", hint=_HINT) from exc
        return True

    def tag(self, image: str, repository: str, tag: str) -> None:
        """Point `repository:tag` at `image`."""
        self._call(f"tag {image}", lambda: self._client.tag(image, repository, tag, force=True))

    def push(self, repository: str, tag: str) -> Iterator[dict[str, Any]]:
        """Push `repository:tag`, yielding the engine's decoded progress events."""
        try:
            yield from self._client.push(repository, tag=tag, stream=True, decode=True)
        except docker.errors.DockerException as exc:
            raise EngineError(f"Docker engine: push failed: {exc}", hint=_HINT) from exc
