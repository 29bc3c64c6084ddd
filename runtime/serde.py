"""Pulsar's Python serdes, reimplemented so the runtime never has to import `pulsar` for them.

Existing Pulsar Python functions (a `pulsar.Function` subclass, or a module-level `process(input)`)
must see exactly the objects Pulsar's own instance hands them. What that instance does
(`python_instance.py`, `util.py` and pulsar-client's `pulsar/functions/serde.py`, Pulsar 2.x-4.x):

- With no serde configured, input AND output use `serde.IdentitySerDe` (`DEFAULT_SERIALIZER`).
- `IdentitySerDe.deserialize(data)`: decode as UTF-8 and try `int`, `float`, `complex`, `str` in
  that order, so `b"42"` arrives as the int 42, `b"hi"` as "hi"; not UTF-8 -> the bytes as is.
- `IdentitySerDe.serialize(value)`: `str(value).encode()` when `type(value)` is exactly int, float,
  complex or str (so `True` is refused); bytes as is; anything else is a TypeError.
- `PickleSerDe`: `pickle.dumps` / `pickle.loads`.
- A configured class name is imported (`module.Class`, the module `serde` meaning pulsar-client's
  serde module) and instantiated with no arguments; its serialize/deserialize are used as is.
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any, Protocol

from pulsarfunc.runtime.errors import ConfigError

DEFAULT_SERDE = "serde.IdentitySerDe"


class SerDe(Protocol):
    """What Pulsar's instance calls on a serde object (pulsar-client's abstract `SerDe`)."""

    def serialize(self, input: Any) -> Any: ...  # Pulsar's parameter name

    def deserialize(self, input_bytes: bytes) -> Any: ...


class IdentitySerDe:
    """Pulsar's default serde: numbers and text in, their text out (see the module docstring)."""

    _types: tuple[type, ...] = (int, float, complex, str)

    def serialize(self, input: Any) -> bytes:
        if type(input) in self._types:
            return str(input).encode("utf-8")
        if type(input) is bytes:
            return input
        raise TypeError(f"IdentitySerde cannot serialize object of type {type(input)}")

    def deserialize(self, input_bytes: bytes) -> Any:
        for typ in self._types:
            try:
                return typ(input_bytes.decode("utf-8"))
            except Exception:  # Pulsar's own catch-all, on purpose
                continue
        return input_bytes


class PickleSerDe:
    """Pulsar's pickle serde: any picklable object, Python-only on the wire."""

    def serialize(self, input: Any) -> bytes:
        return pickle.dumps(input)

    def deserialize(self, input_bytes: bytes) -> Any:
        return pickle.loads(input_bytes)  # what Pulsar does; the user opted in


_BUILTIN: dict[str, type[IdentitySerDe] | type[PickleSerDe]] = {}
for _module in ("serde", "pulsar.functions.serde", "pulsar"):
    _BUILTIN[f"{_module}.IdentitySerDe"] = IdentitySerDe
    _BUILTIN[f"{_module}.PickleSerDe"] = PickleSerDe


def canonical_name(class_name: str) -> str:
    """The name Pulsar would report: the default for "", built-ins as `serde.X`."""
    if not class_name:
        return DEFAULT_SERDE
    builtin = _BUILTIN.get(class_name)
    return f"serde.{builtin.__name__}" if builtin else class_name


def load_serde(class_name: str = "") -> SerDe:
    """Instantiate the serde Pulsar would use for `class_name` ("" = the default).

    Built-in names map to the emulations above; any other `module.Class` is imported from
    `sys.path` (discovery has already put the function's directory there) and called with no
    arguments, as Pulsar does. Fails with a ConfigError naming the class and why.
    """
    builtin = _BUILTIN.get(class_name or DEFAULT_SERDE)
    if builtin is not None:
        return builtin()
    module_name, _, attr = class_name.rpartition(".")
    hint = "give the serde as module.Class, importable from the function's directory"
    if not module_name or not attr:
        raise ConfigError(f"serde class {class_name!r} is not of the form module.Class", hint)
    try:
        kclass = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"serde class {class_name!r} could not be imported: {e}", hint) from e
    try:
        serde = kclass()
    except Exception as e:
        raise ConfigError(
            f"serde class {class_name!r} could not be instantiated with no arguments: {e}",
            "Pulsar creates serdes as SerdeClass(); give __init__ no required parameters",
        ) from e
    missing = [m for m in ("serialize", "deserialize") if not callable(getattr(serde, m, None))]
    if missing:
        found = [m for m in dir(serde) if not m.startswith("_") and callable(getattr(serde, m))]
        raise ConfigError(
            f"serde class {class_name!r} has no {' or '.join(missing)} method "
            f"(found: {', '.join(found) or 'no public methods'})",
            "a serde implements serialize(self, input) -> bytes and deserialize(self, input_bytes)",
        )
    return serde  # type: ignore[no-any-return]
