"""PIP-32 signature rules in Python: every accepted form, and every refusal with its message."""

from __future__ import annotations

import functools
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import pulsar
import pytest

from pulsarfunc.runtime.context import Context
from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.handler import (
    ACCEPTED_FORMS,
    Form,
    Handler,
    inspect_handler,
    is_context_annotation,
)

CTX = object()  # stands for the Context: these tests check which argument goes where


@dataclass
class Order:
    id: str


def define(source: str) -> Any:
    """A function compiled from `source` (under postponed annotations), in a fresh namespace."""
    namespace: dict[str, Any] = {}
    exec("from __future__ import annotations\n" + source, namespace)
    name = source.split("def ", 1)[1].split("(", 1)[0]
    return namespace[name]


def refusal(obj: object, *fragments: str, forms: bool = True) -> HandlerError:
    """Asserts the HandlerError names the place, each fragment and (for shapes) the forms."""
    with pytest.raises(HandlerError) as info:
        inspect_handler(obj, where="h.py:h")
    text = str(info.value)
    assert text.startswith("h.py:h: ")
    for fragment in fragments:
        assert fragment in text, text
    assert (ACCEPTED_FORMS in text) is forms
    assert info.value.exit_code == 2
    return info.value


# --- accepted: arity and the Context -------------------------------------------------------


def test_no_parameters() -> None:
    def tick() -> None:
        return None

    h = inspect_handler(tick)
    assert (h.form, h.takes_input, h.takes_context) == (Form.FUNCTION, False, False)
    assert h.call(CTX, b"ignored") is None


def test_one_parameter_is_the_input() -> None:
    def echo(data):  # type: ignore[no-untyped-def]
        return data

    h = inspect_handler(echo)
    assert (h.takes_input, h.takes_context) == (True, False)
    assert (h.input_codec.name, h.output_codec.name) == ("bytes", "by type")
    assert h.call(CTX, b"x") == b"x"


@pytest.mark.parametrize("annotation", [Context, pulsar.Context])
def test_one_parameter_annotated_context_is_the_context(annotation: type) -> None:
    def only_ctx(ctx: Any) -> Any:
        return ctx

    only_ctx.__annotations__["ctx"] = annotation
    h = inspect_handler(only_ctx)
    assert (h.takes_input, h.takes_context) == (False, True)
    assert h.call(CTX, b"ignored") is CTX


def test_two_parameters_context_first() -> None:
    def both(ctx: Context, text: str) -> str:
        return text

    h = inspect_handler(both)
    assert (h.takes_input, h.takes_context) == (True, True)
    assert h.input_codec.name == "str"
    calls: list[tuple[Any, ...]] = []
    inspect_handler(lambda c, v: calls.append((c, v))).call(CTX, "in")
    assert calls == [(CTX, "in")]


def test_two_unannotated_parameters_are_context_then_input() -> None:
    h = inspect_handler(lambda context, data: (context, data))
    assert h.call(CTX, b"v") == (CTX, b"v")


def test_string_annotation_resolves_from_the_module() -> None:
    f = define("from pulsarfunc.runtime.context import Context\ndef f(c: Context): return c\n")
    assert inspect_handler(f).takes_context


def test_unresolvable_string_context_counts_by_name() -> None:
    f = define(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pulsarfunc import Context\n"
        "def f(c: Context, data: bytes): return data\n"
    )
    h = inspect_handler(f)
    assert (h.takes_context, h.takes_input, h.input_codec.name) == (True, True, "bytes")
    assert h.signature == "f(c: Context, data: bytes)"


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (Context, True),
        (pulsar.Context, True),
        ("Context", True),
        ("pulsarfunc.Context", True),
        (str, False),
        ("Text", False),
        (type("Context", (), {}), False),  # a Context of the user's own, not ours or Pulsar's
    ],
)
def test_is_context_annotation(annotation: Any, expected: bool) -> None:
    assert is_context_annotation(annotation) is expected


def test_parameters_with_defaults_are_not_passed() -> None:
    def f(ctx: Context, data: bytes, retries: int = 3, *, mode: str = "x") -> Any:
        return (ctx, data, retries, mode)

    h = inspect_handler(f)
    assert h.call(CTX, b"d") == (CTX, b"d", 3, "x")
    assert (
        h.signature == "f(ctx: Context, data: bytes, retries: int = 3, *, mode: str = 'x') -> Any"
    )


def test_positional_only_parameters() -> None:
    def f(ctx: Context, data: bytes, /) -> bytes:
        return data

    h = inspect_handler(f)
    assert h.call(CTX, b"d") == b"d"
    assert h.signature == "f(ctx: Context, data: bytes, /) -> bytes"


# --- accepted: kinds of callables -----------------------------------------------------------


class Greeter:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    def greet(self, name: str) -> str:
        return f"{self.greeting} {name}"

    def __call__(self, ctx: Context, name: str) -> str:
        return self.greet(name)

    @staticmethod
    def static(name: str) -> str:
        return name


class AsyncCallable:
    async def __call__(self, data: bytes) -> bytes:
        return data


def test_bound_method() -> None:
    h = inspect_handler(Greeter("hi").greet)
    assert h.call(CTX, "bo") == "hi bo"
    assert h.signature == "Greeter.greet(name: str) -> str"


def test_callable_object() -> None:
    h = inspect_handler(Greeter("yo"))
    assert (h.takes_context, h.takes_input) == (True, True)
    assert h.call(CTX, "al") == "yo al"
    assert h.signature == "Greeter.__call__(ctx: Context, name: str) -> str"


def test_staticmethod() -> None:
    assert inspect_handler(Greeter.static).call(CTX, "s") == "s"


def test_partial() -> None:
    h = inspect_handler(functools.partial(lambda prefix, data: prefix + data, b">"))
    assert h.call(CTX, b"x") == b">x"
    assert h.signature.startswith("partial(")


def test_decorator_with_wraps_keeps_the_signature() -> None:
    def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    @logged
    def upper(text: str) -> str:
        return text.upper()

    h = inspect_handler(upper)
    assert h.input_codec.name == "str"
    assert h.call(CTX, "a") == "A"


def test_async_function() -> None:
    async def f(text: str) -> str:
        return text

    h = inspect_handler(f)
    assert (h.is_async, h.yields, h.is_async_gen) == (True, False, False)
    assert h.describe() == "async function f(text: str) -> str: input str, output str"
    h.call(CTX, "x").close()  # a coroutine: the instance awaits it


def test_async_callable_object() -> None:
    h = inspect_handler(AsyncCallable())
    assert h.is_async
    h.call(CTX, b"x").close()


def test_generator_yields_several_outputs() -> None:
    def split(text: str) -> Iterator[str]:
        yield from text.split()

    h = inspect_handler(split)
    assert (h.is_async, h.yields, h.is_async_gen) == (False, True, False)
    assert (h.input_codec.name, h.output_codec.name) == ("str", "str")
    assert list(h.call(CTX, "a b")) == ["a", "b"]
    assert (
        h.describe()
        == "generator function split(text: str) -> Iterator[str]: input str, output str"
    )


def test_async_generator() -> None:
    async def f(ctx: Context, data: dict[str, int]) -> AsyncIterator[Order]:
        yield Order("x")

    h = inspect_handler(f)
    assert (h.is_async, h.yields, h.is_async_gen) == (True, True, True)
    assert (h.input_codec.name, h.output_codec.name) == ("JSON dict[str, int]", "JSON Order")
    assert h.describe().startswith("async generator function f(")


def test_unannotated_generator_outputs_by_type() -> None:
    def f(data):  # type: ignore[no-untyped-def]
        yield data

    assert inspect_handler(f).output_codec.name == "by type"


@pytest.mark.parametrize("returns", [Iterator, typing.Iterator, typing.Generator, AsyncIterator])
def test_bare_iterator_annotation_outputs_by_type(returns: Any) -> None:
    def f(data: bytes) -> Any:
        yield data

    f.__annotations__["return"] = returns
    assert inspect_handler(f).output_codec.name == "by type"


def test_generator_annotation_gives_the_yield_type() -> None:
    def f(data: bytes) -> typing.Generator[Order, None, None]:
        yield Order("x")

    assert inspect_handler(f).output_codec.name == "JSON Order"


# --- output codecs from the return annotation -----------------------------------------------


@pytest.mark.parametrize(
    ("returns", "codec"),
    [
        (None, "by type"),
        (Any, "by type"),
        (object, "by type"),
        (str, "str"),
        (Optional[str], "str"),  # noqa: UP045 - the old spelling must work too
        (bytes, "bytes"),
        (str | bytes, "by type"),
        (dict, "JSON dict"),
        (list[Order], "JSON list[Order]"),
        (Order, "JSON Order"),
        (Order | None, "JSON Order"),
        (int, "JSON int"),
        (Iterator, "by type"),  # bare Iterator on a non-generator: not JSON
    ],
)
def test_output_codec_from_return_annotation(returns: Any, codec: str) -> None:
    def f(data: bytes) -> Any:
        return data

    f.__annotations__["return"] = returns
    if returns is Iterator:
        with pytest.raises(HandlerError, match="Iterator is not a JSON type"):
            inspect_handler(f)
        return
    assert inspect_handler(f).output_codec.name == codec


def test_input_codec_from_annotation() -> None:
    def f(order: Order) -> None:
        return None

    h = inspect_handler(f)
    assert h.input_codec.decode(b'{"id": "o1"}') == Order("o1")


def test_describe_without_input() -> None:
    def f(ctx: Context) -> None:
        return None

    assert (
        inspect_handler(f).describe()
        == "sync function f(ctx: Context) -> None: input none, output by type"
    )


# --- refused --------------------------------------------------------------------------------


def test_three_required_parameters() -> None:
    def three(a, b, c):  # type: ignore[no-untyped-def]
        return None

    refusal(three, "takes 3 required positional parameters; at most 2", "found: def three(a, b, c)")


def test_star_args() -> None:
    def star(*args: Any) -> None:
        return None

    refusal(star, "*args is not accepted", "found: def star(*args: Any) -> None", "functools.wraps")


def test_star_kwargs() -> None:
    def kw(data: bytes, **options: Any) -> None:
        return None

    refusal(kw, "**options is not accepted")


def test_decorator_without_wraps_is_refused_with_a_hint() -> None:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    refusal(deco(lambda data: data), "*args is not accepted", "functools.wraps")


def test_required_keyword_only() -> None:
    def f(data: bytes, *, mode: str) -> None:
        return None

    refusal(
        f, "keyword-only parameter 'mode' has no default", "found: def f(data: bytes, *, mode: str)"
    )


# Issue 12 (i): an input parameter with a default is refused, never silently left out.
@pytest.mark.parametrize(
    ("fn", "name", "fix"),
    [
        (lambda data=b"": data, "data", "def handler(data)"),
        (lambda data=b"", more=1: data, "data", "def handler(*, data=...)"),
    ],
)
def test_an_input_parameter_with_a_default_is_refused(
    fn: Callable[..., Any], name: str, fix: str
) -> None:
    refusal(fn, f"parameter {name!r} has a default where the input would go", fix)


def test_the_input_parameter_after_the_context_with_a_default_is_refused() -> None:
    def f(ctx: Context, text: str = "") -> str:
        return text

    refusal(
        f,
        "parameter 'text' has a default where the input would go",
        "def handler(ctx, text)",
        "def handler(ctx, *, text=...)",
        "found: def f(ctx: Context, text: str = '') -> str",
    )


def test_keyword_only_options_with_defaults_are_fine_without_an_input() -> None:
    def f(ctx: Context, *, limit: int = 10) -> int:
        return limit

    h = inspect_handler(f)
    assert (h.takes_context, h.takes_input) == (True, False)
    assert h.call(CTX, b"ignored") == 10


def test_context_second_by_annotation() -> None:
    def f(input: bytes, context: Context) -> None:
        return None

    refusal(f, "the Context is the second parameter; PIP-32 passes it first", "swap them")


def test_context_second_by_name() -> None:
    refusal(lambda msg, ctx: None, "the Context is the second parameter")


def test_first_of_two_annotated_as_something_else() -> None:
    def f(text: str, other: str) -> None:
        return None

    refusal(f, "the first is the Context, but 'text' is annotated str")


def test_single_unannotated_context_name_is_ambiguous() -> None:
    refusal(lambda ctx: None, "the only parameter is named 'ctx' but not annotated")


def test_unsupported_input_annotation() -> None:
    def f(tags: set[str]) -> None:
        return None

    refusal(
        f,
        "annotation set[str] is not supported",
        "found: def f(tags: set[str]) -> None",
        forms=False,
    )


def test_unsupported_return_annotation() -> None:
    def f(data: bytes) -> set[str]:
        return set()

    refusal(f, "annotation set[str] is not supported", forms=False)


def test_unresolvable_annotation() -> None:
    f = define("def f(data: Missing): return data\n")
    refusal(
        f, "annotation 'Missing' could not be resolved", "found: def f(data: Missing)", forms=False
    )


def test_generator_with_non_iterator_return_annotation() -> None:
    def f(data: bytes) -> list[str]:  # type: ignore[misc]
        yield "x"

    refusal(f, "a generator's return annotation list[str] is not an iterator", forms=False)


def test_not_callable() -> None:
    refusal(42, "42 (of type int) is not callable")


def test_class_without_process() -> None:
    refusal(Order, "class Order has no process method", "pass a function")


def test_class_with_call_suggests_an_instance() -> None:
    refusal(AsyncCallable, "class AsyncCallable has no process method", "handler = AsyncCallable()")


def test_unreadable_signature() -> None:
    class Odd:
        __signature__ = "not a signature"

        def __call__(self) -> None:
            return None

    refusal(Odd(), "its signature cannot be read")


def test_handler_is_frozen() -> None:
    h = inspect_handler(lambda: None)
    assert isinstance(h, Handler)
    with pytest.raises(AttributeError):
        h.form = Form.PULSAR_NATIVE  # type: ignore[misc]
