"""Session fixtures: a Docker engine, a test network, a real Apache Pulsar broker.

testcontainers-style, without Ryuk (its image cannot be pulled here): everything this session
starts carries the label `pulsarfunc.test-session=<id>` and is removed at teardown, at exit and
on SIGTERM; leftovers of sessions whose process is gone are removed when a new session starts.

Markers: `integration` tests get the broker, `docker` tests the engine. When either cannot be
had they skip with the reason, except under CI=true, where that is an error.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import docker
import pytest
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import EndpointConfig
from pulsar_helpers import (
    PulsarBroker,
    StateBroker,
    admin_get,
    stage_pulsar_client,
    unique_topic,
    wait_until_ready,
)

SESSION_LABEL = "pulsarfunc.test-session"
PID_LABEL = "pulsarfunc.test-pid"
HOST_LABEL = "pulsarfunc.test-host"
DEFAULT_PULSAR_IMAGE = "apachepulsar/pulsar:4.0.8"
BROKER_ALIAS = "pulsar"
STATE_ALIAS = "pulsar-state"  # the broker with stream storage (managed-state tests)
READY_TIMEOUT_S = 90.0
BOOTSTRAP_HINT = (
    "run `scripts/bootstrap.sh` (as root) and `source ~/.cache/pulsarfunc/local-images.env` "
    "(or use `scripts/test`, which does both)"
)

_BROKER_KEY = pytest.StashKey[tuple[PulsarBroker, str, float]]()
_SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
Filters = dict[str, str | list[str] | bool]


def _unavailable(problem: str, hint: str = BOOTSTRAP_HINT) -> NoReturn:
    """Skip locally, fail under CI: CI must never go green on tests that did not run."""
    message = f"{problem}\nhint: {hint}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, so this is an error, not a skip: {message}", pytrace=False)
    pytest.skip(message)


# --- session identity and cleanup --------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_labels() -> dict[str, str]:
    """Labels for everything a test starts, so the session can find and remove it."""
    return {
        SESSION_LABEL: f"{os.getpid()}-{uuid.uuid4().hex[:8]}",
        PID_LABEL: str(os.getpid()),
        HOST_LABEL: socket.gethostname(),
    }


def _remove_session(client: docker.DockerClient, session: str) -> None:
    """Remove a session's containers (first: they hold the network), networks and volumes."""
    label: Filters = {"label": f"{SESSION_LABEL}={session}"}
    for container in client.containers.list(all=True, filters=label):
        with contextlib.suppress(NotFound):
            container.remove(force=True, v=True)
    for network in client.networks.list(filters=label):
        with contextlib.suppress(NotFound):
            network.remove()
    for volume in client.volumes.list(filters=label):
        with contextlib.suppress(NotFound):
            volume.remove(force=True)


def _reap_dead_sessions(client: docker.DockerClient) -> None:
    """Remove what sessions killed too hard to clean up (SIGKILL, OOM) left behind on this host."""
    ours: Filters = {"label": SESSION_LABEL}
    found = [c.labels for c in client.containers.list(all=True, filters=ours)]
    found += [n.attrs.get("Labels") or {} for n in client.networks.list(filters=ours)]
    for labels in found:
        if labels.get(HOST_LABEL) == socket.gethostname() and not _pid_alive(labels.get(PID_LABEL)):
            _remove_session(client, labels[SESSION_LABEL])


def _pid_alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid or "0"), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class _SessionCleanup:
    """Removes the session's resources once: at teardown, at interpreter exit, or on SIGTERM."""

    def __init__(self, session: str) -> None:
        self._session = session
        self._done = threading.Event()
        self._previous_sigterm: _SignalHandler = signal.SIG_DFL

    def install(self) -> None:
        atexit.register(self.run)
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def uninstall(self) -> None:
        atexit.unregister(self.run)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    def run(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        try:
            client = docker.from_env()
            try:
                _remove_session(client, self._session)
            finally:
                client.close()
        except DockerException as e:
            print(f"pulsarfunc tests: could not remove session {self._session}: {e}")

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.run()
        # Let pytest unwind as after Ctrl-C, running the remaining finalizers.
        raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def docker_client(docker_labels: dict[str, str]) -> Iterator[docker.DockerClient]:
    """The Docker engine; leftovers of dead sessions are removed first."""
    try:
        client = docker.from_env(version="auto", timeout=120)
        client.ping()
    except DockerException as e:
        _unavailable(f"no Docker engine answers ({e})")
    _reap_dead_sessions(client)
    cleanup = _SessionCleanup(docker_labels[SESSION_LABEL])
    cleanup.install()
    try:
        yield client
    finally:
        cleanup.run()
        cleanup.uninstall()
        client.close()


@pytest.fixture(scope="session")
def docker_network(
    docker_client: docker.DockerClient, docker_labels: dict[str, str]
) -> Iterator[str]:
    """A bridge network per session: the broker is `pulsar` on it for the containers tests start."""
    name = f"pulsarfunc-test-{docker_labels[SESSION_LABEL]}"
    network = docker_client.networks.create(name, driver="bridge", labels=docker_labels)
    try:
        yield name
    finally:
        with contextlib.suppress(NotFound):  # already gone if SIGTERM cleaned up first
            network.remove()


# --- the broker --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pulsar(request: pytest.FixtureRequest) -> Iterator[PulsarBroker]:
    """A ready Apache Pulsar standalone broker: PULSAR_SERVICE_URL's, or one from PULSAR_IMAGE."""
    external = os.environ.get("PULSAR_SERVICE_URL")
    started = time.monotonic()
    if external:
        broker = _external_broker(external)
        request.config.stash[_BROKER_KEY] = (broker, external, time.monotonic() - started)
        yield broker
        return
    client: docker.DockerClient = request.getfixturevalue("docker_client")
    network: str = request.getfixturevalue("docker_network")
    labels: dict[str, str] = request.getfixturevalue("docker_labels")
    image = os.environ.get("PULSAR_IMAGE") or DEFAULT_PULSAR_IMAGE
    _ensure_image(client, image)
    container, ports = _run_broker(client, image, network, labels)
    try:
        broker = _ready_broker(container, ports, network, BROKER_ALIAS)
        request.config.stash[_BROKER_KEY] = (broker, image, time.monotonic() - started)
        yield broker
    finally:
        with contextlib.suppress(NotFound):  # already gone if SIGTERM cleaned up first
            container.remove(force=True, v=True)


def _ready_broker(
    container: Container, ports: dict[int, int], network: str, alias: str
) -> PulsarBroker:
    """The broker `_run_broker` started, once it serves."""
    admin_url = f"http://127.0.0.1:{ports[8080]}"
    _wait_for_broker(container, admin_url)
    return PulsarBroker(
        service_url=f"pulsar://127.0.0.1:{ports[6650]}",
        internal_service_url=f"pulsar://{alias}:6650",
        admin_url=admin_url,
        network=network,
        container=container,
        version=str(admin_get(admin_url, "/admin/v2/brokers/version")),
    )


def _external_broker(service_url: str) -> PulsarBroker:
    host = urllib.parse.urlsplit(service_url).hostname or "127.0.0.1"
    admin_url = os.environ.get("PULSAR_ADMIN_URL") or f"http://{host}:8080"
    try:
        wait_until_ready(admin_url, timeout_s=30, still_starting=lambda: None)
    except (TimeoutError, RuntimeError) as e:
        _unavailable(
            f"PULSAR_SERVICE_URL={service_url}: {e}", "set PULSAR_ADMIN_URL, or unset both"
        )
    return PulsarBroker(
        service_url=service_url,
        internal_service_url=os.environ.get("PULSAR_INTERNAL_SERVICE_URL") or service_url,
        admin_url=admin_url,
        network=None,
        container=None,
        version=str(admin_get(admin_url, "/admin/v2/brokers/version")),
    )


def _ensure_image(client: docker.DockerClient, image: str) -> None:
    """Never pull implicitly: where no registry is reachable, a pull only waits and fails."""
    try:
        client.images.get(image)
    except ImageNotFound:
        _unavailable(
            f"broker image {image} is not present locally (PULSAR_IMAGE)",
            f"with a registry: `docker pull {image}`; without one: {BOOTSTRAP_HINT}",
        )


def _run_broker(
    client: docker.DockerClient,
    image: str,
    network: str,
    labels: dict[str, str],
    *,
    kind: str = "pulsar",
    alias: str = BROKER_ALIAS,
    extra_ports: tuple[int, ...] = (),
    command: list[str] | None = None,
    environment: dict[str, str] | None = None,
) -> tuple[Container, dict[int, int]]:
    """Start the broker with fixed loopback host ports, so a `docker restart` keeps its URLs.

    Ports are picked free, then bound by Docker; another process may take one in between, so
    "already allocated" is retried with new ports.
    """
    name = f"pulsarfunc-{kind}-{labels[SESSION_LABEL]}"
    endpoint = EndpointConfig(client.api.api_version, aliases=[alias])
    for _attempt in range(5):
        ports = {port: _free_port() for port in (6650, 8080, *extra_ports)}
        try:
            container: Container = client.containers.run(
                image,
                command=command,
                environment=environment,
                name=name,
                detach=True,
                labels=labels,
                network=network,
                networking_config={network: endpoint},
                ports={f"{c}/tcp": ("127.0.0.1", h) for c, h in ports.items()},
            )
        except APIError as e:
            if "already allocated" not in str(e) and "address already in use" not in str(e):
                raise
            client.containers.get(name).remove(force=True)
            continue
        return container, ports
    raise RuntimeError(f"could not publish the broker's ports on 127.0.0.1 after 5 tries ({name})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_broker(container: Container, admin_url: str) -> None:
    """Wait until the broker serves; on failure show its status and last log lines."""

    def exited() -> str | None:
        container.reload()
        return None if container.status == "running" else f"container {container.status}"

    try:
        wait_until_ready(admin_url, timeout_s=READY_TIMEOUT_S, still_starting=exited)
    except (TimeoutError, RuntimeError) as e:
        container.reload()
        logs = container.logs(tail=40).decode(errors="replace")
        _unavailable(
            f"Pulsar broker {container.name} ({container.attrs['Config']['Image']}) {e}\n"
            f"container status: {container.status} {container.attrs['State'].get('ExitCode')}\n"
            f"last log lines:\n{logs}",
            "check memory/disk (`docker stats`, `df -h`) and that PULSAR_IMAGE runs "
            "`bin/pulsar standalone` (pulsarfunc-local/pulsar:4.0.8 from scripts/bootstrap.sh)",
        )


@pytest.fixture(scope="session")
def pulsar_with_state(request: pytest.FixtureRequest) -> Iterator[StateBroker]:
    """A second broker, with Pulsar's stream storage (the table service on 4181), for the
    managed-state tests only: it costs another ~1 GB. Pulsar 4.0.8 standalone starts stream
    storage only without -nss and on ZooKeeper (PULSAR_STANDALONE_USE_ZOOKEEPER=1)."""
    external = os.environ.get("PULSAR_STATE_STORAGE_URL")
    if os.environ.get("PULSAR_SERVICE_URL"):
        if not external:
            pytest.skip("an external broker: set PULSAR_STATE_STORAGE_URL for the state tests")
        broker = request.getfixturevalue("pulsar")
        yield StateBroker(broker, external, external)
        return
    client: docker.DockerClient = request.getfixturevalue("docker_client")
    network: str = request.getfixturevalue("docker_network")
    labels: dict[str, str] = request.getfixturevalue("docker_labels")
    image = os.environ.get("PULSAR_IMAGE") or DEFAULT_PULSAR_IMAGE
    _ensure_image(client, image)
    container, ports = _run_broker(
        client,
        image,
        network,
        labels,
        kind="pulsar-state",
        alias=STATE_ALIAS,
        extra_ports=(4181,),
        command=["bin/pulsar", "standalone", "-nfw"],
        environment={"PULSAR_STANDALONE_USE_ZOOKEEPER": "1"},
    )
    try:
        broker = _ready_broker(container, ports, network, STATE_ALIAS)
        state_url = f"bk://127.0.0.1:{ports[4181]}"
        _wait_for_state_storage(container, state_url)
        yield StateBroker(broker, state_url, f"bk://{STATE_ALIAS}:4181")
    finally:
        with contextlib.suppress(NotFound):
            container.remove(force=True, v=True)


def _wait_for_state_storage(container: Container, state_url: str) -> None:
    """Until the table service answers (its port opens before it serves)."""
    from pulsarfunc.runtime.state import BookKeeperState, StateError

    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            BookKeeperState(state_url, "pulsarfunc_ready", "probe").counter("probe")
            return
        except StateError as e:
            if time.monotonic() > deadline:
                logs = container.logs(tail=40).decode(errors="replace")
                _unavailable(f"stream storage at {state_url} not ready: {e}\n{logs}")
            time.sleep(1)


@pytest.fixture(scope="session")
def restart_pulsar(pulsar: PulsarBroker) -> Callable[[], None]:
    """Restart the broker container in place and wait until it serves again (same URLs)."""

    def restart() -> None:
        if pulsar.container is None:
            pytest.skip("the broker is external (PULSAR_SERVICE_URL): cannot restart it")
        pulsar.container.restart(timeout=10)
        _wait_for_broker(pulsar.container, pulsar.admin_url)

    return restart


# --- per-test helpers --------------------------------------------------------------------------


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory of unique topic names, prefixed with the test's name by default."""
    default = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-")[:40]

    def make(prefix: str = default) -> str:
        return unique_topic(prefix)

    return make


@pytest.fixture(scope="session")
def pulsarfunc_cache() -> Path:
    """The bootstrap's cache (PULSARFUNC_CACHE): things too slow to redo, kept outside the clone."""
    return Path(os.environ.get("PULSARFUNC_CACHE") or Path.home() / ".cache" / "pulsarfunc")


@pytest.fixture(scope="session")
def pulsar_client_site(pulsarfunc_cache: Path) -> Path:
    """pulsar-client for CPython 3.11 manylinux, to mount into containers and put on PYTHONPATH."""
    return stage_pulsar_client(pulsarfunc_cache / "wheels")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Using the broker needs the mark (checked before any fixture starts), so counts are true."""
    uses_broker = "pulsar" in getattr(item, "fixturenames", ())
    if uses_broker and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.name} uses the `pulsar` fixture: mark it @pytest.mark.integration")


@pytest.fixture(autouse=True)
def _marker_requirements(request: pytest.FixtureRequest) -> None:
    """`integration` brings up the broker and `docker` the engine, even when not asked for."""
    marks = {m.name for m in request.node.iter_markers()}
    if "docker" in marks:
        request.getfixturevalue("docker_client")
    if "integration" in marks:
        request.getfixturevalue("pulsar")


# --- what the run proved -----------------------------------------------------------------------


class _RunSummary:
    """Counts executed integration/docker tests and names the broker, in the terminal summary."""

    def __init__(self) -> None:
        self.executed: dict[str, dict[str, int]] = {"integration": {}, "docker": {}}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for marker, outcomes in self.executed.items():
            if marker in report.keywords:
                outcomes[report.outcome] = outcomes.get(report.outcome, 0) + 1

    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter, config: pytest.Config
    ) -> None:
        tr = terminalreporter
        tr.section("pulsarfunc")
        if _BROKER_KEY in config.stash:
            broker, source, ready_s = config.stash[_BROKER_KEY]
            tr.write_line(
                f"Apache Pulsar tested against: {broker.version} "
                f"(GET /admin/v2/brokers/version; {source}; ready in {ready_s:.1f} s)"
            )
        else:
            tr.write_line("Apache Pulsar tested against: none (no broker was started)")
        for marker, outcomes in self.executed.items():
            detail = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "none"
            tr.write_line(f"{marker} tests executed: {sum(outcomes.values())} ({detail})")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_RunSummary(), "pulsarfunc-run-summary")
