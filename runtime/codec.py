"""Payload codecs: bytes on the wire <-> the Python value a handler takes or returns.

The handler's annotations choose the codec once, at inspection time, so an annotation the
runtime cannot honour fails at start-up (HandlerError) rather than on the first message:

    bytes, bytearray, Any, object, none    raw payload bytes (the default)
    str                                    UTF-8 text
    dict, list, dict[str, X], list[X]      JSON, checked against X
    int, float, bool, Literal[...]         a JSON scalar
    a dataclass                            a JSON object, built into that dataclass (nested too)
    Optional[X], X | Y                     JSON null / the first member that fits

Outputs without a usable annotation are encoded by their runtime type (`AUTO`). Pulsar's own
serdes, for existing Pulsar functions, are `pulsar_serde(...)`. A payload that cannot be decoded,
or an output that cannot be encoded, is a PayloadError: it fails that message only.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pulsarfunc.runtime.errors import HandlerError, PayloadError
from pulsarfunc.runtime.serde import SerDe, canonical_name, load_serde

SUPPORTED_ANNOTATIONS = (
    "bytes (the default), str, dict, list, dict[str, X], list[X], int, float, bool, "
    "Literal[...], a dataclass, Optional[X] or a union of these"
)

_Convert = Callable[[Any, str], Any]
"""Checks one decoded JSON value at a path (`$.items[2]`) and returns the value to pass on."""


class Codec(Protocol):
    """Turns one payload into the handler's input, and one handler output into a payload."""

    @property
    def name(self) -> str:
        """Short human name, shown by `pulsarfunc check` (e.g. "str", "JSON Order")."""
        ...

    def decode(self, payload: bytes) -> Any:
        """The value for the handler; PayloadError says what was wrong with the payload."""
        ...

    def encode(self, value: Any) -> bytes:
        """The payload to publish; PayloadError names the value's type and what is accepted."""
        ...


def _type_of(value: Any) -> str:
    return type(value).__qualname__


@dataclass(frozen=True)
class RawCodec:
    """The payload as is: `bytes` (or `bytearray` when annotated so)."""

    name: str = "bytes"

    def decode(self, payload: bytes) -> Any:
        return bytearray(payload) if self.name == "bytearray" else bytes(payload)

    def encode(self, value: Any) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise PayloadError(
            f"output of type {_type_of(value)} cannot be sent as raw bytes",
            "the handler is annotated to return bytes: return bytes, bytearray or memoryview",
        )


@dataclass(frozen=True)
class TextCodec:
    """UTF-8 text, strict: invalid bytes fail the message instead of being replaced."""

    name: str = "str"

    def decode(self, payload: bytes) -> Any:
        try:
            return bytes(payload).decode("utf-8")
        except UnicodeDecodeError as e:
            raise PayloadError(
                f"payload is not UTF-8 text: {e.reason} at byte {e.start}",
                "annotate the input as bytes to receive any payload unchanged",
            ) from e

    def encode(self, value: Any) -> bytes:
        if isinstance(value, str):
            return value.encode("utf-8")
        raise PayloadError(
            f"output of type {_type_of(value)} is not a str",
            "the handler is annotated to return str: return a str, or change the annotation",
        )


def _json_default(value: Any) -> Any:
    """Lets json.dumps write dataclass instances as objects, field by field."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"a {_type_of(value)} is not JSON serializable")


def _dump_json(value: Any) -> bytes:
    try:
        text = json.dumps(
            value, default=_json_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise PayloadError(
            f"output of type {_type_of(value)} cannot be written as JSON: {e}",
            "return dicts, lists, str, int, float, bool, None or dataclass instances",
        ) from e
    return text.encode("utf-8")


@dataclass(frozen=True)
class JsonCodec:
    """JSON text; decoded values are checked (and dataclasses built) by `convert`."""

    name: str
    convert: _Convert

    def decode(self, payload: bytes) -> Any:
        try:
            value = json.loads(bytes(payload))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise PayloadError(
                f"payload is not valid JSON: {e}",
                f"send JSON text, or annotate the input as bytes or str ({self.name} expected)",
            ) from e
        return self.convert(value, "$")

    def encode(self, value: Any) -> bytes:
        return _dump_json(value)


@dataclass(frozen=True)
class AutoCodec:
    """Encodes an output by its runtime type; used when the return type says nothing."""

    name: str = "by type"

    def decode(self, payload: bytes) -> Any:
        return bytes(payload)

    def encode(self, value: Any) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict | list | tuple | int | float) or (
            dataclasses.is_dataclass(value) and not isinstance(value, type)
        ):
            return _dump_json(value)
        raise PayloadError(
            f"cannot encode an output of type {_type_of(value)}",
            "return bytes (sent as is), str (UTF-8), or a dict, list, int, float, bool or "
            "dataclass instance (JSON); return None for no output",
        )


AUTO: Codec = AutoCodec()
RAW: Codec = RawCodec()
TEXT: Codec = TextCodec()


@dataclass(frozen=True)
class SerdeCodec:
    """One of Pulsar's serdes (or the user's), called exactly as Pulsar's instance calls it."""

    name: str
    serde: SerDe

    def decode(self, payload: bytes) -> Any:
        try:
            return self.serde.deserialize(bytes(payload))
        except Exception as e:
            raise PayloadError(f"{self.name} could not deserialize the payload: {e!r}") from e

    def encode(self, value: Any) -> bytes:
        try:
            out = self.serde.serialize(value)
        except Exception as e:
            raise PayloadError(
                f"{self.name} could not serialize an output of type {_type_of(value)}: {e}",
                "Pulsar's default IdentitySerDe sends str, int, float, complex and bytes only",
            ) from e
        if isinstance(out, bytes | bytearray | memoryview):
            return bytes(out)
        raise PayloadError(
            f"{self.name}.serialize returned {_type_of(out)}, not bytes",
            "a serde's serialize must return bytes",
        )


def pulsar_serde(class_name: str = "") -> Codec:
    """Pulsar's serde `class_name` ("" = its default, IdentitySerDe) as a Codec.

    A class name that cannot be imported or instantiated is a ConfigError (it comes from
    configuration: serdeClassName / outputSerdeClassName).
    """
    return SerdeCodec(f"Pulsar {canonical_name(class_name)}", load_serde(class_name))


class _UnsupportedError(Exception):
    """An annotation (or a part of one) that no codec can honour."""


def type_label(tp: Any) -> str:
    """A short readable name for an annotation: `list[Order]`, `str | None`."""
    if tp is None or tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_label(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None and args:
        name = getattr(origin, "__qualname__", None) or repr(origin).replace("typing.", "")
        return f"{name}[{', '.join(type_label(a) for a in args)}]"
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _mismatch(path: str, expected: str, value: Any) -> PayloadError:
    return PayloadError(
        f"payload {path}: expected {expected}, got {_type_of(value)} {_preview(value)}",
        "send JSON matching the handler's input annotation",
    )


def _preview(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _scalar(label: str, check: Callable[[Any], bool], cast: Callable[[Any], Any]) -> _Convert:
    def convert(value: Any, path: str) -> Any:
        if not check(value):
            raise _mismatch(path, label, value)
        return cast(value)

    return convert


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(value: Any) -> Any:
    return value


_SCALARS: dict[Any, _Convert] = {
    str: _scalar("a string", lambda v: isinstance(v, str), _same),
    bool: _scalar("true or false", lambda v: isinstance(v, bool), _same),
    int: _scalar("an integer", lambda v: _number(v) and isinstance(v, int), _same),
    float: _scalar("a number", _number, float),
    type(None): _scalar("null", lambda v: v is None, _same),
}


def _identity(value: Any, path: str) -> Any:
    return value


class _Converters:
    """Builds converters for a type tree once; dataclasses are memoised so recursion works."""

    def __init__(self) -> None:
        self._dataclasses: dict[type, _Convert] = {}

    def build(self, tp: Any) -> _Convert:
        if tp is Any or tp is object:
            return _identity
        if tp is None:
            tp = type(None)
        try:
            scalar = _SCALARS.get(tp)
        except TypeError:  # an unhashable annotation object: not a type at all
            raise _UnsupportedError(f"{tp!r} is not a type") from None
        if scalar is not None:
            return scalar
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is dict or origin is dict:
            return self._dict(args)
        if tp is list or origin is list:
            return self._list(args)
        if origin is typing.Union or origin is types.UnionType:
            return self._union(tp, args)
        if origin is Literal:
            return self._literal(tp, args)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._dataclass(tp)
        raise _UnsupportedError(f"{type_label(tp)} is not a JSON type")

    def _dict(self, args: tuple[Any, ...]) -> _Convert:
        key, val = args or (str, Any)
        if key not in (str, Any):
            raise _UnsupportedError(f"JSON object keys are strings, not {type_label(key)}")
        item = self.build(val)

        def convert(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise _mismatch(path, "a JSON object", value)
            return {k: item(v, f"{path}.{k}") for k, v in value.items()}

        return convert

    def _list(self, args: tuple[Any, ...]) -> _Convert:
        item = self.build(args[0] if args else Any)

        def convert(value: Any, path: str) -> Any:
            if not isinstance(value, list):
                raise _mismatch(path, "a JSON array", value)
            return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return convert

    def _union(self, tp: Any, args: tuple[Any, ...]) -> _Convert:
        members = [self.build(a) for a in args]
        label = type_label(tp)

        def convert(value: Any, path: str) -> Any:
            for member in members:
                try:
                    return member(value, path)
                except PayloadError:
                    continue
            raise _mismatch(path, label, value)

        return convert

    def _literal(self, tp: Any, args: tuple[Any, ...]) -> _Convert:
        label = type_label(tp)

        def convert(value: Any, path: str) -> Any:
            if any(value == a and type(value) is type(a) for a in args):
                return value
            raise _mismatch(path, label, value)

        return convert

    def _dataclass(self, cls: type) -> _Convert:
        if cls in self._dataclasses:
            return self._dataclasses[cls]
        fields: dict[str, _Convert] = {}
        required: set[str] = set()

        def convert(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise _mismatch(path, f"a JSON object for {cls.__qualname__}", value)
            unknown = sorted(set(value) - set(fields))
            missing = sorted(required - set(value))
            if unknown or missing:
                parts = [f"unknown key(s) {', '.join(map(repr, unknown))}"] if unknown else []
                parts += [f"missing key(s) {', '.join(map(repr, missing))}"] if missing else []
                raise PayloadError(
                    f"payload {path}: does not fit {cls.__qualname__}: {'; '.join(parts)}",
                    f"{cls.__qualname__} has the keys {', '.join(map(repr, fields)) or 'none'}",
                )
            kwargs = {k: fields[k](v, f"{path}.{k}") for k, v in value.items()}
            try:
                return cls(**kwargs)
            except Exception as e:  # a __post_init__ that rejects the values
                raise PayloadError(f"payload {path}: {cls.__qualname__}(...) failed: {e}") from e

        self._dataclasses[cls] = convert  # before the fields: a field may refer back to cls
        try:
            hints = typing.get_type_hints(cls)
        except Exception as e:
            raise _UnsupportedError(f"the field annotations of {cls.__qualname__} fail: {e}") from e
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            fields[f.name] = self.build(hints.get(f.name, Any))
            no_default = f.default is dataclasses.MISSING
            if no_default and f.default_factory is dataclasses.MISSING:
                required.add(f.name)
        return convert


def without_none(tp: Any) -> Any:
    """X for Optional[X] (None never arrives as a whole payload), else tp unchanged."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def codec_for(annotation: Any) -> Codec:
    """The codec an input (or declared output) annotation asks for; HandlerError if none fits."""
    if isinstance(annotation, str):
        raise HandlerError(
            f"annotation {annotation!r} could not be resolved to a type",
            "define or import that type at module level (not only under TYPE_CHECKING)",
        )
    bare = without_none(annotation)
    if bare in (inspect.Parameter.empty, Any, object, bytes, memoryview):
        return RAW
    if bare is bytearray:
        return RawCodec("bytearray")
    if bare is str:
        return TEXT
    try:
        convert = _Converters().build(annotation)
    except _UnsupportedError as e:
        raise HandlerError(
            f"annotation {type_label(annotation)} is not supported as a payload type: {e}",
            f"annotate with {SUPPORTED_ANNOTATIONS}",
        ) from e
    return JsonCodec(f"JSON {type_label(bare)}", convert)
