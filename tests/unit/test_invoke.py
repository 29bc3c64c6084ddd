"""The one invocation core: every accepted handler form gives the same outputs and errors through
`pulsarfunc.testing.run_function` and through the runtime's engines (on the fake broker)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pulsar
import pytest
from fake_broker import FakeBroker, FakeMessage
from waiting import wait_for

from pulsarfunc import Context, current_context
from pulsarfunc.runtime.codec import AUTO
from pulsarfunc.runtime.config import (
    FunctionConfig,
    InputSpec,
    ProcessingGuarantee,
    SubscriptionType,
)
from pulsarfunc.runtime.context import Cursor, FunctionEnv
from pulsarfunc.runtime.errors import HandlerCancelledError
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance
from pulsarfunc.runtime.invoke import Invoker
from pulsarfunc.testing import Message, run_function

IN = "persistent://public/default/in"
OUT = "persistent://public/default/out"
DLQ = "persistent://public/default/dlq"


# --- the corpus: every accepted form, each with inputs that succeed, give nothing and fail -------


def plain(text: str) -> str | None:
    if text == "none":
        return None
    if text == "boom":
        raise ValueError("boom!")
    return text.upper()


def with_context(ctx: Context, text: str) -> str:
    if text == "boom":
        raise KeyError(text)
    return f"{ctx.message_key}:{text}:{ctx.user_config_value('suffix')}"


def context_only(ctx: Context) -> str:
    return f"{ctx.function_name}@{ctx.message_topic}"


def no_arguments() -> str:
    return "tick"


def words(text: str) -> Iterator[str | None]:
    if text == "boom":
        raise RuntimeError("no words")
    for word in text.split():
        yield None if word == "none" else word


async def async_plain(text: str) -> str | None:
    await asyncio.sleep(0)
    if text == "boom":
        raise ValueError("async boom")
    return None if text == "none" else text[::-1]


async def async_context(ctx: Context, text: str) -> str:
    await asyncio.sleep(0)
    assert current_context() is ctx
    return f"{ctx.message_key}={text}"


async def async_words(text: str) -> AsyncIterator[str | None]:
    for word in text.split():
        await asyncio.sleep(0)
        if word == "boom":
            raise LookupError("half way")
        yield None if word == "none" else word


async def async_cancels(text: str) -> str:
    if text == "boom":
        raise asyncio.CancelledError  # e.g. a cancelled inner task that propagated
    return text


class Shouter(pulsar.Function):  # type: ignore[misc]  # pulsar-client ships no type hints
    def process(self, input: Any, context: Any) -> Any:
        if input == "boom":
            raise ValueError("sdk boom")
        return f"{input}!" if input != "none" else None


def process(input):  # type: ignore[no-untyped-def]  # Pulsar's native form, as users write it
    return None if input == "none" else input + "?"


class Doubler:
    def __call__(self, doc: dict[str, int]) -> dict[str, int]:
        return {k: v * 2 for k, v in doc.items()}


class Bound:
    def __init__(self) -> None:
        self.prefix = "b:"

    def handle(self, text: str) -> str:
        return self.prefix + text


def half_way(text: str) -> Iterator[str]:
    """A generator that fails after its first output: no output of it counts."""
    yield text
    if text == "boom":
        raise ValueError("half way")
    yield text + "+"


def half_way_with_context(ctx: Context, text: str) -> Iterator[str]:
    yield from half_way(text)


def cancels(text: str) -> str:
    if text == "boom":
        raise asyncio.CancelledError  # from a sync handler too: a failure of its message
    return text


async def _later(text: str) -> str:
    await asyncio.sleep(0)
    return f"awaited {text}"


def returns_coroutine(text: str) -> Coroutine[Any, Any, str]:
    """A sync wrapper around async code: the runtime awaits what it returns."""
    return _later(text)


def via_current_context(text: str) -> str:
    return f"{current_context().message_key}/{text}"


def unencodable(text: str) -> Any:
    return {1, 2} if text == "boom" else text


@dataclass(frozen=True)
class Case:
    name: str
    handler: Callable[[], object]  # made fresh per run: forms with state stay apart
    inputs: tuple[Any, ...] = ("a", "none", "boom", "b c")


CORPUS = [
    Case("sync: input", lambda: plain),
    Case("sync: context and input", lambda: with_context),
    Case("sync: context only", lambda: context_only, ("a", "b")),
    Case("sync: no arguments", lambda: no_arguments, ("a", "b")),
    Case("sync: generator", lambda: words, ("a b", "none x", "boom", "")),
    Case("sync: generator failing half-way", lambda: half_way),
    Case("sync: generator failing half-way, Context", lambda: half_way_with_context),
    Case("sync: raises CancelledError", lambda: cancels),
    Case("async: input", lambda: async_plain),
    Case("async: context and input", lambda: async_context, ("a", "b")),
    Case("async: generator", lambda: async_words, ("a b", "none x", "a boom b")),
    Case("async: raises CancelledError", lambda: async_cancels, ("a", "boom", "b")),
    Case("pulsar.Function class", lambda: Shouter),
    Case("pulsar.Function instance", lambda: Shouter()),
    Case("Pulsar native process(input)", lambda: process, ("a", "none", "b")),
    Case("callable object, JSON in and out", lambda: Doubler(), ({"x": 1}, {"y": 2}, "bad")),
    Case("bound method", lambda: Bound().handle, ("a", "b")),
    Case("sync returning a coroutine", lambda: returns_coroutine, ("a", "b")),
    Case("current_context() without a parameter", lambda: via_current_context, ("a", "b")),
    Case("an output the codec refuses", lambda: unencodable, ("a", "boom", "b")),
]

ENGINES: dict[str, dict[str, Any]] = {
    "default": {},  # batch engine for sync handlers, async engine for async ones
    "three threads": {"concurrency": 3},
    "in order": {"retain_ordering": True},  # the ordered engine (async handlers too)
    "key lanes": {"subscription_type": SubscriptionType.KEY_SHARED, "concurrency": 2},
}

Outcome = tuple[list[bytes], str | None, str | None]  # payloads, error type, error message


def _config(**fields: Any) -> FunctionConfig:
    return FunctionConfig(
        name="fn",
        inputs=(InputSpec(IN),),
        output=OUT,
        user_config={"suffix": "!"},
        **fields,
    )


def _key(i: int) -> str:
    return f"k{i % 2}"


def through_testing(case: Case, **fields: Any) -> list[Outcome]:
    inputs = [Message(value, key=_key(i), topic=IN) for i, value in enumerate(case.inputs)]
    result = run_function(case.handler(), inputs, config=_config(**fields), raise_errors=False)
    return [
        (
            call.payloads if call.error is None else [],
            None if call.error is None else type(call.error).__name__,
            None if call.error is None else str(call.error),
        )
        for call in result.calls
    ]


def through_runtime(case: Case, **fields: Any) -> list[Outcome]:
    broker = FakeBroker()
    msgs = [
        FakeMessage(AUTO.encode(value), key=_key(i), topic=IN)
        for i, value in enumerate(case.inputs)
    ]
    broker.feed(*msgs)
    config = _config(max_message_retries=0, dead_letter_topic=DLQ, **fields)
    instance = Instance(config, inspect_handler(case.handler()), broker)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(broker.sources[0].acked) == len(msgs))
    finally:
        instance.stop()
        thread.join(10)
    assert not thread.is_alive()
    index = {base64.b64encode(m.mid.serialize()).decode(): i for i, m in enumerate(msgs)}
    outcomes: list[Outcome] = [([], None, None) for _ in msgs]
    for out in broker.sent.get(OUT, []):
        outcomes[index[dict(out.properties or {})["__pfn_input_msg_id__"]]][0].append(out.payload)
    for letter in broker.sent.get(DLQ, []):
        props = dict(letter.properties or {})
        i = next(i for i, m in enumerate(msgs) if str(m.mid) == props["ORIGIN_MESSAGE_ID"])
        outcomes[i] = ([], props["pulsarfunc.error.type"], props["pulsarfunc.error.message"])
    return outcomes


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_every_handler_form_gives_the_same_outputs_and_errors_in_testing_and_runtime(
    case: Case, engine: str
) -> None:
    expected = through_testing(case)
    assert through_runtime(case, **ENGINES[engine]) == expected
    assert any(payloads for payloads, _, _ in expected)  # the corpus case does produce output


def test_the_corpus_has_failures_and_no_outputs_too() -> None:
    outcomes = [o for case in CORPUS for o in through_testing(case)]
    assert any(error for _, error, _ in outcomes)
    assert any(not payloads and error is None for payloads, error, _ in outcomes)


def test_a_timeout_is_the_same_failure_in_testing_and_runtime() -> None:
    def slow(text: str) -> str:
        if text == "slow":
            time.sleep(0.5)
        return text

    case = Case("timeout", lambda: slow, ("a", "slow", "b"))
    expected = through_testing(case, timeout_ms=100)
    assert expected[1][1] == "TimeoutError"
    assert through_runtime(case, timeout_ms=100) == expected


# --- the invocation core's own rules ------------------------------------------------------------


def _context() -> Context:
    env = FunctionEnv(FunctionConfig(name="fn"), None, None, None)  # type: ignore[arg-type]
    return Context(env, FakeMessage(b"x", key="k"))


def test_a_cancelled_error_raised_by_an_async_handler_fails_its_message() -> None:
    async def cancels(text: str) -> str:
        raise asyncio.CancelledError

    invoker = Invoker(inspect_handler(cancels))
    try:
        with pytest.raises(HandlerCancelledError, match=r"asyncio\.CancelledError"):
            invoker.call(_context(), "x")
    finally:
        invoker.release_thread()


def test_call_binds_the_context_for_a_generators_whole_iteration() -> None:
    def keys(text: str) -> Iterator[str]:
        yield current_context().message_key or ""
        yield current_context().message_key or ""

    assert Invoker(inspect_handler(keys)).call(_context(), "x") == ["k", "k"]


def test_call_each_gives_what_decode_and_call_give_per_message() -> None:
    """The batch engines' hot loop against the plain path, message by message."""

    def handler(doc: dict[str, int]) -> Iterator[dict[str, int]]:
        if "bad" in doc:
            raise ValueError("bad")
        yield doc
        yield {"n": len(doc)}

    spec = inspect_handler(handler)
    invoker = Invoker(spec)
    msgs = [FakeMessage(b'{"a": 1}'), FakeMessage(b"{nope"), FakeMessage(b'{"bad": 1}')]
    env = FunctionEnv(FunctionConfig(name="fn"), None, None, None)  # type: ignore[arg-type]
    plain: list[tuple[int, Any]] = []
    plain_errors: list[tuple[int, str]] = []
    for i, msg in enumerate(msgs):
        try:
            value = invoker.decode(msg)
            plain += [(i, out) for out in invoker.call(Context(env, msg), value)]
        except Exception as exc:
            plain_errors.append((i, repr(exc)))
    fast: list[tuple[int, Any]] = []
    fast_errors: list[tuple[int, str]] = []
    cursor = Cursor(env)
    invoker.call_each(
        msgs,
        cursor,
        lambda i, msg, out: fast.append((i, out)),
        lambda i, exc: fast_errors.append((i, repr(exc))),
    )
    assert (fast, fast_errors) == (plain, plain_errors)
    assert len(plain) == 2
    assert len(plain_errors) == 2


def test_call_each_stops_at_the_first_failure_when_asked() -> None:
    seen: list[str] = []

    def record(text: str) -> str:
        seen.append(text)
        if text == "b":
            raise ValueError(text)
        return text

    env = FunctionEnv(FunctionConfig(name="fn"), None, None, None)  # type: ignore[arg-type]
    failed: list[int] = []
    Invoker(inspect_handler(record)).call_each(
        [FakeMessage(p) for p in (b"a", b"b", b"c")],
        Cursor(env),
        lambda i, msg, out: None,
        lambda i, exc: failed.append(i),
        stop_at_failure=True,
    )
    assert (seen, failed) == (["a", "b"], [1])


def test_a_configured_serde_wins_over_the_annotation_on_its_topic_only() -> None:
    def handler(data: bytes) -> bytes:
        return data

    config = FunctionConfig(
        name="fn",
        inputs=(InputSpec(IN, serde_class_name="serde.IdentitySerDe"), InputSpec("other")),
    )
    invoker = Invoker.for_config(inspect_handler(handler), config)
    assert invoker.decode(FakeMessage(b"text", topic=IN + "-partition-2")) == "text"
    assert invoker.decode(FakeMessage(b"text", topic="other")) == b"text"


def _acked_by_runtime(handler: Callable[..., Any], guarantee: ProcessingGuarantee) -> list[int]:
    broker = FakeBroker()
    msgs = [FakeMessage(str(n).encode()) for n in range(4)]
    broker.feed(*msgs)
    instance = Instance(_config(processing_guarantee=guarantee), inspect_handler(handler), broker)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_for(lambda: len(broker.sent.get(OUT, [])) == 4)
    instance.stop()
    thread.join(10)
    return sorted(msgs.index(m) for m in broker.sources[0].acked)


@pytest.mark.parametrize("guarantee", [ProcessingGuarantee.MANUAL, ProcessingGuarantee.ATMOST_ONCE])
def test_acknowledgements_are_the_same_in_testing_and_runtime(
    guarantee: ProcessingGuarantee,
) -> None:
    """What run_function reports acknowledged is what the runtime acknowledges."""

    def ack_odd(ctx: Context, n: int) -> int:
        if n % 2:
            ctx.ack()
        return n

    result = run_function(ack_odd, [0, 1, 2, 3], config=_config(processing_guarantee=guarantee))
    assert _acked_by_runtime(ack_odd, guarantee) == result.acked
