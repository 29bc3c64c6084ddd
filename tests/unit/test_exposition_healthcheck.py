"""The image's HEALTHCHECK: find the function's process, read its port, ask its /readyz."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.exposition import MetricsServer
from pulsarfunc.runtime.healthcheck import check, main
from pulsarfunc.runtime.metrics import Metrics

PROGRAM = "/opt/pulsarfunc/entrypoint.py"


class Health:
    alive = True
    ready = True


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(FunctionConfig(metrics_port=0), Metrics(), host="127.0.0.1")
    health = Health()
    srv.watch(health)
    yield srv
    srv.close()


def fake_proc(root: Path, pid: int, argv: list[str], env: dict[str, str]) -> Path:
    entry = root / str(pid)
    entry.mkdir(parents=True)
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (entry / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
    return root


def test_healthy_when_the_function_found_by_its_program_is_ready(
    tmp_path: Path, server: MetricsServer
) -> None:
    fake_proc(tmp_path, 7, ["sleep", "100"], {})
    fake_proc(
        tmp_path,
        1,
        ["python3", PROGRAM, "--inputs", "in"],
        {"PULSARFUNC_METRICS_PORT": str(server.port)},
    )
    healthy, seen = check(PROGRAM, tmp_path)
    assert healthy, seen
    assert seen.endswith("/readyz: 200 ready")


def test_a_flag_wins_over_the_environment_as_in_the_runtime(
    tmp_path: Path, server: MetricsServer
) -> None:
    argv = ["python3", PROGRAM, "--metrics-port", str(server.port)]
    fake_proc(tmp_path, 1, argv, {"PULSARFUNC_METRICS_PORT": "1"})
    assert check(PROGRAM, tmp_path)[0]


def test_not_ready_is_unhealthy(tmp_path: Path, server: MetricsServer) -> None:
    class NotReady:
        alive = True
        ready = False

    server.watch(NotReady())
    fake_proc(tmp_path, 1, ["python3", PROGRAM, "--metrics-port", str(server.port)], {})
    assert check(PROGRAM, tmp_path) == (
        False,
        f"http://127.0.0.1:{server.port}/readyz: 503 not ready",
    )


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["python3", "other.py"], {}, f"no process runs {PROGRAM}"),
        (["python3", PROGRAM], {}, "--metrics-port is off"),
        (["python3", PROGRAM, "--metrics-port", "0"], {}, "is 0 (a random port)"),
        (
            ["python3", PROGRAM, "--metrics-port", "x"],
            {},
            "cannot read the function's configuration",
        ),
    ],
)
def test_unhealthy_with_the_reason(
    tmp_path: Path, argv: list[str], env: dict[str, str], says: str
) -> None:
    fake_proc(tmp_path, 1, argv, env)
    healthy, seen = check(PROGRAM, tmp_path)
    assert not healthy
    assert says in seen


def test_nothing_listening_is_unhealthy(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        fake_proc(tmp_path, 1, ["python3", PROGRAM, "--metrics-port", str(port)], {})
        healthy, seen = check(PROGRAM, tmp_path)
    assert not healthy
    assert seen.startswith(f"http://127.0.0.1:{port}/readyz: ")


def test_main_needs_the_program(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err
