"""`pulsarfunc build --push` against a real registry: Debian's docker-registry on loopback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pulsarfunc.builder.commands import build_main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, accept: str = "") -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(response.headers), response.read()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A throwaway registry on 127.0.0.1 (the engine trusts loopback registries without TLS)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("Debian's docker-registry is not installed (apt-get install docker-registry)")
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(CONFIG.format(root=tmp_path / "storage", port=port))
    log = tmp_path / "registry.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=sink, stderr=sink)
    try:
        for _ in range(100):
            try:
                _get(f"http://127.0.0.1:{port}/v2/")
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"docker-registry exited: {log.read_text()}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.docker
def test_push_sends_the_image_with_its_reproducible_id(
    registry: str, docker_client: docker.DockerClient
) -> None:
    tag = f"{registry}/pulsarfunc-test/exclaim:v1"
    out, err = io.StringIO(), io.StringIO()
    try:
        code = build_main(
            [str(EXAMPLES / "exclaim"), "-t", tag, "--push", "--json"],
            env=dict(os.environ),
            out=out,
            err=err,
        )
        assert code == 0, err.getvalue()
        summary = json.loads(out.getvalue())
        assert summary["pushed_digest"].startswith("sha256:")

        _, tags = _get(f"http://{registry}/v2/pulsarfunc-test/exclaim/tags/list")
        assert json.loads(tags)["tags"] == ["v1"]
        headers, body = _get(
            f"http://{registry}/v2/pulsarfunc-test/exclaim/manifests/v1", accept=MANIFEST_V2
        )
        assert headers["Docker-Content-Digest"] == summary["pushed_digest"]
        # the registry holds exactly the config whose digest is the (normalised) image id
        assert json.loads(body)["config"]["digest"] == summary["image_id"]

        docker_client.images.remove(tag, force=True)
        pulled = docker_client.images.pull(tag)
        assert pulled.id == summary["image_id"]
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)
