"""codec_for and AUTO: which annotation gives which codec, and what each accepts and refuses."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union  # noqa: UP035 - old spellings are tested

import pytest

from pulsarfunc.runtime.codec import AUTO, codec_for
from pulsarfunc.runtime.errors import HandlerError, PayloadError


@dataclass
class Item:
    name: str
    qty: int = 1


@dataclass
class Order:
    id: str
    items: list[Item]
    note: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Node:
    value: int
    children: list[Node] = field(default_factory=list)


@dataclass
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("n must be positive")


@dataclass
class Computed:
    a: int
    b: int = dataclasses.field(init=False, default=0)


@pytest.mark.parametrize(
    ("annotation", "name"),
    [
        (inspect.Parameter.empty, "bytes"),
        (Any, "bytes"),
        (object, "bytes"),
        (bytes, "bytes"),
        (Optional[bytes], "bytes"),  # noqa: UP045
        (bytearray, "bytearray"),
        (str, "str"),
        (str | None, "str"),
        (dict, "JSON dict"),
        (Dict[str, int], "JSON dict[str, int]"),  # noqa: UP006
        (list, "JSON list"),
        (List[str], "JSON list[str]"),  # noqa: UP006
        (dict[str, list[Item]], "JSON dict[str, list[Item]]"),
        (int, "JSON int"),
        (float, "JSON float"),
        (bool, "JSON bool"),
        (Order, "JSON Order"),
        (Order | None, "JSON Order"),
        (Union[int, str], "JSON int | str"),  # noqa: UP007
        (Literal["a", "b"], "JSON Literal['a', 'b']"),
    ],
)
def test_codec_names(annotation: Any, name: str) -> None:
    assert codec_for(annotation).name == name


def test_raw_is_the_payload_unchanged() -> None:
    assert codec_for(bytes).decode(b"\xff\x00") == b"\xff\x00"
    assert codec_for(bytearray).decode(b"ab") == bytearray(b"ab")
    assert codec_for(bytes).encode(memoryview(b"xy")) == b"xy"


def test_raw_refuses_text_output() -> None:
    with pytest.raises(PayloadError, match="output of type str cannot be sent as raw bytes"):
        codec_for(bytes).encode("text")


def test_text_is_strict_utf8() -> None:
    codec = codec_for(str)
    assert codec.decode("h\u00e9".encode()) == "h\u00e9"
    assert codec.encode("h\u00e9") == "h\u00e9".encode()
    with pytest.raises(PayloadError, match="not UTF-8 text: invalid start byte at byte 1"):
        codec.decode(b"a\xff")


def test_text_refuses_non_str_output() -> None:
    with pytest.raises(PayloadError, match="output of type int is not a str"):
        codec_for(str).encode(5)


def test_json_dict_and_list() -> None:
    assert codec_for(dict).decode(b'{"a": [1, null]}') == {"a": [1, None]}
    assert codec_for(list[int]).decode(b"[1, 2]") == [1, 2]
    assert codec_for(dict[str, float]).decode(b'{"x": 1}') == {"x": 1.0}
    assert codec_for(dict).encode({"a": "\u00e9"}) == '{"a":"\u00e9"}'.encode()


@pytest.mark.parametrize(
    ("annotation", "payload", "message"),
    [
        (dict, b"[1]", r"payload \$: expected a JSON object, got list \[1\]"),
        (list[int], b'[1, "2"]', r"payload \$\[1\]: expected an integer, got str"),
        (dict[str, bool], b'{"on": 1}', r"payload \$\.on: expected true or false, got int"),
        (int, b"true", "expected an integer, got bool"),
        (Literal["a", "b"], b'"c"', r"expected Literal\['a', 'b'\]"),
        (Union[int, str], b"[1]", "expected int | str"),  # noqa: UP007
        (dict, b"{not json", "payload is not valid JSON"),
        (dict, b"\xff", "payload is not valid JSON"),
    ],
)
def test_json_mismatch_says_where_and_what(annotation: Any, payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        codec_for(annotation).decode(payload)


def test_optional_json_accepts_null() -> None:
    assert codec_for(Optional[dict]).decode(b"null") is None  # noqa: UP045
    with pytest.raises(PayloadError):
        codec_for(dict).decode(b"null")


def test_dataclass_nested() -> None:
    order = codec_for(Order).decode(
        b'{"id": "o1", "items": [{"name": "a"}, {"name": "b", "qty": 3}], "note": null}'
    )
    assert order == Order("o1", [Item("a"), Item("b", 3)], None, [])


def test_dataclass_recursive() -> None:
    tree = codec_for(Node).decode(b'{"value": 1, "children": [{"value": 2}]}')
    assert tree == Node(1, [Node(2)])


def test_dataclass_unknown_keys_are_named() -> None:
    with pytest.raises(PayloadError, match=r"\$\.items\[0\]: .*unknown key\(s\) 'colour', 'qtty'"):
        codec_for(Order).decode(b'{"id": "o", "items": [{"name": "a", "qtty": 1, "colour": 2}]}')


def test_dataclass_missing_keys_are_named() -> None:
    with pytest.raises(PayloadError, match=r"missing key\(s\) 'id', 'items'") as info:
        codec_for(Order).decode(b"{}")
    assert "'id', 'items', 'note', 'tags'" in info.value.hint


def test_dataclass_field_type_is_checked() -> None:
    with pytest.raises(PayloadError, match=r"\$\.items\[0\]\.qty: expected an integer"):
        codec_for(Order).decode(b'{"id": "o", "items": [{"name": "a", "qty": "1"}]}')


def test_dataclass_post_init_failure_fails_the_message() -> None:
    with pytest.raises(PayloadError, match=r"Positive.*n must be positive"):
        codec_for(Positive).decode(b'{"n": 0}')


def test_dataclass_init_false_field_is_not_a_key() -> None:
    assert codec_for(Computed).decode(b'{"a": 1}') == Computed(1)
    with pytest.raises(PayloadError, match="unknown key"):
        codec_for(Computed).decode(b'{"a": 1, "b": 2}')


def test_dataclass_encodes_as_json_object() -> None:
    assert codec_for(Order).encode(Order("o", [Item("a")])) == (
        b'{"id":"o","items":[{"name":"a","qty":1}],"note":null,"tags":[]}'
    )


@dataclass
class HasSet:
    tags: set[str]


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        (set, "set is not a JSON type"),
        (tuple[int, int], r"tuple\[int, int\] is not a JSON type"),
        (dict[int, str], "JSON object keys are strings, not int"),
        (HasSet, r"set\[str\] is not a JSON type"),
        (Union[str, bytes], "bytes is not a JSON type"),  # noqa: UP007
        (complex, "complex is not a JSON type"),
    ],
)
def test_unsupported_annotations_fail_at_inspection(annotation: Any, reason: str) -> None:
    with pytest.raises(HandlerError, match=reason) as info:
        codec_for(annotation)
    assert "annotate with bytes (the default), str" in str(info.value)


@pytest.mark.parametrize(
    ("value", "payload"),
    [
        (b"raw", b"raw"),
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"mv"), b"mv"),
        ("text", b"text"),
        ({"a": 1}, b'{"a":1}'),
        ([1, "x"], b'[1,"x"]'),
        ((1, 2), b"[1,2]"),
        (3, b"3"),
        (2.5, b"2.5"),
        (True, b"true"),
        (Item("a"), b'{"name":"a","qty":1}'),
        ({"nested": Item("b", 2)}, b'{"nested":{"name":"b","qty":2}}'),
    ],
)
def test_auto_encodes_by_type(value: Any, payload: bytes) -> None:
    assert AUTO.encode(value) == payload


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "cannot encode an output of type NoneType"),
        ({1, 2}, "cannot encode an output of type set"),
        (Item, "cannot encode an output of type type"),
        ({"a": {1}}, "output of type dict cannot be written as JSON: a set is not JSON"),
        (float("nan"), "cannot be written as JSON: Out of range float"),
    ],
)
def test_auto_refuses_what_it_cannot_encode(value: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message) as info:
        AUTO.encode(value)
    assert "return" in info.value.hint


def test_auto_decodes_raw() -> None:
    assert AUTO.decode(b"\x01") == b"\x01"
