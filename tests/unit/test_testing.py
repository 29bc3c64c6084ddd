"""pulsarfunc.testing: handlers run as the runtime runs them, with captures instead of a broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from pulsarfunc import Context, current_context
from pulsarfunc.runtime.config import FunctionConfig, InputSpec, ProcessingGuarantee
from pulsarfunc.runtime.errors import PayloadError
from pulsarfunc.testing import Message, run_function


def shout(text: str) -> str:
    return text.upper() + "!"


def test_outputs_of_a_plain_function() -> None:
    result = run_function(shout, ["hello", "pulsar"])
    assert result.outputs == ["HELLO!", "PULSAR!"]
    assert result.payloads == [b"HELLO!", b"PULSAR!"]
    assert result.acked == [0, 1]  # at-least-once: acked after success
    assert result.errors == []


def greet(context: Context, name: str) -> str:
    greeting = context.user_config_value("greeting", "hello")
    context.record_metric("name-length", len(name))
    context.get_logger().info("greeting %s", name)
    return f"{greeting} {name}"


def test_user_config_metrics_and_logs() -> None:
    result = run_function(greet, ["ada", "grace"], user_config={"greeting": "hi"})
    assert result.outputs == ["hi ada", "hi grace"]
    assert result.metrics == {"name-length": [3.0, 5.0]}
    assert [r.getMessage() for r in result.logs] == ["greeting ada", "greeting grace"]
    assert result.config.name == "greet"  # derived from the handler, as the runtime does


@dataclass
class Order:
    id: int
    total: float


def route(context: Context, order: Order) -> None:
    topic = "big-orders" if order.total > 100 else "small-orders"
    context.publish(topic, {"id": order.id}, properties={"source": "route"}, key=str(order.id))


def test_publishes_are_captured_with_their_call() -> None:
    result = run_function(route, [{"id": 1, "total": 5.0}, Order(2, 500.0)])
    assert result.outputs == []
    assert [(p.topic, p.json(), p.key, p.call) for p in result.published] == [
        ("small-orders", {"id": 1}, "1", 0),
        ("big-orders", {"id": 2}, "2", 1),
    ]
    assert result.published[0].properties == {"source": "route"}
    assert result.calls[1].input == Order(2, 500.0)  # decoded into the annotated dataclass


def words(text: str) -> Iterator[str]:
    yield from text.split()


async def slow_upper(text: str) -> str:
    await asyncio.sleep(0)
    return text.upper()


async def letters(text: str) -> AsyncIterator[str]:
    for ch in text:
        yield ch


def test_generators_and_async_handlers() -> None:
    assert run_function(words, ["a b", "c"]).outputs == ["a", "b", "c"]
    assert run_function(slow_upper, ["x", "y"]).outputs == ["X", "Y"]
    assert run_function(letters, ["ab"]).outputs == ["a", "b"]


def test_async_handlers_also_run_from_inside_an_event_loop() -> None:
    async def an_async_test() -> list[str]:
        return run_function(slow_upper, ["z"]).outputs

    assert asyncio.run(an_async_test()) == ["Z"]


def test_a_handler_error_is_raised_as_it_is() -> None:
    def picky(text: str) -> str:
        if text == "bad":
            raise ValueError("no bad input")
        return text

    with pytest.raises(ValueError, match="no bad input"):
        run_function(picky, ["ok", "bad", "never reached"])


def test_raise_errors_false_records_the_error_and_goes_on() -> None:
    def picky(text: str) -> str:
        if text == "bad":
            raise ValueError("no bad input")
        return text

    result = run_function(picky, ["ok", "bad", "fine"], raise_errors=False)
    assert result.outputs == ["ok", "fine"]
    assert [type(e) for e in result.errors] == [ValueError]
    assert result.acked == [0, 2]  # the failed input is not acknowledged (it would be retried)


def test_manual_guarantee_acks_only_on_context_ack() -> None:
    def ack_even(context: Context, n: int) -> None:
        if n % 2 == 0:
            context.ack()

    config = FunctionConfig(processing_guarantee=ProcessingGuarantee.MANUAL)
    assert run_function(ack_even, [1, 2, 3, 4], config=config).acked == [1, 3]


def test_message_gives_key_properties_topic_and_current_context_works() -> None:
    seen: list[tuple[str | None, dict[str, str], str, str]] = []

    def inspect_it(data: bytes) -> None:
        ctx = current_context()
        seen.append(
            (ctx.message_key, ctx.message_properties, ctx.message_topic, str(ctx.message_id))
        )

    msg = Message(b"raw", key="k1", properties={"p": "v"}, topic="persistent://t/n/orders")
    run_function(inspect_it, [msg, b"plain"])
    assert seen == [
        ("k1", {"p": "v"}, "persistent://t/n/orders", "(1,0,-1,-1)"),
        (None, {}, "persistent://public/default/input", "(1,1,-1,-1)"),
    ]


def test_an_output_the_runtime_could_not_send_fails_here_too() -> None:
    def wrong(text: str) -> str:
        return 42  # type: ignore[return-value]  # the point of the test

    with pytest.raises(PayloadError, match="not a str"):
        run_function(wrong, ["x"])


def test_an_input_the_handler_cannot_decode_fails_as_it_would_in_the_runtime() -> None:
    def takes_order(order: Order) -> None:
        del order

    with pytest.raises(PayloadError, match="not valid JSON"):
        run_function(takes_order, [b"not json"])


class PulsarStyle:
    """Pulsar's SDK form (duck-typed), called process(input, context) with IdentitySerDe."""

    def process(self, value: object, context: Context) -> object:
        return f"{type(value).__name__}:{value}:{context.get_user_config_value('tag')}"


def test_pulsar_sdk_form_gets_pulsars_default_serde() -> None:
    result = run_function(PulsarStyle, ["42", "4.5", "text"], user_config={"tag": "t"})
    assert result.outputs == ["int:42:t", "float:4.5:t", "str:text:t"]


def test_secrets_and_configured_input_serde() -> None:
    def secret_user(context: Context, value: object) -> str:
        return f"{context.get_secret('token')}:{value!r}"

    config = FunctionConfig(
        inputs=(
            InputSpec("persistent://public/default/nums", serde_class_name="serde.IdentitySerDe"),
        ),
    )
    result = run_function(secret_user, ["7"], secrets={"token": "s3cret"}, config=config)
    assert result.outputs == ["s3cret:7"]  # IdentitySerDe made the payload an int
