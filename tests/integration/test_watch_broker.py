"""`pulsarfunc run DIR --watch` through the real command line, against the real broker: a saved
edit swaps the handler with no input lost or processed twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pulsar_helpers import PulsarBroker, Received, produce, subscribe_first, unique_topic

pytestmark = pytest.mark.integration

PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))
# The first handler takes 20 ms a message, so the swap comes while the first inputs are still
# being processed (300 of them: 6 s), with messages in flight.
V1 = "import time\ndef handler(text: str) -> str:\n    time.sleep(0.02)\n    return 'v1:' + text\n"
BROKEN = "def handler(text: str) -> str\n    return 'v1:' + text\n"
V2 = "async def handler(text: str) -> str:  # now async: another engine\n    return 'v2:' + text\n"


def wait_for_log(log: Path, text: str, proc: subprocess.Popen[bytes], *, after: int = 0) -> int:
    """Wait until `text` appears in the log after offset `after`; returns the offset past it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        found = content.find(text, after)
        if found >= 0:
            return found + len(text)
        assert proc.poll() is None, f"pulsarfunc run exited {proc.returncode}:\n{content}"
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log within 60 s:\n{log.read_text()}")


def test_an_edit_under_watch_swaps_the_handler_losing_and_repeating_nothing(
    pulsar: PulsarBroker, tmp_path: Path
) -> None:
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(V1)
    src, out = unique_topic("in"), unique_topic("out")
    before, after = [f"a{i}" for i in range(300)], [f"b{i}" for i in range(300)]
    log = tmp_path / "run.log"
    args = [
        PULSARFUNC, "run", str(fn), "--watch", "--service-url", pulsar.service_url,
        "--inputs", src, "--output", out, "--subscription-position", "EARLIEST",
    ]  # fmt: skip
    with subscribe_first(pulsar.service_url, out) as sink, log.open("wb") as sink_log:
        proc = subprocess.Popen(args, stdout=sink_log, stderr=subprocess.STDOUT)
        try:
            at = wait_for_log(log, "watching", proc)
            produce(pulsar.service_url, src, [m.encode() for m in before])
            got: list[Received] = sink.collect(20, timeout_s=60)  # the first handler runs
            # A broken save: check's error is printed, the running handler goes on.
            (fn / "handler.py").write_text(BROKEN)
            at = wait_for_log(log, "syntax error", proc, after=at)
            at = wait_for_log(log, "the running handler is kept", proc, after=at)
            # The fixed save swaps the handler while the first inputs are still being processed.
            (fn / "handler.py").write_text(V2)
            wait_for_log(log, "swapped the handler", proc, after=at)
            produce(pulsar.service_url, src, [m.encode() for m in after])
            got += sink.collect(len(before) + len(after) - len(got), timeout_s=60)
            try:  # nothing more comes: no input was processed twice
                extra = sink.collect(1, timeout_s=3)
            except TimeoutError:
                extra = []
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert extra == [], f"duplicate outputs: {extra}"
    outputs = [r.data.decode() for r in got]
    inputs = [o.partition(":")[2] for o in outputs]
    assert sorted(inputs) == sorted(before + after)  # each input exactly one output
    form = {o.partition(":")[2]: o.partition(":")[0] for o in outputs}
    assert {form[m] for m in after} == {"v2"}  # sent after the swap: the new handler
    assert all(form[m] == "v1" for m in before[:20])  # the old one before the edit
    assert form[before[-1]] == "v2"  # the swap came mid-stream
    # one consumer, in order: once an input met the new handler, every later one did too
    forms = [form[m] for m in before + after]
    assert forms == sorted(forms)
    assert "pulsarfunc: error:" in text  # check's own error line for the broken save
    assert "hint: fix that line" in text
    assert "Traceback" not in text
    print(f"inputs sent before the edit handled by v1: {forms.count('v1')} of {len(before)}")
