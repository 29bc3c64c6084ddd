"""Managed state (runtime/state.py): Pulsar's Context calls, in memory, and their failures."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from pulsarfunc import Context
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.discovery import load
from pulsarfunc.runtime.errors import UserError
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.resolve import resolve
from pulsarfunc.runtime.state import MemoryState, StateError, open_state, table_of
from pulsarfunc.testing import run_function

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "pulsar_examples"


def test_memory_state_answers_as_pulsar_s_python_context() -> None:
    state = MemoryState()
    assert state.counter("missing") is None  # Pulsar: None, not 0
    assert state.get("missing") is None
    state.incr("c", 2)
    state.incr("c", -5)
    assert state.counter("c") == -3
    state.put("v", b"\x00\xff")
    assert state.get("v") == b"\x00\xff"
    state.delete("c")
    assert state.counter("c") is None
    assert state.snapshot() == {"v": b"\x00\xff"}


def test_pulsar_s_wordcount_example_counts_in_testing_state() -> None:
    loaded = load(str(EXAMPLES / "wordcount_function.py"))
    handler = inspect_handler(loaded.obj, where=loaded.where)
    result = run_function(handler, ["the cat", "the hat"], state={"the": 10})
    assert result.outputs == ["the cat!", "the hat!"]
    assert result.state == {"the": 12, "cat": 1, "hat": 1}
    assert [r.getMessage() for r in result.logs][:2] == ["The value is 11", "The value is 1"]


def test_put_state_takes_bytes_and_str_and_get_state_gives_bytes() -> None:
    def handler(ctx: Context, text: str) -> str:
        ctx.put_state("raw", b"\x01\x02")
        ctx.put_state("text", text)
        before = ctx.get_state("seen")
        return f"{ctx.get_state('raw')!r} {ctx.get_state('text')!r} {before!r}"

    result = run_function(handler, ["é"], state={"seen": "yes"})
    assert result.outputs == ["b'\\x01\\x02' b'\\xc3\\xa9' b'yes'"]
    assert result.state == {"raw": b"\x01\x02", "text": "é".encode(), "seen": b"yes"}


def test_without_a_state_storage_the_calls_say_what_to_configure() -> None:
    from pulsarfunc.runtime.context import Context as RuntimeContext
    from pulsarfunc.runtime.context import FunctionEnv

    env = FunctionEnv(FunctionConfig(), None, None, lambda name: None)  # type: ignore[arg-type]
    ctx = RuntimeContext(env, None, None)
    with pytest.raises(UserError) as caught:
        ctx.incr_counter("k", 1)
    assert "--state-storage-service-url bk://HOST:4181" in str(caught.value)


def test_the_table_is_named_as_pulsar_s_python_instance_names_it() -> None:
    config = FunctionConfig(tenant="my-team", namespace="ns-1", name="word-count")
    assert table_of(config) == ("my_team_ns_1", "word-count")


def test_the_flag_env_and_shim_reach_the_config() -> None:
    url = "bk://pulsar:4181"
    flag = resolve(["--inputs", "in", "--state-storage-service-url", url], {})
    env = resolve(["--inputs", "in"], {"PULSARFUNC_STATE_STORAGE_SERVICE_URL": url})
    assert flag.state_storage_service_url == env.state_storage_service_url == url


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_state_storage_fails_fast_with_the_reason() -> None:
    config = FunctionConfig(name="f", state_storage_service_url=f"bk://127.0.0.1:{_closed_port()}")
    began = time.monotonic()
    with pytest.raises(StateError) as caught:
        open_state(config)
    assert time.monotonic() - began < 10
    assert "cannot reach the state storage bk://127.0.0.1:" in str(caught.value)
    assert "Connection refused" in str(caught.value)


def test_a_bad_state_url_is_named() -> None:
    with pytest.raises(StateError, match="give it as bk://HOST:PORT"):
        open_state(FunctionConfig(name="f", state_storage_service_url="http://x"))


def test_without_a_url_there_is_no_store() -> None:
    assert open_state(FunctionConfig(name="f")) is None


class FailingStore(MemoryState):
    """A state storage that fails its increments (as a BookKeeper call that gave up)."""

    def incr(self, key: str, amount: int) -> None:
        raise StateError(f"incr_counter({key!r}) in the state storage failed: UNAVAILABLE")


def test_a_state_failure_in_a_message_fails_that_message_and_acks_nothing() -> None:
    import threading

    from fake_broker import FakeBroker, FakeMessage
    from test_instance import make_config
    from waiting import wait_for

    from pulsarfunc.runtime.instance import Instance

    def counts(ctx: Context, word: str) -> str:
        ctx.incr_counter(word, 1)
        return word

    broker = FakeBroker()
    broker.feed(FakeMessage(b"w"))
    config = make_config(redelivery_delay_ms=60_000)
    instance = Instance(config, inspect_handler(counts), broker, state=FailingStore())
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_for(lambda: len(broker.sources[0].nacked) >= 1)  # retried, by the broker here
    instance.stop()
    thread.join(10)
    assert broker.sources[0].acked == []
    assert broker.sent == {}


def test_the_counter_example() -> None:
    loaded = load(str(Path(__file__).resolve().parents[2] / "examples" / "counter"))
    result = run_function(loaded.obj, ["a b a"], state={"a": 10})
    assert result.outputs == ["a=11 b=1 a=12"]
    assert result.state == {"a": 12, "b": 1, "last-line": b"a b a"}
