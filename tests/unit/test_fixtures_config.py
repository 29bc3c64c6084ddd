"""The test fixtures' own rules, checked without a broker: readiness, topics, skip-vs-fail."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from pulsar_helpers import broker_not_ready, unique_topic, wait_until_ready

pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).resolve().parents[1]


class _FakeAdmin(BaseHTTPRequestHandler):
    """Answers the two admin paths the readiness check reads, from `routes`."""

    routes: ClassVar[dict[str, object]] = {}

    def do_GET(self) -> None:
        if self.path not in self.routes:
            self.send_error(404)
            return
        body = json.dumps(self.routes[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_admin() -> Iterator[tuple[str, dict[str, object]]]:
    routes: dict[str, object] = {}
    handler = type("Handler", (_FakeAdmin,), {"routes": routes})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()


def test_unique_topic_is_persistent_in_public_default_and_fresh() -> None:
    first, second = unique_topic("orders"), unique_topic("orders")
    assert first.startswith("persistent://public/default/orders-")
    assert len(first) == len("persistent://public/default/orders-") + 8
    assert first != second


def test_broker_is_ready_only_with_standalone_cluster_and_public_default(
    fake_admin: tuple[str, dict[str, object]],
) -> None:
    url, routes = fake_admin
    assert broker_not_ready(url) == "GET /admin/v2/clusters answered HTTP 404"

    routes["/admin/v2/clusters"] = []
    assert broker_not_ready(url) == "GET /admin/v2/clusters returned []"

    routes["/admin/v2/clusters"] = ["standalone"]
    routes["/admin/v2/namespaces/public"] = ["public/functions"]
    assert broker_not_ready(url) == (
        "GET /admin/v2/namespaces/public returned ['public/functions']"
    )

    routes["/admin/v2/namespaces/public"] = ["public/functions", "public/default"]
    assert broker_not_ready(url) is None


def test_waiting_stops_early_when_the_broker_died(
    fake_admin: tuple[str, dict[str, object]],
) -> None:
    url, _ = fake_admin
    with pytest.raises(
        RuntimeError, match="container exited; last check: GET /admin/v2/clusters answered HTTP 404"
    ):
        wait_until_ready(url, timeout_s=60, still_starting=lambda: "container exited")


def test_waiting_times_out_with_the_last_reason(fake_admin: tuple[str, dict[str, object]]) -> None:
    url, routes = fake_admin
    routes["/admin/v2/clusters"] = ["standalone"]
    with pytest.raises(
        TimeoutError,
        match=r"not ready after 0 s; last check: GET /admin/v2/namespaces/public answered HTTP 404",
    ):
        wait_until_ready(url, timeout_s=0, still_starting=lambda: None)


INNER_TESTS = """
import pytest

@pytest.mark.docker
def test_needs_engine():
    pass

@pytest.mark.integration
def test_needs_broker():
    pass

def test_plain():
    pass

def test_unmarked_but_uses_broker(pulsar):
    pass
"""


@pytest.mark.parametrize(
    ("ci", "expected"),
    [
        ("", {"passed": 1, "skipped": 2, "errors": 1}),
        ("true", {"passed": 1, "errors": 3}),
    ],
)
def test_unreachable_engine_skips_locally_but_is_an_error_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, expected: dict[str, int]
) -> None:
    """Run a tiny suite with our conftest against an engine socket that does not exist."""
    pytester.makeconftest((TESTS_DIR / "conftest.py").read_text())
    pytester.makepyfile(pulsar_helpers=(TESTS_DIR / "pulsar_helpers.py").read_text())
    pytester.makeini(
        "[pytest]\naddopts = -p no:cacheprovider\n"
        "markers =\n    integration: needs the broker\n    docker: needs the engine\n"
    )
    pytester.makepyfile(test_inner=INNER_TESTS)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{pytester.path}/no-such-docker.sock")
    monkeypatch.setenv("CI", ci)
    monkeypatch.delenv("PULSAR_SERVICE_URL", raising=False)

    result = pytester.runpytest_subprocess("-ra", "--strict-markers")

    result.assert_outcomes(**expected)
    reason = "CI=true, so this is an error, not a skip" if ci else "SKIPPED"
    result.stdout.fnmatch_lines([f"*{reason}*no Docker engine answers*"])
    result.stdout.fnmatch_lines(
        ["*test_unmarked_but_uses_broker*mark it @pytest.mark.integration*"]
    )
    result.stdout.fnmatch_lines(["integration tests executed: 0 (none)"])
