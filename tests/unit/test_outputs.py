"""Output messages, effectively-once ids and producer names; shortcuts equal to the plain path."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import pytest
from fake_broker import FakeId, FakeMessage

from pulsarfunc.runtime.codec import RAW, TEXT, Codec
from pulsarfunc.runtime.config import FunctionConfig, InputSpec, ProcessingGuarantee
from pulsarfunc.runtime.errors import PayloadError
from pulsarfunc.runtime.naming import effectively_once_producer, output_sequence_id
from pulsarfunc.runtime.outputs import Outputs
from pulsarfunc.runtime.transport import OutMessage

IN = "persistent://public/default/in"
OUT = "persistent://public/default/out"
FQFN = "public/default/fn"
EFFECTIVELY_ONCE = ProcessingGuarantee.EFFECTIVELY_ONCE


def config(**fields: Any) -> FunctionConfig:
    fields.setdefault("name", "fn")
    fields.setdefault("output", OUT)
    fields.setdefault("inputs", (InputSpec(IN),))
    return FunctionConfig(**fields)


def outputs(codec: Codec = RAW, **fields: Any) -> Outputs:
    return Outputs(config(**fields), codec)


def once(codec: Codec = RAW, **fields: Any) -> Outputs:
    return outputs(codec, processing_guarantee=EFFECTIVELY_ONCE, **fields)


# -- output_sequence_id ----------------------------------------------------------------------------

ENTRIES = [0, 1, 2, 1023, 1 << 20, (1 << 40) - 2, (1 << 40) - 1]
BATCH_INDEXES = [-1, 0, 1, 1022, 1023, 1024, 5000, (1 << 19) - 2]
OUTPUT_INDEXES = [0, 1, 7, 15]


def test_output_sequence_ids_increase_strictly_in_entry_batch_output_order() -> None:
    ids = [
        output_sequence_id(entry, batch, output)
        for entry, batch, output in itertools.product(ENTRIES, BATCH_INDEXES, OUTPUT_INDEXES)
    ]
    assert all(earlier < later for earlier, later in itertools.pairwise(ids))


def test_output_sequence_ids_fit_a_signed_64_bit_integer() -> None:
    ids = [
        output_sequence_id(entry, batch, output)
        for entry, batch, output in itertools.product(ENTRIES, BATCH_INDEXES, OUTPUT_INDEXES)
    ]
    assert min(ids) == 0
    assert max(ids) == output_sequence_id((1 << 40) - 1, (1 << 19) - 2, 15) == (1 << 63) - 1


def test_a_batch_of_5000_messages_with_three_outputs_each_gets_distinct_ids() -> None:
    ids = {
        output_sequence_id(entry, batch, output)
        for entry in (41, 42)
        for batch in range(5000)
        for output in range(3)
    }
    assert len(ids) == 2 * 5000 * 3


@pytest.mark.parametrize(
    ("entry", "batch_index", "output_index", "names"),
    [
        (0, -1, 16, "output 17"),
        (0, -1, -1, "output 0"),
        (0, (1 << 19) - 1, 0, "batch index"),
        (0, 1 << 19, 0, "batch index"),
        (0, -2, 0, "batch index"),
        (1 << 40, -1, 0, "entry id"),
        (-1, -1, 0, "entry id"),
    ],
)
def test_an_out_of_range_part_raises_value_error_naming_it(
    entry: int, batch_index: int, output_index: int, names: str
) -> None:
    with pytest.raises(ValueError, match=names):
        output_sequence_id(entry, batch_index, output_index)


# -- effectively_once_producer ---------------------------------------------------------------------


def test_the_producer_name_takes_any_unsigned_64_bit_ledger_id() -> None:
    ledgers = [0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    names = [effectively_once_producer(FQFN, IN, ledger) for ledger in ledgers]
    assert len(set(names)) == len(ledgers)
    assert all(name.endswith(str(ledger)) for name, ledger in zip(names, ledgers, strict=True))


def test_producer_names_of_different_inputs_never_collide() -> None:
    parts = [
        (FQFN, "persistent://public/default/in:a", 1),
        (FQFN, "persistent://public/default/in_a", 1),
        (FQFN, "persistent://public/default/in@1", 2),
        (FQFN, "persistent://public/default/in@12", 3),
        (FQFN, "persistent://public/default/in", 12),
        (FQFN, "persistent://public/default/in", 123),
        (FQFN, "persistent://public/default/in@1@2", 3),
        (FQFN, "persistent://public/default/in_1", 23),
        ("public/default/fn_persistent", "persistent://public/default/in", 1),
        ("public/default_fn", "persistent://public/default/in", 1),
        ("public/default/fn:x", "persistent://public/default/in", 1),
    ]
    names = [effectively_once_producer(*part) for part in parts]
    assert len(set(names)) == len(parts)


def test_the_producer_name_holds_the_partition_and_the_function_and_no_instance_id() -> None:
    partition = "persistent://public/default/in-partition-3"
    msg = FakeMessage(b"x", topic=partition, mid=FakeId(9, 4))
    names = {once(instance_id=i).build(msg, b"out", 0).producer_name for i in (0, 1, 7)}
    assert names == {effectively_once_producer(FQFN, partition, 9)}
    (name,) = names
    assert name is not None
    assert partition in name
    assert FQFN in name


# -- Outputs.build under effectively-once ----------------------------------------------------------


def test_effectively_once_outputs_get_the_sequence_id_and_producer_of_their_input() -> None:
    msg = FakeMessage(b"in", key="k", event_ts=5, mid=FakeId(7, 1234, 1500))
    built = [once(TEXT).build(msg, f"out{n}", n) for n in range(3)]
    assert [out.sequence_id for out in built] == [
        output_sequence_id(1234, 1500, n) for n in range(3)
    ]
    assert {out.producer_name for out in built} == {effectively_once_producer(FQFN, IN, 7)}
    assert [out.payload for out in built] == [b"out0", b"out1", b"out2"]
    assert built[0] == OutMessage(
        OUT,
        b"out0",
        "k",
        {
            "__pfn_input_topic__": IN,
            "__pfn_input_msg_id__": base64.b64encode(b"7:1234:1500").decode(),
        },
        5,
        output_sequence_id(1234, 1500, 0),
        effectively_once_producer(FQFN, IN, 7),
    )


def test_the_sequence_id_does_not_depend_on_the_ledger_id() -> None:
    small = once().build(FakeMessage(b"x", mid=FakeId(7, 5, 3)), b"out", 2)
    huge = once().build(FakeMessage(b"x", mid=FakeId((1 << 64) - 1, 5, 3)), b"out", 2)
    assert small.sequence_id == huge.sequence_id == output_sequence_id(5, 3, 2)
    assert huge.producer_name == effectively_once_producer(FQFN, IN, (1 << 64) - 1)


def test_a_17th_output_of_one_input_is_a_payload_error_naming_the_problem() -> None:
    msg = FakeMessage(b"x", mid=FakeId(7, 8))
    built = once().build(msg, b"out", 15)
    assert built.sequence_id == output_sequence_id(8, -1, 15)
    with pytest.raises(PayloadError) as raised:
        once().build(msg, b"out", 16)
    assert "output 17 of one input" in raised.value.problem
    assert IN in raised.value.problem
    assert str(msg.mid) in raised.value.problem
    assert "ATLEAST_ONCE" in raised.value.hint


def test_an_output_of_a_batch_index_out_of_range_is_a_payload_error() -> None:
    msg = FakeMessage(b"x", mid=FakeId(7, 8, 1 << 19))
    with pytest.raises(PayloadError, match="batch index"):
        once().build(msg, b"out", 0)


# -- the shortcuts give what the plain path gives --------------------------------------------------


@pytest.mark.parametrize("value", [b"bytes", b"", bytearray(b"array"), memoryview(b"view")])
def test_raw_outputs_have_the_payload_the_codec_encodes(value: Any) -> None:
    out = outputs(RAW).build(FakeMessage(b"in"), value, 0)
    assert out.payload == RAW.encode(value)
    assert type(out.payload) is bytes
    assert outputs(RAW).encode(value) == RAW.encode(value)


def test_a_raw_output_that_is_not_bytes_is_the_codecs_payload_error() -> None:
    with pytest.raises(PayloadError, match="raw bytes"):
        outputs(RAW).build(FakeMessage(b"in"), "text", 0)


def test_text_outputs_have_the_payload_the_codec_encodes() -> None:
    assert outputs(TEXT).build(FakeMessage(b"in"), "héllo", 0).payload == TEXT.encode("héllo")
    with pytest.raises(PayloadError, match="not a str"):
        outputs(TEXT).build(FakeMessage(b"in"), b"bytes", 0)


def plain(msg: FakeMessage, payload: bytes, properties: dict[str, str]) -> OutMessage:
    """The output as the NamedTuple's own constructor builds it, field by field."""
    return OutMessage(
        topic=OUT,
        payload=payload,
        key=msg.partition_key() or None,
        properties=properties,
        event_timestamp=msg.event_timestamp() or None,
        sequence_id=None,
        producer_name=None,
    )


def stamps(msg: FakeMessage) -> dict[str, str]:
    return {
        "__pfn_input_topic__": msg.topic,
        "__pfn_input_msg_id__": base64.b64encode(msg.mid.serialize()).decode("ascii"),
    }


@pytest.mark.parametrize(
    "msg",
    [
        FakeMessage(b"in", key="k", event_ts=42, mid=FakeId(3, 4, 5)),
        FakeMessage(b"in"),  # no key, no event time: None, as Pulsar leaves them unset
    ],
)
def test_a_built_output_equals_the_one_the_constructor_builds(msg: FakeMessage) -> None:
    out = outputs(RAW).build(msg, b"out", 0)
    expected = plain(msg, b"out", stamps(msg))
    assert out == expected
    assert type(out) is OutMessage
    assert out._fields == expected._fields
    assert out._asdict() == expected._asdict()
    assert out.key == expected.key
    assert out.event_timestamp == expected.event_timestamp


def test_forwarded_input_properties_are_merged_under_the_pfn_properties() -> None:
    msg = FakeMessage(
        b"in",
        key="k",
        props={"colour": "blue", "__pfn_input_topic__": "spoofed", "__pfn_input_msg_id__": "x"},
        topic="persistent://public/default/in-partition-1",
        event_ts=9,
        mid=FakeId(11, 12, 13),
    )
    out = outputs(RAW, forward_source_message_property=True).build(msg, b"out", 0)
    expected = plain(msg, b"out", {"colour": "blue", **stamps(msg)})
    assert out == expected
    assert out._asdict() == expected._asdict()
    assert out.properties == {
        "colour": "blue",
        "__pfn_input_topic__": "persistent://public/default/in-partition-1",
        "__pfn_input_msg_id__": base64.b64encode(b"11:12:13").decode(),
    }


def test_input_properties_are_not_forwarded_by_default() -> None:
    msg = FakeMessage(b"in", props={"colour": "blue"})
    out = outputs(RAW).build(msg, b"out", 0)
    assert out.properties == stamps(msg)


@pytest.mark.parametrize("forward", [False, True])
@pytest.mark.parametrize("build", [outputs, once], ids=["at-least-once", "effectively-once"])
def test_no_input_properties_leaves_only_what_else_was_asked_for(build: Any, forward: bool) -> None:
    """--no-input-properties drops the two stamps and nothing else: key, event time, the
    forwarded properties and effectively-once's sequence id and producer stay as they were."""
    msg = FakeMessage(b"in", key="k", event_ts=9, props={"colour": "blue"}, mid=FakeId(7, 8, 9))
    stamped = build(RAW, forward_source_message_property=forward).build(msg, b"out", 1)
    bare = build(RAW, forward_source_message_property=forward, input_properties=False)
    out = bare.build(msg, b"out", 1)
    assert out.properties == ({"colour": "blue"} if forward else None)
    assert out._replace(properties=None) == stamped._replace(properties=None)
    assert stamped.properties is not None
    assert "__pfn_input_msg_id__" in stamped.properties


def test_no_input_properties_forwards_no_empty_mapping() -> None:
    bare = outputs(RAW, forward_source_message_property=True, input_properties=False)
    assert bare.build(FakeMessage(b"in"), b"out", 0).properties is None


def test_a_topic_the_source_knows_is_stamped_without_asking_the_message() -> None:
    class Mute(FakeMessage):
        def topic_name(self) -> str:
            raise AssertionError("asked the message for its topic")

    msg = Mute(b"in", key="k", mid=FakeId(1, 2, 3))
    out = outputs().build(msg, b"out", 0, IN)
    assert out == plain(msg, b"out", {**stamps(FakeMessage(b"in", mid=FakeId(1, 2, 3)))})
    box = outputs().outbox(IN)
    box.put(0, msg, b"out")
    assert box.outs == [out]


def test_the_input_message_id_property_decodes_to_the_serialized_id() -> None:
    msg = FakeMessage(b"in", mid=FakeId(21, 22, 23))
    for built in (outputs().build(msg, b"o", 0), once().build(msg, b"o", 0)):
        props = dict(built.properties or {})
        assert base64.b64decode(props["__pfn_input_msg_id__"]) == msg.mid.serialize()
        assert props["__pfn_input_topic__"] == IN


# -- Outbox ----------------------------------------------------------------------------------------


def group_of(count: int) -> list[FakeMessage]:
    return [
        FakeMessage(f"m{i}".encode(), key=f"k{i}", mid=FakeId(5, 100 + i)) for i in range(count)
    ]


def test_outbox_put_gives_the_builds_in_order_with_their_owners() -> None:
    built_by = outputs(TEXT)
    outbox = built_by.outbox()
    msgs = group_of(3)
    calls = [(0, "a"), (0, "b"), (2, "c")]
    for index, value in calls:
        outbox.put(index, msgs[index], value)
    assert outbox.outs == [built_by.build(msgs[i], value, 0) for i, value in calls]
    assert outbox.owners == [0, 0, 2]


def test_outbox_keeps_nothing_without_an_output_topic() -> None:
    for built_by in (outputs(output=""), once(output="")):
        outbox = built_by.outbox()
        outbox.put(0, FakeMessage(b"x"), b"out")
        assert outbox.outs == []
        assert outbox.owners == []


def test_outbox_numbers_each_messages_outputs_under_effectively_once() -> None:
    built_by = once(TEXT)
    outbox = built_by.outbox()
    msgs = group_of(2)
    calls = [(0, "a"), (1, "x"), (0, "b"), (0, "c"), (1, "y")]
    for index, value in calls:
        outbox.put(index, msgs[index], value)
    numbers = [0, 0, 1, 2, 1]
    assert outbox.outs == [
        built_by.build(msgs[i], value, n) for (i, value), n in zip(calls, numbers, strict=True)
    ]
    ids = [out.sequence_id for out in outbox.outs]
    owners_and_numbers = zip(outbox.owners, numbers, strict=True)
    assert ids == [output_sequence_id(100 + i, -1, n) for i, n in owners_and_numbers]
    assert len(set(ids)) == len(ids)


def test_per_producer_splits_effectively_once_outputs_by_producer_keeping_order() -> None:
    built_by = once()
    outbox = built_by.outbox()
    first, second = f"{IN}-partition-0", f"{IN}-partition-1"
    msgs = [
        FakeMessage(b"a", topic=first, mid=FakeId(7, 1)),
        FakeMessage(b"b", topic=second, mid=FakeId(7, 1)),
        FakeMessage(b"c", topic=first, mid=FakeId(7, 2)),
        FakeMessage(b"d", topic=first, mid=FakeId(8, 0)),  # a new ledger: a new producer
    ]
    for index, msg in enumerate(msgs):
        outbox.put(index, msg, msg.payload + b"1")
        outbox.put(index, msg, msg.payload + b"2")
    batches = outbox.per_producer()
    assert [owners for _, owners in batches] == [[0, 0, 2, 2], [1, 1], [3, 3]]
    assert [[out.payload for out in outs] for outs, _ in batches] == [
        [b"a1", b"a2", b"c1", b"c2"],
        [b"b1", b"b2"],
        [b"d1", b"d2"],
    ]
    assert [{out.producer_name for out in outs} for outs, _ in batches] == [
        {effectively_once_producer(FQFN, first, 7)},
        {effectively_once_producer(FQFN, second, 7)},
        {effectively_once_producer(FQFN, first, 8)},
    ]


def test_per_producer_is_one_batch_without_effectively_once() -> None:
    outbox = outputs().outbox()
    msgs = [
        FakeMessage(b"a", topic=f"{IN}-partition-0", mid=FakeId(7, 1)),
        FakeMessage(b"b", topic=f"{IN}-partition-1", mid=FakeId(8, 1)),
    ]
    for index, msg in enumerate(msgs):
        outbox.put(index, msg, msg.payload)
    assert outbox.per_producer() == [(outbox.outs, [0, 1])]
    assert [out.payload for out in outbox.outs] == [b"a", b"b"]
