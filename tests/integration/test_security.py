"""Security: non-root, read-only images without capabilities; no build-time secret in any layer;
token authentication and TLS against a broker that requires them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import signal
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
from images import built
from images import image_tags as make_image_tags
from pulsar_helpers import (
    PulsarBroker,
    produce,
    secure_client_args,
    subscribe_first,
    unique_topic,
)
from secure_broker import SecureBroker, start
from test_localrun import localrun

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXCLAIM = str(EXAMPLES / "exclaim" / "handler.py")
FAIL_WITHIN_S = 60  # a refused start must end by itself, not hang


def build(function: Path, tag: str) -> None:
    built([str(function), "-t", tag])


@pytest.fixture(scope="module")
def image_tags(docker_client: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    with make_image_tags(docker_client) as make:
        yield make


@pytest.fixture(scope="module")
def exclaim(image_tags: Callable[[str], str]) -> str:
    tag = image_tags("secure-exclaim")
    build(EXAMPLES / "exclaim", tag)
    return tag


# --- the image: non-root, read-only, no capabilities -------------------------------------------


@pytest.mark.docker
def test_the_image_runs_as_a_non_root_user(
    docker_client: docker.DockerClient, exclaim: str
) -> None:
    user = docker_client.images.get(exclaim).attrs["Config"]["User"]
    uid, _, gid = user.partition(":")
    assert uid not in ("", "0", "root"), f"image user {user!r}"
    assert gid not in ("0", "root"), f"image group {user!r}"
    ids = docker_client.containers.run(
        exclaim, entrypoint=["sh", "-c", "id -u; id -g"], remove=True, read_only=True
    )
    assert [int(x) for x in ids.split()] == [int(uid), int(gid or uid)]
    assert 0 not in [int(x) for x in ids.split()]


@pytest.mark.docker
@pytest.mark.integration
def test_read_only_without_capabilities_it_still_processes(
    pulsar: PulsarBroker,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    exclaim: str,
) -> None:
    src, out = unique_topic("ro-in"), unique_topic("ro-out")
    container = docker_client.containers.run(
        exclaim,
        ["--service-url", pulsar.internal_service_url, "--inputs", src, "--output", out,
         "--subscription-position", "EARLIEST"],
        detach=True, network=pulsar.network, labels=docker_labels,
        read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
    )  # fmt: skip
    try:
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        with subscribe_first(pulsar.service_url, out) as sink:
            produce(pulsar.service_url, src, [b"locked", b"down"])
            got = sorted(r.data for r in sink.collect(2, timeout_s=60))
        assert got == [b"down!", b"locked!"]
        container.stop(timeout=20)
        assert container.wait(timeout=30)["StatusCode"] == 0, container.logs().decode()
    finally:
        container.remove(force=True)


# --- no build-time secret in the image ---------------------------------------------------------


def make_wheel(where: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of `name` (its module returns "probe")."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": b"VALUE = 'probe'\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: pulsarfunc-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = [f"{path},sha256={digest(data)},{len(data)}" for path, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    wheel = where / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


@contextlib.contextmanager
def private_index(wheel: Path, name: str, token: str) -> Iterator[tuple[int, list[bool]]]:
    """A PEP 503 index on loopback serving `wheel`, only to requests that carry `token`.

    Yields the port and, per request, whether it was authorised.
    """
    expected = "Basic " + base64.b64encode(f"__token__:{token}".encode()).decode()
    seen: list[bool] = []
    body = wheel.read_bytes()
    page = (
        f'<a href="/files/{wheel.name}#sha256={hashlib.sha256(body).hexdigest()}">{wheel.name}</a>'
    ).encode()

    class Index(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.headers.get("Authorization") == expected
            seen.append(ok)
            if not ok:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="index"')
                self.end_headers()
                return
            if self.path.rstrip("/") == f"/simple/{name}":
                content, kind = page, "text/html"
            elif self.path == f"/files/{wheel.name}":
                content, kind = body, "application/octet-stream"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def scan_image(
    client: docker.DockerClient, tag: str, needles: dict[str, bytes], where: Path
) -> dict[str, list[str]]:
    """Where each needle occurs: every file of `docker save` (config, manifest, each layer,
    uncompressed), the image history and its inspect data."""
    found: dict[str, list[str]] = {name: [] for name in needles}
    image = client.images.get(tag)
    saved = where / "image.tar"
    with saved.open("wb") as f:
        for chunk in image.save(named=True):
            f.write(chunk)

    def look(data: bytes, place: str) -> None:
        for name, needle in needles.items():
            if needle in data:
                found[name].append(place)

    with tarfile.open(saved) as outer:
        layers = 0
        for member in outer:
            extracted = outer.extractfile(member) if member.isfile() else None
            if extracted is None:
                continue
            data = extracted.read()
            look(data, member.name)
            if member.name.endswith("layer.tar"):
                layers += 1
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:  # names and contents
                    for entry in layer:
                        look(entry.name.encode(), f"{member.name}:{entry.name} (name)")
    assert layers == len(image.attrs["RootFS"]["Layers"]), "not every layer was scanned"
    look(json.dumps(image.history()).encode(), "docker history")
    look(json.dumps(image.attrs).encode(), "docker inspect")
    return found


@pytest.mark.docker
def test_no_secret_given_at_build_time_is_in_any_layer_or_the_history(
    docker_client: docker.DockerClient,
    image_tags: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = uuid.uuid4().hex[:10]
    index_token = f"pf-index-token-{run}"  # a private index's token, in an env var
    dotenv_secret = f"pf-dotenv-secret-{run}"  # a .env file in the function directory
    marker = f"pf-visible-marker-{run}"  # in the code on purpose: proves the scan sees it
    package = f"pf-secret-probe-{run}"  # unique: the wheel cache cannot spare pip the index
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = make_wheel(wheels, package, "0.1")
    function = tmp_path / "fn"
    function.mkdir()
    module = package.replace("-", "_")
    (function / "handler.py").write_text(
        f"import {module}\n\nMARKER = {marker!r}\n\n\n"
        f"def handler(text: str) -> str:\n    return text + {module}.VALUE\n"
    )
    (function / ".env").write_text(f"API_TOKEN={dotenv_secret}\n")
    with private_index(wheel, package, index_token) as (port, requests):
        # pip expands ${VAR} in requirement files: the token stays in the environment.
        (function / "requirements.txt").write_text(
            f"--extra-index-url http://__token__:${{PF_INDEX_TOKEN}}@127.0.0.1:{port}/simple/\n"
            f"{package}==0.1\n"
        )
        monkeypatch.setenv("PF_INDEX_TOKEN", index_token)
        tag = image_tags("secret-scan")
        build(function, tag)
    assert True in requests, "the build never used the private index's token"
    secrets = {"index token": index_token.encode(), ".env secret": dotenv_secret.encode()}
    found = scan_image(docker_client, tag, {**secrets, "marker": marker.encode()}, tmp_path)
    assert found["marker"], "the scan did not see the function's own code"
    assert {name: found[name] for name in secrets} == {name: [] for name in secrets}
    output = docker_client.containers.run(
        tag, entrypoint=["python3", "-c", f"import {module}; print({module}.VALUE)"],
        remove=True, read_only=True,
    )  # fmt: skip
    assert output.strip() == b"probe"  # the private dependency is in the image


# --- token authentication and TLS ---------------------------------------------------------------


@pytest.fixture(scope="module")
def secure(
    pulsar: PulsarBroker,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    docker_network: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SecureBroker]:
    """A second broker, from the image the session's broker runs."""
    if pulsar.container is None:
        pytest.skip("the broker is external (PULSAR_SERVICE_URL): no image to start another from")
    image = pulsar.container.attrs["Config"]["Image"]
    broker = start(
        docker_client, image, docker_network, docker_labels, tmp_path_factory.mktemp("secure")
    )
    try:
        yield broker
    finally:
        broker.container.remove(force=True, v=True)


def io_flags(src: str, out: str) -> list[str]:
    return ["--inputs", src, "--output", out, "--subscription-position", "EARLIEST"]


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.parametrize("transport", ["tls", "plain"])
def test_a_function_with_a_token_gets_outputs(
    secure: SecureBroker, tmp_path: Path, transport: str
) -> None:
    src, out = unique_topic("auth-in"), unique_topic("auth-out")
    tls = transport == "tls"
    url = secure.tls_url if tls else secure.plain_url
    connect = ["--service-url", url]
    if tls:
        connect += ["--tls-trust-certs-file", str(secure.ca_file)]
    client_args = secure_client_args(secure.admin_token, str(secure.ca_file) if tls else None)
    log = tmp_path / "fn.log"
    with (
        subscribe_first(url, out, client_args) as sink,
        localrun(
            EXCLAIM, [*connect, "--auth-token", secure.user_token, *io_flags(src, out)], log=log
        ) as proc,
    ):
        produce(url, src, [b"signed", b"sealed"], client_args=client_args)
        got = sorted(r.data for r in sink.collect(2, timeout_s=60))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    assert got == [b"sealed!", b"signed!"]


def refused(args: Sequence[str], tmp_path: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    with localrun(EXCLAIM, args, log=tmp_path / "refused.log") as proc:
        code = proc.wait(FAIL_WITHIN_S)
    return code, (tmp_path / "refused.log").read_text(), time.monotonic() - started


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("no token", ["Authentication", "token"]),
        ("token of another key", ["Authentication", "token"]),
        ("untrusted certificate", ["TLS", "--tls-trust-certs-file"]),
    ],
)
def test_a_refused_connection_fails_with_exit_1_and_says_why(
    secure: SecureBroker, tmp_path: Path, case: str, fragments: list[str]
) -> None:
    src, out = unique_topic("refused-in"), unique_topic("refused-out")
    args = ["--service-url", secure.tls_url, *io_flags(src, out)]
    if case != "untrusted certificate":
        args += ["--tls-trust-certs-file", str(secure.ca_file)]
    if case == "token of another key":
        args += ["--auth-token", secure.foreign_token]
    if case == "untrusted certificate":
        args += ["--auth-token", secure.user_token]
    code, log, took = refused(args, tmp_path)
    assert code == 1, log
    error = [line for line in log.splitlines() if line.startswith("pulsarfunc: error:")]
    assert error, log
    message = log[log.index(error[-1]) :]
    assert secure.tls_url in message
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in log
    print(f"{case}: exit {code} after {took:.1f} s: {message.strip()}")
