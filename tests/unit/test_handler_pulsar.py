"""Pulsar's own forms: pulsar.Function subclasses and native process(input), with Pulsar's serde."""

from __future__ import annotations

import types
from typing import Any

import pulsar
import pytest

from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.handler import (
    ACCEPTED_FORMS,
    Form,
    inspect_handler,
    is_pulsar_function_class,
)

CTX = object()


class Exclaim(pulsar.Function):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls = 0

    def process(self, input: Any, context: Any) -> Any:
        self.calls += 1
        return (input, context)


class Tolerant(pulsar.Function):  # type: ignore[misc]
    def process(self, *args: Any) -> Any:
        return args


class WithDefaults(pulsar.Function):  # type: ignore[misc]
    def process(self, input: Any, context: Any, extra: int = 1) -> Any:
        return extra


class Subclass(Exclaim):
    pass


class DuckTyped:
    """Not a pulsar.Function, but Pulsar's instance calls any class's process the same way."""

    def process(self, input: Any, context: Any) -> Any:
        return input


class MissingContext(pulsar.Function):  # type: ignore[misc]
    def process(self, input: Any) -> Any:
        return input


class NoProcess(pulsar.Function):  # type: ignore[misc]
    pass


class NeedsArguments(pulsar.Function):  # type: ignore[misc]
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def process(self, input: Any, context: Any) -> Any:
        return input


class AsyncProcess(pulsar.Function):  # type: ignore[misc]
    async def process(self, input: Any, context: Any) -> Any:
        return input


def module_with(source: str, name: str = "user_fn") -> types.ModuleType:
    module = types.ModuleType(name)
    exec(source, module.__dict__)
    return module


def test_detects_pulsar_function_by_name_in_the_mro() -> None:
    assert is_pulsar_function_class(Exclaim)
    assert is_pulsar_function_class(Subclass)
    assert not is_pulsar_function_class(DuckTyped)
    assert not is_pulsar_function_class(pulsar.Function)  # the base itself is not a function


def test_class_is_instantiated_and_called_input_first() -> None:
    h = inspect_handler(Exclaim)
    assert h.form is Form.PULSAR_FUNCTION
    assert (h.takes_input, h.takes_context, h.is_async, h.yields) == (True, True, False, False)
    assert h.call(CTX, "in") == ("in", CTX)
    assert h.signature == "Exclaim.process(input: Any, context: Any) -> Any"


def test_class_instance_is_used_as_is() -> None:
    instance = Exclaim()
    h = inspect_handler(instance)
    h.call(CTX, "a")
    assert instance.calls == 1


def test_pulsar_forms_use_pulsars_default_serde() -> None:
    h = inspect_handler(Exclaim)
    assert h.input_codec.name == h.output_codec.name == "Pulsar serde.IdentitySerDe"
    assert h.input_codec.decode(b"7") == 7
    assert h.describe() == (
        "sync pulsar.Function Exclaim.process(input: Any, context: Any) -> Any: "
        "input Pulsar serde.IdentitySerDe, output Pulsar serde.IdentitySerDe"
    )


@pytest.mark.parametrize("cls", [Tolerant, WithDefaults, Subclass, DuckTyped])
def test_any_process_pulsar_could_call_is_accepted(cls: type) -> None:
    assert inspect_handler(cls).form is Form.PULSAR_FUNCTION


def test_async_process_is_accepted_as_an_extension() -> None:
    h = inspect_handler(AsyncProcess)
    assert h.is_async
    h.call(CTX, "x").close()


@pytest.mark.parametrize(
    ("cls", "fragments"),
    [
        (
            MissingContext,
            (
                "Pulsar calls MissingContext.process(input, context), which this signature "
                "cannot take",
                "found: def MissingContext.process(input: Any) -> Any",
                "input first, then context",
                ACCEPTED_FORMS,
            ),
        ),
        (NoProcess, ("NoProcess does not define process", "def process(self, input, context)")),
        (
            NeedsArguments,
            ("could not create NeedsArguments(): TypeError", "no required parameters"),
        ),
    ],
)
def test_classes_pulsar_could_not_call_are_refused(cls: type, fragments: tuple[str, ...]) -> None:
    with pytest.raises(HandlerError) as info:
        inspect_handler(cls, where="f.py:F")
    assert str(info.value).startswith("f.py:F: ")
    assert [f for f in fragments if f not in str(info.value)] == []


def test_native_module_level_process() -> None:
    module = module_with("def process(input):\n    return input + '!'\n")
    h = inspect_handler(module.process)
    assert h.form is Form.PULSAR_NATIVE
    assert (h.takes_input, h.takes_context) == (True, False)
    assert h.call(CTX, "hi") == "hi!"
    assert h.input_codec.name == "Pulsar serde.IdentitySerDe"
    assert h.describe() == (
        "sync Pulsar native function process(input): "
        "input Pulsar serde.IdentitySerDe, output Pulsar serde.IdentitySerDe"
    )


def test_annotated_process_is_a_typed_pip32_function() -> None:
    module = module_with("def process(text: str) -> str:\n    return text\n")
    h = inspect_handler(module.process)
    assert (h.form, h.input_codec.name) == (Form.FUNCTION, "str")


def test_nested_process_is_not_native() -> None:
    def process(input):  # type: ignore[no-untyped-def]
        return input

    assert inspect_handler(process).form is Form.FUNCTION


def test_module_object_is_native_whatever_the_annotation() -> None:
    module = module_with("def process(text: str) -> str:\n    return text\n", "exclamation")
    h = inspect_handler(module)
    assert h.form is Form.PULSAR_NATIVE
    assert h.input_codec.name == "Pulsar serde.IdentitySerDe"


def test_module_without_process_is_refused() -> None:
    module = module_with("def handler(x):\n    return x\n", "exclamation")
    with pytest.raises(HandlerError, match="module exclamation has no process function"):
        inspect_handler(module)


def test_module_process_with_two_parameters_is_refused() -> None:
    module = module_with("def process(a, b):\n    return a\n", "exclamation")
    with pytest.raises(HandlerError, match=r"Pulsar calls process\(input\)"):
        inspect_handler(module)
