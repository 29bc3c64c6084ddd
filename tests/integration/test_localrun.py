"""LocalRun through the real command line: `pulsarfunc run PATH ...` against the real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from pulsar_helpers import PulsarBroker, produce, subscribe_first, unique_topic

pytestmark = pytest.mark.integration

FNS = Path(__file__).parent / "fns"
PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))


@contextmanager
def localrun(ref: str, args: Sequence[str], *, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`pulsarfunc run ref args...`; killed at exit if the test did not stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PULSARFUNC, "run", ref, *args], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def flags(pulsar: PulsarBroker, src: str, out: str, *extra: str) -> list[str]:
    return [
        "--service-url", pulsar.service_url, "--inputs", src, "--output", out,
        "--subscription-position", "EARLIEST", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("ref", "sent", "expected"),
    [
        ("exclaim.py", b"hi", b"hi!"),
        ("exclaim.py:handler", b"hi", b"hi!"),
        ("pulsar_class.py", b"hi", b"hi?"),  # a pulsar.Function subclass, unchanged
        ("pulsar_native.py", b"hi", b"hi!"),  # Pulsar's native process(input)
        ("pulsar_native.py", b"41", b"41!"),  # ...whose serde turns "41" into an int: + "!" fails
    ],
)
def test_localrun_runs_each_form_unchanged(
    pulsar: PulsarBroker, tmp_path: Path, ref: str, sent: bytes, expected: bytes
) -> None:
    src, out = unique_topic("in"), unique_topic("out")
    extra = ["--user-config", json.dumps({"suffix": "?"})]
    if sent == b"41":
        dlq = unique_topic("dlq")
        extra += ["--max-message-retries", "0", "--dead-letter-topic", dlq]
        with (
            subscribe_first(pulsar.service_url, dlq) as dead,
            localrun(str(FNS / ref), flags(pulsar, src, out, *extra), log=tmp_path / "log") as proc,
        ):
            produce(pulsar.service_url, src, [sent])
            (letter,) = dead.collect(1, timeout_s=30)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        # Exactly what Pulsar's own instance does: IdentitySerDe gives 41, and 41 + "!" fails.
        assert letter.properties["pulsarfunc.error.type"] == "TypeError"
        return
    with (
        subscribe_first(pulsar.service_url, out) as sink,
        localrun(str(FNS / ref), flags(pulsar, src, out, *extra), log=tmp_path / "log") as proc,
    ):
        produce(pulsar.service_url, src, [sent])
        (got,) = sink.collect(1, timeout_s=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, (tmp_path / "log").read_text()
    assert got.data == expected


def test_sigterm_drains_in_flight_work_and_loses_nothing(
    pulsar: PulsarBroker, tmp_path: Path
) -> None:
    src, out = unique_topic("in"), unique_topic("out")
    total = 3000
    produce(pulsar.service_url, src, [f"m{i}".encode() for i in range(total)])
    # A small receiver queue keeps most of the backlog in the broker when SIGTERM comes.
    args = flags(pulsar, src, out, "--concurrency", "4", "--receiver-queue-size", "100")
    with subscribe_first(pulsar.service_url, out) as sink:
        with localrun(str(FNS / "slow.py"), args, log=tmp_path / "first.log") as proc:
            first = sink.collect(300, timeout_s=60)  # mid-stream
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            drain_s = time.monotonic() - signalled
        assert code == 0, (tmp_path / "first.log").read_text()
        assert drain_s < 10
        seen = {r.data for r in first}
        received = len(first)
        with localrun(str(FNS / "slow.py"), args, log=tmp_path / "second.log") as proc:
            while len(seen) < total:
                batch = sink.collect(1, timeout_s=60)
                received += len(batch)
                seen.update(r.data for r in batch)
            second_log = tmp_path / "second.log"
            assert "consuming" in second_log.read_text()  # it ran: work was left after the stop
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, second_log.read_text()
    assert seen == {f"M{i}".encode() for i in range(total)}
    print(f"SIGTERM drain: {drain_s:.2f} s; duplicates after restart: {received - total}")


def test_bad_handler_fails_before_connecting_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def handler(a, b, c):\n    return a\n")
    # The service URL points nowhere: the handler must be rejected before any connection.
    result = subprocess.run(
        [PULSARFUNC, "run", str(bad), "--inputs", "t", "--service-url", "pulsar://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "handler(a, b, c)" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_prints_the_form_it_found() -> None:
    ok = subprocess.run(
        [PULSARFUNC, "check", str(FNS / "pulsar_class.py")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert "ExclamationFunction" in ok.stdout
