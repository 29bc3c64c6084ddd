"""Pulsar schemas and serdes per topic (runtime/schemas.py), through pulsarfunc.testing and resolve.

Pulsar's own example functions (tests/fixtures/pulsar_examples, unchanged) run here with the
configuration Pulsar's instance would get, in each form: FunctionDetails JSON, function-config
YAML and pulsar-admin's flags.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pulsar.schema import AvroSchema, Integer, JsonSchema, Record, String, StringSchema

from pulsarfunc.protos.Function_pb2 import Resources
from pulsarfunc.runtime.broker import consumer_plan
from pulsarfunc.runtime.codec import SerdeCodec
from pulsarfunc.runtime.config import FunctionConfig, InputSpec
from pulsarfunc.runtime.discovery import load
from pulsarfunc.runtime.errors import ConfigError, PayloadError
from pulsarfunc.runtime.handler import Handler, inspect_handler
from pulsarfunc.runtime.resolve import resolve
from pulsarfunc.runtime.schemas import SchemaCodec, Wire, schema_codec, wire_for
from pulsarfunc.testing import Message, run_function

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "pulsar_examples"
IN = "persistent://public/default/in"
OUT = "persistent://public/default/out"


class Order(Record):  # type: ignore[misc]  # pulsar-client ships no type hints
    id = Integer()
    item = String()


class Other(Record):  # type: ignore[misc]
    name = String()


def _wire(handler: object, config: FunctionConfig) -> tuple[Handler, Wire]:
    spec = inspect_handler(handler)
    return spec, wire_for(config, spec.input_codec, spec.output_codec)


def _example(name: str) -> Handler:
    loaded = load(str(EXAMPLES / f"{name}.py"))
    return inspect_handler(loaded.obj, where=loaded.where)


# --- Pulsar's avro_schema_test_function.py, unchanged ------------------------------------------

AVRO_CLASS = "avro_schema_test_function.AvroTestObject"


def _avro_details() -> str:
    """What Pulsar's worker hands its instance for this function (schemaType AVRO both ways)."""
    return json.dumps(
        {
            "name": "avro",
            "className": "avro_schema_test_function.AvroSchemaTestFunction",
            "runtime": "PYTHON",
            "source": {"inputSpecs": {"in": {"schemaType": "AVRO"}}, "typeClassName": AVRO_CLASS},
            "sink": {"topic": "out", "schemaType": "AVRO", "typeClassName": AVRO_CLASS},
        }
    )


def test_pulsar_s_avro_example_runs_unchanged_with_the_details_pulsar_gives() -> None:
    handler = _example("avro_schema_test_function")
    config = resolve(["--function-details", _avro_details()], {})
    record = importlib.import_module("avro_schema_test_function").AvroTestObject
    result = run_function(handler, [record(baseValue=1, objectValue="a")], config=config)
    (out,) = result.outputs
    assert (out.baseValue, out.objectValue) == (11, "a")
    # the payload is AVRO: a reader with the same schema gets the record back
    decoded = AvroSchema(record).decode(result.payloads[0])
    assert (decoded.baseValue, decoded.objectValue) == (11, "a")


def test_the_avro_example_from_flags_and_from_yaml_too(tmp_path: Path) -> None:
    handler = _example("avro_schema_test_function")
    flags = [
        "--custom-schema-inputs", '{"in": "AVRO"}', "--input-type-class-name", AVRO_CLASS,
        "--output", "out", "--schema-type", "AVRO", "--output-type-class-name", AVRO_CLASS,
    ]  # fmt: skip
    yaml_file = tmp_path / "f.yaml"
    yaml_file.write_text(
        "customSchemaInputs: {in: AVRO}\n"
        f"inputTypeClassName: {AVRO_CLASS}\n"
        "output: out\noutputSchemaType: AVRO\n"
        f"outputTypeClassName: {AVRO_CLASS}\n"
    )
    record = importlib.import_module("avro_schema_test_function").AvroTestObject
    for argv in (flags, ["--function-config", str(yaml_file)]):
        config = resolve(argv, {})
        result = run_function(handler, [record(baseValue=5, objectValue="b")], config=config)
        assert AvroSchema(record).decode(result.payloads[0]).baseValue == 15


# --- Pulsar's custom_object_function.py, unchanged: the three forms of a custom serde ----------

SERDE = "custom_object_function.CustomSerDe"


@pytest.mark.parametrize(
    "form",
    [
        ["--function-details", json.dumps({
            "name": "custom", "runtime": "PYTHON",
            "source": {"inputSpecs": {"in": {"serdeClassName": SERDE}}},
            "sink": {"topic": "out", "serDeClassName": SERDE}})],
        ["--custom-serde-inputs", json.dumps({"in": SERDE}), "--output", "out",
         "--output-serde-classname", SERDE],
        "yaml",
    ],
    ids=["function-details", "flags", "function-config-yaml"],
)  # fmt: skip
def test_pulsar_s_custom_serde_example_in_each_form(form: Any, tmp_path: Path) -> None:
    if form == "yaml":
        path = tmp_path / "f.yaml"
        path.write_text(f"customSerdeInputs: {{in: {SERDE}}}\noutput: out\n")
        path.write_text(path.read_text() + f"outputSerdeClassName: {SERDE}\n")
        form = ["--function-config", str(path)]
    config = resolve(form, {})
    assert config.inputs == (InputSpec(IN, serde_class_name=SERDE),)
    result = run_function(_example("custom_object_function"), [b"1,2", b"10,20"], config=config)
    assert result.payloads == [b"12,26", b"21,44"]  # a + 11, b + 24, as Pulsar documents


def test_flags_merge_with_inputs_given_by_other_flags() -> None:
    config = resolve(
        ["--inputs", "in,plain", "--custom-serde-inputs", '{"in": "my.Serde"}',
         "--custom-schema-inputs", '{"typed": "STRING"}'],
        {},
    )  # fmt: skip
    assert config.inputs == (
        InputSpec(IN, serde_class_name="my.Serde"),
        InputSpec("persistent://public/default/plain"),
        InputSpec("persistent://public/default/typed", schema_type="STRING"),
    )


@pytest.mark.parametrize(
    ("serde", "problem"),
    [
        ("nomodule.Serde", "could not be imported: No module named 'nomodule'"),
        ("custom_object_function.MyObject", "has no serialize or deserialize method (found: no"),
        ("custom_object_function.Nope", "could not be imported"),
    ],
)
def test_a_bad_serde_class_stops_the_start_naming_it(serde: str, problem: str) -> None:
    _example("custom_object_function")  # its directory on sys.path, as at start
    config = resolve(["--custom-serde-inputs", json.dumps({"in": serde})], {})
    with pytest.raises(ConfigError) as caught:
        _wire(lambda b: b, config)
    assert serde in str(caught.value)
    assert problem in str(caught.value)


# --- where a schema comes from ------------------------------------------------------------------


def test_a_record_annotation_gets_its_json_schema_with_no_flag() -> None:
    def handler(order: Order) -> Order:
        return Order(id=order.id + 1, item=order.item.upper())

    spec, wire = _wire(handler, FunctionConfig(inputs=(InputSpec(IN),), output=OUT))
    assert "input schema JSON Order" in spec.describe()
    assert "output schema JSON Order" in spec.describe()
    assert isinstance(wire.input_schemas[IN], JsonSchema)  # registered with the broker
    assert isinstance(wire.output_schema, JsonSchema)
    result = run_function(handler, [Order(id=1, item="tea")])
    assert json.loads(result.payloads[0]) == {"id": 2, "item": "TEA"}


def test_a_configured_avro_takes_the_annotation_s_record_class() -> None:
    def handler(order: Order) -> str:
        return str(order.item)

    config = FunctionConfig(inputs=(InputSpec(IN, schema_type="avro"),))
    _, wire = _wire(handler, config)
    assert isinstance(wire.input_schemas[IN], AvroSchema)
    payload = AvroSchema(Order).encode(Order(id=7, item="jam"))
    assert run_function(handler, [payload], config=config).outputs == ["jam"]


def test_type_class_name_wins_over_the_annotation(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(order: Order) -> None:
        return None

    config = FunctionConfig(
        inputs=(InputSpec(IN, schema_type="JSON"),), input_type_class_name=f"{__name__}.Other"
    )
    _, wire = _wire(handler, config)
    codec = wire.inputs[IN]
    assert isinstance(codec, SchemaCodec)
    assert codec.record is Other


def test_a_schema_wins_over_a_serde_on_the_same_topic() -> None:
    config = FunctionConfig(
        inputs=(InputSpec(IN, schema_type="STRING", serde_class_name="serde.PickleSerDe"),),
        output=OUT,
        output_schema_type="STRING",
        output_serde_class_name="serde.PickleSerDe",
    )
    _, wire = _wire(lambda text: text, config)
    assert isinstance(wire.inputs[IN], SchemaCodec)
    assert wire.output is not None
    assert wire.output.encode("é") == "é".encode()


def test_a_serde_alone_registers_no_schema() -> None:
    config = FunctionConfig(
        inputs=(InputSpec(IN, serde_class_name="serde.PickleSerDe"),), output=OUT
    )
    _, wire = _wire(lambda x: x, config)
    assert isinstance(wire.inputs[IN], SerdeCodec)
    assert wire.input_schemas == {}
    assert wire.output_schema is None


def test_pattern_inputs_decode_by_the_pattern_s_schema() -> None:
    config = FunctionConfig(
        inputs=(InputSpec("persistent://public/default/orders-.*", True, "STRING"),)
    )
    message = Message(b"caf\xc3\xa9", topic="persistent://public/default/orders-eu-partition-2")
    other = Message(b"raw", topic="persistent://public/default/other")
    result = run_function(lambda x: x, [message, other], config=config)
    assert [call.input for call in result.calls] == ["café", b"raw"]  # the other topic: bytes


def test_consumers_are_grouped_by_schema() -> None:
    string, raw = StringSchema(), None
    config = FunctionConfig(inputs=(InputSpec(IN), InputSpec(OUT), InputSpec("x", True)))
    plans = consumer_plan(config, {IN: string, "x": string})
    found = {(p.topics, p.pattern, p.schema) for p in plans}
    assert found == {((IN,), None, string), ((OUT,), None, raw), ((), "x", string)}


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ("KEY_VALUE", "KEY_VALUE schemas are not supported"),
        ("JSON", "the JSON schema needs a record class"),
        ("AVRO", "the AVRO schema needs a record class"),
        ("THRIFT", "unknown schema type 'THRIFT'"),
        ("nomodule.Schema", "could not be imported"),
        (f"{__name__}.NotASchema", "has no encode or decode or schema_info method"),
    ],
)
def test_a_schema_that_cannot_be_built_stops_the_start(schema: str, problem: str) -> None:
    config = FunctionConfig(inputs=(InputSpec(IN, schema_type=schema),))
    with pytest.raises(ConfigError) as caught:
        _wire(lambda data: data, config)
    assert problem in str(caught.value)
    assert IN in str(caught.value)


class NotASchema:
    def __init__(self, record: Any, properties: dict[str, str]) -> None:
        self.args = record, properties


class PropertiesSchema(StringSchema):  # type: ignore[misc]
    """A custom schema class taking the schema properties, as Pulsar may create one."""

    def __init__(self, properties: dict[str, str]) -> None:
        super().__init__()
        self.prefix = properties.get("prefix", "")

    def decode(self, data: bytes) -> str:
        return self.prefix + str(super().decode(data))


def test_a_custom_schema_class_is_created_as_pulsar_creates_it() -> None:
    spec = InputSpec(IN, schema_type=f"{__name__}.PropertiesSchema")
    config = FunctionConfig(inputs=(spec,))
    config = resolve(
        ["--custom-schema-inputs", json.dumps({IN: json.dumps({
            "schemaType": f"{__name__}.PropertiesSchema", "schemaProperties": {"prefix": ">"}})})],
        {},
    )  # fmt: skip
    assert run_function(lambda x: x, [b"hi"], config=config).outputs == [">hi"]


def test_avro_without_fastavro_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastavro" else real(name)
    )
    with pytest.raises(ConfigError) as caught:
        schema_codec("AVRO", Order, {}, "input x")
    assert "needs fastavro" in str(caught.value)
    assert "pulsar-client[avro]" in str(caught.value.hint)


def test_a_payload_that_does_not_decode_fails_that_message_only() -> None:
    def handler(order: Order) -> int:
        return int(order.id)

    good = json.dumps({"id": 3, "item": "x"}).encode()
    result = run_function(handler, [b"{not json", good], raise_errors=False)
    first, second = result.calls
    assert isinstance(first.error, PayloadError)
    assert "does not decode under the schema JSON Order" in str(first.error)
    assert second.outputs == [3]


def test_an_output_the_schema_cannot_write_fails_that_message() -> None:
    def handler(order: Order) -> Order:
        return {"id": 1}  # type: ignore[return-value]  # a dict, not an Order

    result = run_function(handler, [Order(id=1, item="x")], raise_errors=False)
    (call,) = result.calls
    assert isinstance(call.error, PayloadError)
    assert "return a Order" in str(call.error.hint)


def test_the_wire_describes_each_configured_topic() -> None:
    config = FunctionConfig(
        inputs=(InputSpec(IN, schema_type="STRING"), InputSpec("persistent://public/default/b")),
        output=OUT,
        output_schema_type="STRING",
    )
    _, wire = _wire(lambda x: x, config)
    assert wire.describe() == [f"input {IN}: schema STRING", "output: schema STRING"]


def test_the_readings_example_converts_under_json_and_avro() -> None:
    loaded = load(str(EXAMPLES.parents[2] / "examples" / "readings"))
    handler = inspect_handler(loaded.obj, where=loaded.where)
    reading = sys.modules[loaded.module].Reading
    assert "input schema JSON Reading, output schema JSON Converted" in handler.describe()
    (out,) = run_function(handler, [reading(sensor="s", celsius=100.0)]).outputs
    assert (out.sensor, out.fahrenheit) == ("s", 212.0)
    config = resolve(
        ["--custom-schema-inputs", '{"in": "AVRO"}', "--output", "o", "--schema-type", "AVRO"], {}
    )
    result = run_function(handler, [reading(sensor="s", celsius=0.0)], config=config)
    assert AvroSchema(type(result.outputs[0])).decode(result.payloads[0]).fahrenheit == 32.0


def test_a_protobuf_annotation_gets_a_protobuf_native_schema() -> None:
    from pulsar.schema import ProtobufNativeSchema

    def handler(resources: Resources) -> Resources:
        return Resources(cpu=resources.cpu * 2, ram=resources.ram)

    spec, wire = _wire(handler, FunctionConfig(inputs=(InputSpec(IN),), output=OUT))
    assert "input schema PROTOBUF_NATIVE Resources" in spec.describe()
    assert isinstance(wire.input_schemas[IN], ProtobufNativeSchema)
    result = run_function(handler, [Resources(cpu=1.5, ram=64)])
    assert Resources.FromString(result.payloads[0]) == Resources(cpu=3.0, ram=64)
