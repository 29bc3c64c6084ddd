"""Handler signature rules: PIP-32's function forms mapped to Python, plus Pulsar's own forms.

Pure: no I/O and no `pulsar` import, so every rule is a microsecond unit test and the builder can
validate a handler on the host with exactly the rules the image applies. An object no form
accepts fails here, at start-up, with the signature found and the accepted forms.

Forms (Form):
- FUNCTION (PIP-32): a function, bound method, callable object or `async def` taking 0, 1 or 2
  positional parameters without defaults. With 2 the first is the Context (PIP-32 order); with 1
  it is the input unless annotated as a Context. Parameters with defaults after the input are
  not passed; one where the input would go (the handler takes no input otherwise) is refused,
  never silently left out. `*args`, `**kwargs` and required keyword-only parameters are
  refused. The return value is the
  output (None: no output); a generator or async generator yields several outputs. The input
  is decoded by its annotation and the output encoded by the return annotation (`codec`).
- PULSAR_FUNCTION: a `pulsar.Function` subclass (or any class with `process`, as Pulsar's
  instance accepts), instantiated with no arguments, or such an instance; called as
  `process(input, context)`, Pulsar's order.
- PULSAR_NATIVE: Pulsar's "native" Python function, a module-level `process(input)` with an
  unannotated parameter, or a module object (Pulsar's `className` naming a module).
Both Pulsar forms decode and encode with Pulsar's default serde (IdentitySerDe), as Pulsar does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import inspect
import operator
import types
import typing
from collections import abc
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pulsarfunc.runtime.batching import DEFAULT_BATCH_SIZE, batch_element, list_element
from pulsarfunc.runtime.codec import AUTO, Codec, codec_for, pulsar_serde, type_label
from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.schemas import infer
from pulsarfunc.runtime.windows import WindowRecord

ACCEPTED_FORMS = """\
accepted handler forms:
  def handler(input) -> output              input decoded by its annotation (bytes if none)
  def handler(context: Context, input)      PIP-32 order: the Context comes first
  def handler(context: Context)             no input passed; def handler() works too
    ...as async def, generator or async generator (yield several outputs), bound method or
    object with __call__; parameters with defaults after the input are not passed, one where
    the input would go is refused; no *args or **kwargs
  def handler(items: Batch[T]) -> list[X]   batch handler: one output per input (None: none);
    with --batch-max-size N, def handler(items: list[T]) -> list[X] is one too
  class F(pulsar.Function) with def process(self, input, context)   Pulsar SDK, class or instance
  def process(input) at module level, parameter unannotated         Pulsar native function"""

_CONTEXT_MODULES = frozenset(
    {"pulsarfunc", "pulsarfunc.runtime.context", "pulsar", "pulsar.functions.context"}
)
_FUNCTION_MODULES = frozenset({"pulsar", "pulsar.functions.function"})
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_ITERATORS = frozenset(
    {
        abc.Iterator,
        abc.Iterable,
        abc.Generator,
        abc.AsyncIterator,
        abc.AsyncIterable,
        abc.AsyncGenerator,
    }
)


class Form(enum.Enum):
    """How the runtime calls the handler, and which codecs it gets by default."""

    FUNCTION = "function"  # PIP-32: f(), f(input), f(context), f(context, input)
    PULSAR_FUNCTION = "pulsar.Function"  # obj.process(input, context)
    PULSAR_NATIVE = "Pulsar native function"  # process(input)


@dataclass(frozen=True)
class Handler:
    """A validated handler: what to call, how, and how its payloads are encoded."""

    target: Callable[..., Any]
    form: Form
    takes_input: bool
    takes_context: bool
    is_async: bool  # run on the event loop: a coroutine function or an async generator
    yields: bool  # several outputs: a generator or an async generator
    is_async_gen: bool  # iterate with `async for` (implies is_async and yields)
    input_codec: Codec
    output_codec: Codec
    signature: str
    window: bool = False  # a window function: the input is a list, `input_codec` per item
    window_records: bool = False  # ... of `WindowRecord`s (list[WindowRecord[T]])
    # A batch handler (`batching.py`): called with up to `batch_size` inputs, codecs per item.
    batch_size: int = 0
    input_annotation: Any = None  # as written, for `batch_form`
    return_annotation: Any = None

    def call(self, context: Any, value: Any) -> Any:
        """Calls the target in its form's argument order; returns value, coroutine or generator."""
        # Plain branches, no argument lists: this runs once per message.
        if self.form is Form.FUNCTION:
            if self.takes_input:
                return self.target(context, value) if self.takes_context else self.target(value)
            return self.target(context) if self.takes_context else self.target()
        if self.form is Form.PULSAR_FUNCTION:
            return self.target(value, context)
        return self.target(value)

    def plain_call(self) -> Callable[[Any], Any] | None:
        """The target itself when it takes its input alone and `call` would add nothing: the
        cheapest call, with no Context at all. None otherwise."""
        if self.form is Form.FUNCTION:
            return self.target if self.takes_input and not self.takes_context else None
        return None if self.form is Form.PULSAR_FUNCTION else self.target

    def describe(self) -> str:
        """One line for `pulsarfunc check` and start-up logs."""
        kind = (
            "async generator"
            if self.is_async_gen
            else "generator"
            if self.yields
            else "async"
            if self.is_async
            else "sync"
        )
        inp = self.input_codec.name if self.takes_input else "none"
        out = self.output_codec.name
        if self.window:
            items = f"WindowRecord[{inp}]" if self.window_records else inp
            return (
                f"{kind} window {self.form.value} {self.signature}: a window of {items}, "
                f"output {out}"
            )
        if self.batch_size:
            return (
                f"{kind} batch handler ({self.form.value}) {self.signature}: up to "
                f"{self.batch_size} inputs a call, each input {inp}, each output {out}"
            )
        return f"{kind} {self.form.value} {self.signature}: input {inp}, output {out}"


NOT_AWAITABLE = frozenset({bytes, str, dict, list, int, float, bool, type(None), tuple})


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def sync_result(result: Any) -> Any:
    """A sync handler's result; a coroutine (a sync wrapper around async code) is run first."""
    if type(result) not in NOT_AWAITABLE and inspect.isawaitable(result):
        import asyncio  # only here: a sync function never loads it

        return asyncio.run(_awaited(result))
    return result


def is_pulsar_function_class(cls: type) -> bool:
    """Whether `cls` subclasses pulsar's `Function` (found by name, so pulsar is not imported)."""
    return any(
        k.__name__ == "Function" and k.__module__ in _FUNCTION_MODULES
        for k in inspect.getmro(cls)[1:]
    )


def is_context_annotation(annotation: Any) -> bool:
    """Whether an annotation names pulsarfunc's or Pulsar's Context (or is the string "Context")."""
    if isinstance(annotation, str):
        return annotation.strip("'\" ").rpartition(".")[2] == "Context"
    return isinstance(annotation, type) and any(
        k.__name__ == "Context" and k.__module__ in _CONTEXT_MODULES
        for k in inspect.getmro(annotation)
    )


def inspect_handler(obj: object, *, where: str = "", window: bool = False) -> Handler:
    """Validates `obj` against the accepted forms; HandlerError names what was found and why.

    `where` (e.g. "examples/exclaim/handler.py:exclaim") prefixes every message. With `window`
    (a windowConfig is set) the input is a window: a list of items, each decoded as the
    list's item type says (`list[T]`, `list[WindowRecord[T]]`; unannotated: bytes, or
    Pulsar's serde for Pulsar's forms).
    """
    found = _inspect(obj, where, window)
    if window and found.form is not Form.FUNCTION:  # Pulsar's forms: items by Pulsar's serde
        return dataclasses.replace(found, window=True)
    return found


def _inspect(obj: object, where: str, window: bool) -> Handler:
    if isinstance(obj, ModuleType):
        return _native_module(obj, where or obj.__name__)
    if isinstance(obj, type):
        return _pulsar_instance(_instantiate(obj, where or obj.__qualname__), where)
    if is_pulsar_function_class(type(obj)):
        return _pulsar_instance(obj, where)
    if not callable(obj):
        if callable(getattr(obj, "process", None)):
            return _pulsar_instance(obj, where)
        shown = repr(obj) if len(repr(obj)) <= 40 else repr(obj)[:37] + "..."
        raise HandlerError(
            f"{where or shown}: {shown} (of type {type(obj).__qualname__}) is not callable",
            f"point at a function, a callable object or a Pulsar function class\n{ACCEPTED_FORMS}",
        )
    return _function(obj, where, window)


def _instantiate(cls: type, where: str) -> object:
    if not (is_pulsar_function_class(cls) or callable(getattr(cls, "process", None))):
        hint = "pass a function, or a Pulsar function class with process(self, input, context)"
        if "__call__" in vars(cls):
            name = cls.__qualname__
            hint = f"to use {name}.__call__, pass an instance: handler = {name}()"
        raise HandlerError(
            f"{where}: class {cls.__qualname__} has no process method, so it is not a Pulsar "
            "function, and a class is not called per message",
            f"{hint}\n{ACCEPTED_FORMS}",
        )
    try:
        return cls()
    except Exception as e:
        raise HandlerError(
            f"{where}: could not create {cls.__qualname__}(): {type(e).__name__}: {e}",
            "Pulsar creates a function class with no arguments: give __init__ no required "
            "parameters (read settings from context.get_user_config_value in process)",
        ) from e


def _pulsar_instance(obj: object, where: str) -> Handler:
    cls = type(obj)
    where = where or cls.__qualname__
    owner = next((k for k in inspect.getmro(cls) if "process" in vars(k)), None)
    if owner is None or owner.__module__ in _FUNCTION_MODULES:
        raise HandlerError(
            f"{where}: {cls.__qualname__} does not define process",
            f"define def process(self, input, context) returning the output\n{ACCEPTED_FORMS}",
        )
    process = obj.process  # type: ignore[attr-defined]
    name = f"{cls.__qualname__}.process"
    return _pulsar_form(process, Form.PULSAR_FUNCTION, name, where, ("input", "context"))


def _native_module(module: ModuleType, where: str) -> Handler:
    process = getattr(module, "process", None)
    if not callable(process):
        raise HandlerError(
            f"{where}: module {module.__name__} has no process function; Pulsar calls a "
            "module's process(input) when className names the module",
            f"define def process(input) in {module.__name__}, or name a class: module.Class",
        )
    return _pulsar_form(process, Form.PULSAR_NATIVE, "process", where, ("input",))


def _pulsar_form(
    target: Callable[..., Any], form: Form, name: str, where: str, args: tuple[str, ...]
) -> Handler:
    """Pulsar calls positionally; accept whatever Python would accept for that call."""
    sig = _signature(target, where)
    shown = _format(name, sig, {})
    try:
        sig.bind(*args)
    except TypeError as e:
        raise HandlerError(
            f"{where}: Pulsar calls {name}({', '.join(args)}), which this signature cannot "
            f"take: {e}\n  found: {_def(target, shown)}",
            f"Pulsar's order is input first, then context\n{ACCEPTED_FORMS}",
        ) from e
    codec = pulsar_serde()
    return Handler(
        target, form, True, form is Form.PULSAR_FUNCTION, *_flags(target), codec, codec, shown
    )


def _function(obj: Callable[..., Any], where: str, window: bool = False) -> Handler:
    sig = _signature(obj, where)
    hints = _resolved_annotations(obj, sig)
    name = _name(obj)
    shown = _format(name, sig, hints)
    where = where or name
    found = f"\n  found: {_def(obj, shown)}"

    def invalid(reason: str, hint: str) -> HandlerError:
        return HandlerError(f"{where}: {reason}{found}", f"{hint}\n{ACCEPTED_FORMS}")

    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL or p.kind is p.VAR_KEYWORD:
            star = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise invalid(
                f"{star}{p.name} is not accepted: the runtime passes fixed arguments",
                "name the parameters; a decorator should keep the signature (functools.wraps)",
            )
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise invalid(
                f"keyword-only parameter {p.name!r} has no default, and nothing passes it",
                f"give {p.name!r} a default, or remove it",
            )
    required = [
        p for p in sig.parameters.values() if p.kind in _POSITIONAL and p.default is p.empty
    ]
    is_ctx = [is_context_annotation(hints.get(p.name, p.empty)) for p in required]
    if len(required) > 2:
        raise invalid(
            f"takes {len(required)} required positional parameters; at most 2 are accepted",
            "take (context, input), (input), (context) or nothing; give extra parameters defaults",
        )
    if len(required) == 2 and (is_ctx[1] or _pulsar_order(required, is_ctx)):
        raise invalid(
            "the Context is the second parameter; PIP-32 passes it first",
            "swap them: def handler(context, input)  (or subclass pulsar.Function for "
            "process(self, input, context))",
        )
    if len(required) == 2 and _annotated_not_context(required[0], hints):
        raise invalid(
            f"with two parameters the first is the Context, but {required[0].name!r} is "
            f"annotated {type_label(hints[required[0].name])}",
            "annotate it as Context, or take only the input",
        )
    if len(required) == 1 and not is_ctx[0] and required[0].name in ("context", "ctx"):
        raise invalid(
            f"the only parameter is named {required[0].name!r} but not annotated, so it would "
            "receive the input",
            f"annotate it to get the Context: def handler({required[0].name}: Context), or "
            "rename it to receive the input",
        )
    if _is_native(obj, required, hints):
        return _pulsar_form(obj, Form.PULSAR_NATIVE, "process", where, ("input",))
    takes_context = len(required) == 2 or (len(required) == 1 and is_ctx[0])
    takes_input = len(required) == 2 or (len(required) == 1 and not takes_context)
    positional = [p for p in sig.parameters.values() if p.kind in _POSITIONAL]
    if not takes_input and len(positional) > len(required):
        p = positional[len(required)]  # where the input would go: it has a default
        ctx = f"{required[0].name}, " if required else ""
        raise invalid(
            f"parameter {p.name!r} has a default where the input would go, so it would never "
            "receive the input",
            f"to receive the input remove the default: def handler({ctx}{p.name}); to take no "
            f"input, make it keyword-only: def handler({ctx}*, {p.name}=...)",
        )
    is_async, yields, is_async_gen = _flags(obj)
    input_annotation = (
        hints.get(required[-1].name, inspect.Parameter.empty) if takes_input else None
    )
    return_annotation = hints.get("return", inspect.Parameter.empty)
    element = batch_element(input_annotation) if takes_input and not window else None
    if element is not None and yields:
        raise invalid(
            "a batch handler returns a list, one output per input; a generator cannot",
            "return a list of the same length as the batch (None: no output for that input)",
        )
    records = False
    try:
        if takes_input and window:
            input_codec, records = _window_items(input_annotation)
            output_codec = _output_codec(return_annotation, yields)
        elif element is not None:
            input_codec, output_codec = payload_codec(element), _batch_output(return_annotation)
        else:
            input_codec = payload_codec(input_annotation) if takes_input else codec_for(bytes)
            output_codec = _output_codec(return_annotation, yields)
    except HandlerError as e:
        raise HandlerError(f"{where}: {e.problem}{found}", e.hint) from e
    return Handler(
        obj,
        Form.FUNCTION,
        takes_input,
        takes_context,
        is_async,
        yields,
        is_async_gen,
        input_codec,
        output_codec,
        shown,
        window,
        records,
        DEFAULT_BATCH_SIZE if element is not None else 0,
        input_annotation,
        return_annotation,
    )


def batch_form(handler: Handler, size: int) -> Handler:
    """`handler` called with up to `size` inputs (--batch-max-size): its `list[T]` parameter
    takes inputs decoded by `T`, its `list[X]` return gives outputs encoded by `X`."""
    if handler.batch_size or handler.form is not Form.FUNCTION:
        return dataclasses.replace(handler, batch_size=size)  # codecs per item already
    hint = "a batch handler takes list[T] (or Batch[T]) and returns list[X]: one output per input"
    if not handler.takes_input or handler.yields:
        what = "takes no input" if not handler.takes_input else "is a generator"
        raise HandlerError(f"--batch-max-size {size}: {handler.signature} {what}", hint)
    inp, ret = handler.input_annotation, handler.return_annotation
    if not _list_like(inp):
        raise HandlerError(
            f"--batch-max-size {size}: {handler.signature} takes {_label(inp)}, not a list",
            hint,
        )
    try:
        codecs = payload_codec(list_element(inp)), _batch_output(ret)
    except HandlerError as e:
        raise HandlerError(f"--batch-max-size {size}: {e.problem}", e.hint) from e
    return dataclasses.replace(
        handler, batch_size=size, input_codec=codecs[0], output_codec=codecs[1]
    )


def _list_like(annotation: Any) -> bool:
    if annotation in (inspect.Parameter.empty, Any, list, abc.Sequence, typing.Sequence):
        return True
    return typing.get_origin(annotation) in (list, abc.Sequence)


def _batch_output(annotation: Any) -> Codec:
    """The codec of each output of a batch handler returning `annotation` (a list of them)."""
    origin = typing.get_origin(annotation)
    if origin in (abc.Awaitable, abc.Coroutine):
        args = typing.get_args(annotation)
        annotation = args[-1] if args else Any
    if not _list_like(annotation) and annotation not in (None, type(None), object):
        raise HandlerError(
            f"a batch handler's return annotation {_label(annotation)} is not a list",
            "annotate it as list[X]: one output per input, X each output's type",
        )
    element = list_element(annotation)
    if typing.get_origin(element) in (typing.Union, types.UnionType):  # drop `| Exception`
        kept = [a for a in typing.get_args(element) if not _is_exception(a)]
        element = functools.reduce(operator.or_, kept) if kept else Any
    return AUTO if _is_exception(element) else _output_codec(element, False)


def _is_exception(annotation: Any) -> bool:
    """An exception type: what a batch handler returns in a failed item's place."""
    return isinstance(annotation, type) and issubclass(annotation, BaseException)


def _pulsar_order(required: list[inspect.Parameter], is_ctx: list[bool]) -> bool:
    """(input, context) written unannotated: the names give Pulsar's order away."""
    return (
        not is_ctx[0]
        and required[0].name not in ("context", "ctx")
        and required[1].name
        in (
            "context",
            "ctx",
        )
    )


def _annotated_not_context(p: inspect.Parameter, hints: dict[str, Any]) -> bool:
    annotation = hints.get(p.name, p.empty)
    return annotation is not p.empty and not is_context_annotation(annotation)


def _is_native(obj: object, required: list[inspect.Parameter], hints: dict[str, Any]) -> bool:
    """A module-level `process(input)` without annotation is Pulsar's native form."""
    return (
        inspect.isfunction(obj)
        and obj.__qualname__ == "process"
        and len(required) == 1
        and required[0].name not in hints
    )


def _output_codec(annotation: Any, yields: bool) -> Codec:
    if yields:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        bare = annotation in _ITERATORS or (origin in _ITERATORS and not args)
        if annotation is inspect.Parameter.empty or bare:
            return AUTO
        if origin not in _ITERATORS:
            raise HandlerError(
                f"a generator's return annotation {type_label(annotation)} is not an iterator",
                "annotate it as Iterator[X] (or AsyncIterator[X]); X is each output's type",
            )
        annotation = args[0]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (abc.Awaitable, abc.Coroutine):  # a sync wrapper around async code: awaited
        annotation = args[-1] if args else Any
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (inspect.Parameter.empty, Any, object, None, type(None)):
        return AUTO
    members = [a for a in args if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(members) > 1:
        return AUTO
    return payload_codec(annotation)


def _window_items(annotation: Any) -> tuple[Codec, bool]:
    """A window input's item codec, and whether items are WindowRecords: `list[T]`,
    `list[WindowRecord[T]]`, a bare list or none (bytes); HandlerError for anything else."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (inspect.Parameter.empty, Any, list) or annotation in _SEQUENCES:
        item: Any = bytes
    elif origin is list or origin in _SEQUENCES:
        item = args[0] if args else bytes
    else:
        raise HandlerError(
            f"a window function takes the window as a list, but its input is annotated "
            f"{type_label(annotation)}",
            "annotate it list[T] (each item decoded as T) or list[WindowRecord[T]] (with key, "
            "event time, topic, message id and properties)",
        )
    records = item is WindowRecord or typing.get_origin(item) is WindowRecord
    if records:
        item = (typing.get_args(item) or (bytes,))[0]
    return payload_codec(item), records


_SEQUENCES = (abc.Sequence, abc.Iterable, abc.Collection)


def payload_codec(annotation: Any) -> Codec:
    """The codec an input or output annotation asks for: a schema's for a pulsar.schema.Record
    or protobuf class (`schemas.infer`), else `codec.codec_for`'s."""
    return infer(annotation) or codec_for(annotation)


def _flags(obj: Callable[..., Any]) -> tuple[bool, bool, bool]:
    """(is_async, yields, is_async_gen), looking through partials and at __call__ of objects."""
    candidates: list[Any] = [obj]
    if not (inspect.isroutine(obj) or isinstance(obj, functools.partial)):
        candidates.append(_call_method(obj))
    is_async_gen = any(inspect.isasyncgenfunction(c) for c in candidates)
    is_gen = any(inspect.isgeneratorfunction(c) for c in candidates)
    is_async = is_async_gen or any(inspect.iscoroutinefunction(c) for c in candidates)
    return is_async, is_gen or is_async_gen, is_async_gen


def _call_method(obj: object) -> Any:
    """The class's __call__ of a callable object (where `async def __call__` shows)."""
    return next((vars(k)["__call__"] for k in type(obj).__mro__ if "__call__" in vars(k)), None)


def _signature(obj: Callable[..., Any], where: str) -> inspect.Signature:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError) as e:
        raise HandlerError(
            f"{where or repr(obj)}: its signature cannot be read: {e}",
            f"wrap it in a def of your own\n{ACCEPTED_FORMS}",
        ) from e


def _globals(obj: Any) -> dict[str, Any]:
    """The namespace string annotations are evaluated in."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.ismethod(obj):
        obj = obj.__func__
    elif not inspect.isroutine(obj):
        obj = _call_method(obj) or obj
    found = getattr(inspect.unwrap(obj), "__globals__", None)
    return found if isinstance(found, dict) else {}


def _resolved_annotations(obj: Any, sig: inspect.Signature) -> dict[str, Any]:
    """Annotations by name ("return" too), evaluated one by one; unresolvable ones stay strings."""
    namespace = _globals(obj)
    raw = {p.name: p.annotation for p in sig.parameters.values() if p.annotation is not p.empty}
    if sig.return_annotation is not sig.empty:
        raw["return"] = sig.return_annotation
    resolved = {}
    for key, annotation in raw.items():
        if isinstance(annotation, str):
            # What typing.get_type_hints does, one by one; a failure keeps the string: a
            # "Context" still counts by name, anything else codec_for explains.
            with contextlib.suppress(Exception):
                annotation = eval(annotation, namespace)
        resolved[key] = annotation
    return resolved


def _name(obj: Any) -> str:
    if isinstance(obj, functools.partial):
        return f"partial({_name(obj.func)})"
    name = getattr(obj, "__qualname__", None)
    if not (isinstance(name, str) and inspect.isroutine(obj)):
        name = f"{type(obj).__qualname__}.__call__"
    return name.rpartition("<locals>.")[2]


def _label(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    element = batch_element(annotation)
    if element is not None:
        return f"Batch[{_label(element)}]"
    return type_label(annotation)


def _format(name: str, sig: inspect.Signature, hints: dict[str, Any]) -> str:
    """`name(a: str, b=1) -> str`, with short type names."""
    parts: list[str] = []
    star_done = False
    params = list(sig.parameters.values())
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
        star_done = star_done or p.kind in (p.VAR_POSITIONAL, p.KEYWORD_ONLY)
        stars = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        text = stars + p.name
        annotation = hints.get(p.name, p.annotation)
        if annotation is not p.empty:
            text += f": {_label(annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if annotation is not p.empty else f"={p.default!r}"
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (
            i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY
        ):
            parts.append("/")
    ret = hints.get("return", sig.return_annotation)
    return f"{name}({', '.join(parts)})" + (f" -> {_label(ret)}" if ret is not sig.empty else "")


def _def(obj: Any, shown: str) -> str:
    return f"{'async def' if _flags(obj)[0] else 'def'} {shown}"
