"""A sync function's instance loads nothing it does not use: asyncio (4 MB resident with ssl),
prometheus_client (5 MB, only with --metrics-port) and yaml (only with --function-config).
Checked in a fresh interpreter, after a real instance processed a message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).parent

_PROGRAM = """
import sys, threading, time
sys.path.insert(0, {unit!r})
import pulsarfunc.cli, pulsarfunc.runtime.start, pulsarfunc.runtime.broker
from fake_broker import FakeBroker, FakeMessage
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance
from pulsarfunc.runtime.resolve import resolve

{handler}

config = resolve(["--inputs", "in", "--output", "out"], {{}})
broker = FakeBroker()
broker.feed(FakeMessage(b"x"))
instance = Instance(config, inspect_handler(handler), broker)
thread = threading.Thread(target=instance.run, daemon=True)
thread.start()
deadline = time.monotonic() + 10
while not broker.sources[0].acked and time.monotonic() < deadline:
    time.sleep(0.01)
instance.stop()
thread.join(10)
assert broker.sources[0].acked, "the message was not processed"
print(",".join(m for m in ("asyncio", "prometheus_client", "yaml") if m in sys.modules))
"""


def loaded(handler: str) -> str:
    program = _PROGRAM.format(unit=str(UNIT), handler=handler)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_sync_function_runs_without_asyncio_prometheus_or_yaml() -> None:
    assert loaded("def handler(data: bytes) -> bytes:\n    return data") == ""


def test_an_async_function_loads_asyncio_and_only_that() -> None:
    """The guard above can fail: the same program sees asyncio when the handler needs it."""
    assert loaded("async def handler(data: bytes) -> bytes:\n    return data") == "asyncio"
