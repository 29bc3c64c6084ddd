"""A second Pulsar broker with JWT token authentication and TLS, for the security tests.

Everything is made at test time: a self-signed CA and a server certificate (openssl), an HS256
secret key and tokens (signed here, as `pulsar tokens create` would), and the broker's
`standalone.conf`, taken from the image itself and patched, then mounted with the keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container
from docker.types import EndpointConfig

ALIAS = "pulsar-secure"
MOUNT = "/secure"
MEMORY = "-Xms256m -Xmx512m -XX:MaxDirectMemorySize=256m"


@dataclass(frozen=True)
class SecureBroker:
    """Where the authenticated broker listens, and the credentials that work on it."""

    container: Container
    tls_url: str  # pulsar+ssl://127.0.0.1:PORT, from the host
    plain_url: str  # pulsar://127.0.0.1:PORT (authentication still required)
    admin_url: str
    ca_file: Path  # the CA that signed the broker's certificate
    admin_token: str  # a super-user
    user_token: str  # an ordinary role
    foreign_token: str  # well-formed, but signed with another key


def jwt(key: bytes, subject: str) -> str:
    """An HS256 JSON Web Token for `subject`, as `bin/pulsar tokens create` makes them."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256"}).encode())
    claims = b64(json.dumps({"sub": subject}).encode())
    signature = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


def make_certificates(where: Path) -> None:
    """A CA, and a server certificate it signed for localhost, 127.0.0.1 and the alias."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key.pem", "-out", "ca.cert.pem", "-subj", "/CN=pulsarfunc-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "server.key.pem"
    )  # fmt: skip  (PKCS#8, as the broker wants)
    openssl("req", "-new", "-key", "server.key.pem", "-out", "server.csr", "-subj", "/CN=localhost")
    (where / "san.ext").write_text(f"subjectAltName=DNS:localhost,DNS:{ALIAS},IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.cert.pem", "-CAkey", "ca.key.pem",
        "-CAcreateserial", "-days", "2", "-out", "server.cert.pem", "-extfile", "san.ext",
    )  # fmt: skip


def image_file(client: docker.DockerClient, image: str, path: str) -> str:
    """A text file of an image, read from a container that is created but never started."""
    container = client.containers.create(image, command=["true"])
    try:
        stream, _ = container.get_archive(path)
        data = b"".join(stream)
    finally:
        container.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.next()
        assert member is not None
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read().decode()


def patched(conf: str, settings: dict[str, str]) -> str:
    """`conf` with each key set to its value: existing lines replaced, the others appended."""
    lines = conf.splitlines()
    left = dict(settings)
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in left:
            lines[i] = f"{key}={left.pop(key)}"
    lines += [f"{key}={value}" for key, value in left.items()]
    return "\n".join(lines) + "\n"


def start(
    client: docker.DockerClient, image: str, network: str, labels: dict[str, str], where: Path
) -> SecureBroker:
    """Start the broker (same image as the session's) and wait until it serves tokens' users."""
    make_certificates(where)
    key = os.urandom(32)
    (where / "secret.key").write_bytes(key)
    admin_token, user_token = jwt(key, "admin"), jwt(key, "fn-user")
    settings = {
        "authenticationEnabled": "true",
        "authenticationProviders": (
            "org.apache.pulsar.broker.authentication.AuthenticationProviderToken"
        ),
        "tokenSecretKey": f"file://{MOUNT}/secret.key",
        "superUserRoles": "admin",
        "brokerClientAuthenticationPlugin": (
            "org.apache.pulsar.client.impl.auth.AuthenticationToken"
        ),
        "brokerClientAuthenticationParameters": f"token:{admin_token}",
        "brokerServicePortTls": "6651",
        "tlsCertificateFilePath": f"{MOUNT}/server.cert.pem",
        "tlsKeyFilePath": f"{MOUNT}/server.key.pem",
        "tlsTrustCertsFilePath": f"{MOUNT}/ca.cert.pem",
    }
    conf = image_file(client, image, "/pulsar/conf/standalone.conf")
    (where / "standalone.conf").write_text(patched(conf, settings))
    for path in (where, *where.iterdir()):  # the image's user (not always root) reads them
        path.chmod(0o755 if path.is_dir() else 0o644)
    ports: dict[str, Any] = {f"{p}/tcp": ("127.0.0.1", None) for p in (6650, 6651, 8080)}
    container: Container = client.containers.run(
        image,
        detach=True,
        labels=labels,
        network=network,
        networking_config={network: EndpointConfig(client.api.api_version, aliases=[ALIAS])},
        environment={"PULSAR_STANDALONE_CONF": f"{MOUNT}/standalone.conf", "PULSAR_MEM": MEMORY},
        volumes={str(where): {"bind": MOUNT, "mode": "ro"}},
        ports=ports,
        name=f"pulsarfunc-secure-{labels.get('pulsarfunc.test-session', 'x')}",
    )
    container.reload()
    published = {
        int(spec.split("/")[0]): int(bound[0]["HostPort"])
        for spec, bound in container.attrs["NetworkSettings"]["Ports"].items()
        if bound
    }
    broker = SecureBroker(
        container=container,
        tls_url=f"pulsar+ssl://127.0.0.1:{published[6651]}",
        plain_url=f"pulsar://127.0.0.1:{published[6650]}",
        admin_url=f"http://127.0.0.1:{published[8080]}",
        ca_file=where / "ca.cert.pem",
        admin_token=admin_token,
        user_token=user_token,
        foreign_token=jwt(os.urandom(32), "fn-user"),
    )
    wait_ready(broker)
    return broker


def admin_get(broker: SecureBroker, path: str, token: str | None) -> object:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(broker.admin_url + path, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_ready(broker: SecureBroker, timeout_s: float = 120) -> None:
    """Until `public/default` exists, asked with the admin token; else fail with the logs."""
    deadline = time.monotonic() + timeout_s
    reason = ""
    while time.monotonic() < deadline:
        broker.container.reload()
        if broker.container.status != "running":
            reason = f"container {broker.container.status}"
            break
        try:
            namespaces = admin_get(broker, "/admin/v2/namespaces/public", broker.admin_token)
            if isinstance(namespaces, list) and "public/default" in namespaces:
                return
        except (OSError, urllib.error.HTTPError, ValueError) as exc:
            reason = str(exc)
        time.sleep(1)
    logs = broker.container.logs(tail=60).decode(errors="replace")
    raise AssertionError(f"secure broker not ready ({reason}); last log lines:\n{logs}")
