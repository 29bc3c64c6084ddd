"""Batch handlers on the real Apache Pulsar broker: per-item failures dead-letter exactly those
items, the rest reach the output and are acknowledged (backlog 0)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pulsar_helpers import PulsarBroker, produce, subscribe_first, unique_topic
from runtime_harness import config_for, running, wait_backlog

from pulsarfunc import Batch, BatchItemFailures

pytestmark = pytest.mark.integration

PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "batch-upper"


class Poisoned:
    """Upper-cases a batch; a `poison` item fails in its place, a `bad` one by
    BatchItemFailures (the whole batch then says which items failed and gives the outputs)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, items: Batch[str]) -> list[str | Exception]:
        with self.lock:
            self.sizes.append(len(items))
        outs: list[str | Exception] = [
            ValueError(f"cannot digest {i}") if i.startswith("poison") else i.upper() for i in items
        ]
        bad = {n: KeyError(i) for n, i in enumerate(items) if i.startswith("bad")}
        if bad:
            raise BatchItemFailures(bad, outputs=outs)
        return outs


def test_a_batch_handler_dead_letters_exactly_its_failed_items(pulsar: PulsarBroker) -> None:
    src, out, dlq = unique_topic("in"), unique_topic("out"), unique_topic("dlq")
    payloads = [
        f"poison-{i}" if i % 10 == 3 else f"bad-{i}" if i % 25 == 7 else f"m{i}" for i in range(300)
    ]
    failed = {p for p in payloads if not p.startswith("m")}
    handler = Poisoned()
    config = config_for(
        pulsar.service_url,
        src,
        output=out,
        max_message_retries=1,
        dead_letter_topic=dlq,
        redelivery_delay_ms=100,
    )
    produce(pulsar.service_url, src, [p.encode() for p in payloads])  # a backlog: full batches
    with (
        subscribe_first(pulsar.service_url, dlq) as dead,
        subscribe_first(pulsar.service_url, out) as sink,
        running(handler, config),
    ):
        outputs = sink.collect(300 - len(failed), timeout_s=60)
        letters = dead.collect(len(failed), timeout_s=60)
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
        with pytest.raises(TimeoutError):  # nothing more: no item twice, no failed one output
            dead.collect(1, timeout_s=2)
    assert sorted(r.data.decode() for r in outputs) == sorted(
        p.upper() for p in payloads if p not in failed
    )
    assert sorted(r.data.decode() for r in letters) == sorted(failed)
    reasons = {r.data.decode(): r.properties for r in letters}
    assert reasons["poison-3"]["pulsarfunc.error.message"] == "cannot digest poison-3"
    assert reasons["poison-3"]["pulsarfunc.attempts"] == "2"  # tried, retried once, then here
    assert reasons["bad-7"]["pulsarfunc.error.type"] == "KeyError"
    assert max(handler.sizes) > 1  # called with batches, not one message at a time
    assert max(handler.sizes) <= 100


def test_the_batch_upper_example_runs_from_the_command_line(pulsar: PulsarBroker) -> None:
    src, out, dlq = unique_topic("in"), unique_topic("out"), unique_topic("dlq")
    produce(pulsar.service_url, src, [b"a", b" ", b"b", b"c"])
    argv = [
        PULSARFUNC, "run", str(EXAMPLE), "--service-url", pulsar.service_url,
        "--inputs", src, "--output", out, "--subscription-position", "Earliest",
        "--max-message-retries", "0", "--dead-letter-topic", dlq, "--batch-max-size", "3",
    ]  # fmt: skip
    with (
        subscribe_first(pulsar.service_url, dlq) as dead,
        subscribe_first(pulsar.service_url, out) as sink,
    ):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            outputs = sink.collect(3, timeout_s=60)
            letters = dead.collect(1, timeout_s=30)
        finally:
            proc.terminate()
            log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, log
    assert sorted(r.data for r in outputs) == [b"A", b"B", b"C"]
    assert [r.data for r in letters] == [b" "]
    assert "batch handler" in log
    assert "up to 3 inputs a call" in log  # the flag sets the size of a Batch[T] handler
