"""Pulsar serde emulation: same objects in and same bytes out as pulsar-client's own serdes."""

from __future__ import annotations

import math
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pulsar.functions import serde as pulsar_serdes

from pulsarfunc.runtime.codec import pulsar_serde
from pulsarfunc.runtime.errors import ConfigError, PayloadError
from pulsarfunc.runtime.serde import IdentitySerDe, PickleSerDe, canonical_name, load_serde

PAYLOADS = [
    b"42",
    b" -7 ",
    b"1_000",
    b"3.25",
    b"1e3",
    b"inf",
    b"2j",
    b"hello",
    b"",
    "h\u00e9llo".encode(),
    b"\xff\xfe",
    b'{"a": 1}',
]
OUTPUTS: list[Any] = [42, -1.5, 2j, "text", "\u00e9", b"\x00raw"]
REFUSED: list[Any] = [True, None, {"a": 1}, [1], bytearray(b"x")]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_identity_deserialize_matches_pulsar(payload: bytes) -> None:
    ours, theirs = (
        IdentitySerDe().deserialize(payload),
        pulsar_serdes.IdentitySerDe().deserialize(payload),
    )
    assert type(ours) is type(theirs)
    assert ours == theirs or (math.isnan(ours) and math.isnan(theirs))


def test_identity_deserialize_types() -> None:
    decode = pulsar_serde().decode
    assert [type(decode(p)) for p in (b"42", b"4.5", b"2j", b"hi", b"\xff")] == [
        int,
        float,
        complex,
        str,
        bytes,
    ]


@pytest.mark.parametrize("value", OUTPUTS)
def test_identity_serialize_matches_pulsar(value: Any) -> None:
    assert pulsar_serde().encode(value) == pulsar_serdes.IdentitySerDe().serialize(value)


@pytest.mark.parametrize("value", REFUSED)
def test_identity_refuses_what_pulsar_refuses(value: Any) -> None:
    with pytest.raises(TypeError):
        pulsar_serdes.IdentitySerDe().serialize(value)
    with pytest.raises(PayloadError, match=type(value).__name__):
        pulsar_serde().encode(value)


def test_pickle_round_trip_is_compatible_with_pulsar() -> None:
    value = {"k": [1, 2.5, "x"]}
    codec = pulsar_serde("serde.PickleSerDe")
    assert pulsar_serdes.PickleSerDe().deserialize(codec.encode(value)) == value
    assert codec.decode(pulsar_serdes.PickleSerDe().serialize(value)) == value
    assert codec.name == "Pulsar serde.PickleSerDe"


def test_pickle_bad_payload_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="could not deserialize"):
        pulsar_serde("serde.PickleSerDe").decode(b"not a pickle")


@pytest.mark.parametrize(
    ("name", "kind", "canonical"),
    [
        ("", IdentitySerDe, "serde.IdentitySerDe"),
        ("serde.IdentitySerDe", IdentitySerDe, "serde.IdentitySerDe"),
        ("pulsar.functions.serde.IdentitySerDe", IdentitySerDe, "serde.IdentitySerDe"),
        ("pulsar.IdentitySerDe", IdentitySerDe, "serde.IdentitySerDe"),
        ("pulsar.functions.serde.PickleSerDe", PickleSerDe, "serde.PickleSerDe"),
    ],
)
def test_builtin_names(name: str, kind: type, canonical: str) -> None:
    assert isinstance(load_serde(name), kind)
    assert canonical_name(name) == canonical


@pytest.fixture
def serde_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A custom serde module on sys.path, removed again afterwards."""
    name = "pulsarfunc_test_custom_serde"
    (tmp_path / f"{name}.py").write_text(
        "class Upper:\n"
        "    def serialize(self, input):\n"
        "        return input.upper().encode()\n"
        "    def deserialize(self, input_bytes):\n"
        "        return input_bytes.decode().lower()\n"
        "class NeedsArg:\n"
        "    def __init__(self, x): pass\n"
        "class NoMethods:\n"
        "    pass\n"
        "class ReturnsStr:\n"
        "    def serialize(self, input): return 'text'\n"
        "    def deserialize(self, input_bytes): return input_bytes\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_custom_serde_by_dotted_name(serde_module: str) -> None:
    codec = pulsar_serde(f"{serde_module}.Upper")
    assert codec.name == f"Pulsar {serde_module}.Upper"
    assert codec.decode(b"ABC") == "abc"
    assert codec.encode("abc") == b"ABC"


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("Missing", "could not be imported"),
        ("NeedsArg", "could not be instantiated with no arguments"),
        ("NoMethods", "has no serialize or deserialize method"),
    ],
)
def test_bad_custom_serde_is_a_config_error(serde_module: str, attr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        pulsar_serde(f"{serde_module}.{attr}")
    assert f"{serde_module}.{attr}" in str(info.value)


def test_serde_returning_non_bytes_is_a_payload_error(serde_module: str) -> None:
    with pytest.raises(PayloadError, match="returned str, not bytes"):
        pulsar_serde(f"{serde_module}.ReturnsStr").encode("x")


@pytest.mark.parametrize("name", ["NoModule", "pulsarfunc_no_such_module_xyz.Serde"])
def test_unimportable_serde_names(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_serde(name)


def test_pickle_serde_matches_pickle() -> None:
    assert PickleSerDe().serialize([1]) == pickle.dumps([1])
