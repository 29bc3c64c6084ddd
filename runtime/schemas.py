"""Pulsar schemas: the pulsar-client schema of each input and of the output, and their codecs.

What Pulsar's Python instance does (`get_schema` in python_instance.py), and pulsarfunc with it:
- An input's schema is its ConsumerSpec `schemaType` (YAML `customSchemaInputs`, flag
  --custom-schema-inputs); the output's is the sink's `schemaType` (--output-schema-type, or
  pulsar-admin's --schema-type). Schema properties come with them.
- STRING, JSON, AVRO and PROTOBUF_NATIVE (any case), BYTES, or a schema class `module.Class`,
  created as Pulsar creates one: with no argument, with the record class or the properties, or
  with both.
- JSON, AVRO and PROTOBUF_NATIVE need the record class: Pulsar's `typeClassName`
  (--input-type-class-name / --output-type-class-name), else the handler's annotation.
- A schema wins over a serde on the same topic, as in Pulsar (the serde is then not called).

Beyond Pulsar's instance: a handler annotated with a `pulsar.schema.Record` subclass gets that
record's JSON schema with no configuration (`infer`); a configured AVRO takes the annotation's
class. A schema that cannot be built is a ConfigError at start-up, not a failure per message,
and a payload that does not decode is a PayloadError: that message fails, and only it.

KEY_VALUE is refused: pulsar-client for Python has no KeyValue schema and cannot register one
(its SchemaInfo carries no properties, where Pulsar keeps the key/value encoding).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pulsarfunc.runtime.codec import Codec, pulsar_serde, without_none
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.errors import ConfigError, PayloadError

BUILT_IN = ("BYTES", "STRING", "JSON", "AVRO", "PROTOBUF_NATIVE")
_NEEDS_CLASS = ("JSON", "AVRO", "PROTOBUF_NATIVE")
_TYPES_HINT = (
    "a schema type is one of STRING, JSON, AVRO, PROTOBUF_NATIVE, BYTES, or a schema class "
    "written module.Class"
)


@dataclass(frozen=True)
class SchemaCodec:
    """Payloads under one pulsar-client schema: its `decode` and `encode`, errors as
    PayloadError. `schema` is the pulsar-client object consumers and producers register."""

    name: str
    schema: Any
    record: type | None = None

    def decode(self, payload: bytes) -> Any:
        try:
            return self.schema.decode(bytes(payload))
        except Exception as e:
            raise PayloadError(
                f"payload does not decode under the {self.name}: {type(e).__name__}: {e}",
                "produce this topic with the same schema (the broker checks producers that "
                "declare one), or change the function's schema",
            ) from e

    def encode(self, value: Any) -> bytes:
        try:
            out = self.schema.encode(value)
        except Exception as e:
            expected = f"a {self.record.__qualname__}" if self.record else "a value it takes"
            raise PayloadError(
                f"output of type {type(value).__qualname__} cannot be written under the "
                f"{self.name}: {type(e).__name__}: {e}",
                f"return {expected}, or None for no output",
            ) from e
        if isinstance(out, str):  # pulsar-client's StringSchema returns bytes; a custom may not
            return out.encode("utf-8")
        return bytes(out)


@dataclass(frozen=True)
class Wire:
    """How the function's payloads are read and written: per input topic, and for the output.

    `inputs` holds the codecs configured per topic (a serde or a schema); a topic not in it is
    decoded by the handler's own codec. `patterns` holds those of regex inputs, matched on the
    topic's name. `schemas` are the pulsar-client schemas the broker registers, per input topic
    or pattern and for the output topic (None: plain bytes, no schema).
    """

    inputs: Mapping[str, Codec] = field(default_factory=dict)
    patterns: tuple[tuple[str, Codec], ...] = ()
    output: Codec | None = None  # None: the handler's own output codec
    input_schemas: Mapping[str, Any] = field(default_factory=dict)
    output_schema: Any = None

    def describe(self) -> list[str]:
        """One line per configured topic: what `pulsarfunc check` and the start log show."""
        lines = [f"input {t}: {c.name}" for t, c in (*self.inputs.items(), *self.patterns)]
        if self.output is not None:
            lines.append(f"output: {self.output.name}")
        return lines


def wire_for(config: FunctionConfig, input_codec: Codec, output_codec: Codec) -> Wire:
    """The Wire for `config` and a handler whose annotations gave these codecs.

    ConfigError, naming the topic and what was wrong, if a schema or serde cannot be built.
    """
    inputs: dict[str, Codec] = {}
    patterns: list[tuple[str, Codec]] = []
    schemas: dict[str, Any] = {}
    for spec in config.inputs:
        codec: Codec | None = None
        if spec.schema_type:
            where = f"input {spec.topic}"
            codec = schema_codec(
                spec.schema_type,
                _record(config.input_type_class_name, input_codec, where),
                spec.schema_properties,
                where,
            )
        elif spec.serde_class_name:
            codec = pulsar_serde(spec.serde_class_name)
        elif isinstance(input_codec, SchemaCodec):  # inferred from the annotation
            codec = input_codec
        if codec is None:
            continue
        if isinstance(codec, SchemaCodec):
            schemas[spec.topic] = codec.schema
        if spec.is_regex:
            patterns.append((spec.topic, codec))
        else:
            inputs[spec.topic] = codec
    output: Codec | None = None
    if config.output_schema_type:
        output = schema_codec(
            config.output_schema_type,
            _record(config.output_type_class_name, output_codec, "the output"),
            config.output_schema_properties,
            "the output",
        )
    elif config.output_serde_class_name:
        output = pulsar_serde(config.output_serde_class_name)
    elif isinstance(output_codec, SchemaCodec):
        output = output_codec
    out_schema = output.schema if isinstance(output, SchemaCodec) and config.output else None
    return Wire(inputs, tuple(patterns), output, schemas, out_schema)


def _record(class_name: str, annotated: Codec, where: str) -> type | None:
    """The record class: configured by name, else the one the handler is annotated with."""
    if class_name:
        record = import_class(class_name, f"the record class of {where}")
        if not isinstance(record, type):
            raise ConfigError(f"the record class of {where}, {class_name!r}, is not a class")
        return record
    return annotated.record if isinstance(annotated, SchemaCodec) else None


def schema_codec(
    schema_type: str, record: type | None, properties: Mapping[str, str], where: str
) -> SchemaCodec:
    """The codec of one configured schema; ConfigError saying what is missing or wrong."""
    import pulsar.schema as ps  # pulsar-client; the annotation-free path never gets here

    kind = schema_type.strip().upper()
    if kind in _NEEDS_CLASS and record is None:
        raise ConfigError(
            f"{where}: the {kind} schema needs a record class, and none was found",
            "annotate the handler's input (or return) with a pulsar.schema.Record subclass, or "
            "name it: --input-type-class-name / --output-type-class-name module.Class "
            "(Pulsar's typeClassName)",
        )
    if kind == "KEY_VALUE":
        raise ConfigError(
            f"{where}: KEY_VALUE schemas are not supported: pulsar-client for Python has no "
            "KeyValue schema and cannot register one",
            "consume the topic without a schema (bytes) and split key and value in the handler",
        )
    try:
        if kind == "BYTES":
            return SchemaCodec("schema " + "BYTES", ps.BytesSchema())
        if kind == "STRING":
            return SchemaCodec("schema " + "STRING", ps.StringSchema())
        assert record is not None or kind not in _NEEDS_CLASS
        if kind == "JSON":
            return SchemaCodec(f"schema JSON {_label(record)}", ps.JsonSchema(record), record)
        if kind == "AVRO":
            return SchemaCodec(f"schema AVRO {_label(record)}", _avro(ps, record, where), record)
        if kind == "PROTOBUF_NATIVE":
            schema = ps.ProtobufNativeSchema(record)
            return SchemaCodec(f"schema PROTOBUF_NATIVE {_label(record)}", schema, record)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"{where}: cannot build the {kind} schema of {_label(record)}: {e}",
            "a JSON or AVRO record class is a pulsar.schema.Record subclass with typed fields; "
            "a PROTOBUF_NATIVE one a generated protobuf message class",
        ) from e
    return _custom(schema_type.strip(), record, properties, where)


def _avro(ps: Any, record: type | None, where: str) -> Any:
    if importlib.util.find_spec("fastavro") is None:  # pulsar-client's `avro` extra
        raise ConfigError(
            f"{where}: an AVRO schema needs fastavro, which is not installed",
            "list fastavro in the function's requirements.txt (pulsarfunc build also adds it "
            "when the function's code or config names AVRO); outside an image, pip install "
            "'pulsar-client[avro]'",
        )
    return ps.AvroSchema(record)


def _custom(
    class_name: str, record: type | None, properties: Mapping[str, str], where: str
) -> SchemaCodec:
    """A schema class, created with the arguments its __init__ takes, as Pulsar does."""
    if "." not in class_name:
        raise ConfigError(f"{where}: unknown schema type {class_name!r}", _TYPES_HINT)
    kclass = import_class(class_name, f"the schema class of {where}")
    try:
        count = len(inspect.signature(kclass).parameters)
    except (TypeError, ValueError):
        count = 0
    props = dict(properties)
    try:
        if count == 0:
            schema = kclass()
        elif count == 1 and record is None:  # nothing else to give it (Pulsar passes None)
            schema = kclass(props)
        elif count == 1:
            try:
                schema = kclass(record)
            except TypeError:
                schema = kclass(props)
        else:
            schema = kclass(record, props)
    except Exception as e:
        raise ConfigError(f"{where}: schema class {class_name} could not be created: {e}") from e
    missing = [
        m for m in ("encode", "decode", "schema_info") if not callable(getattr(schema, m, None))
    ]
    if missing:
        raise ConfigError(
            f"{where}: schema class {class_name} has no {' or '.join(missing)} method",
            "a schema class subclasses pulsar.schema.Schema (encode, decode, schema_info)",
        )
    return SchemaCodec(f"schema {class_name}", schema, record)


def import_class(class_name: str, what: str) -> Any:
    """`module.Class` imported from sys.path (the function's directory is on it)."""
    module_name, _, attr = class_name.strip().rpartition(".")
    hint = "give it as module.Class, importable from the function's directory"
    if not module_name or not attr:
        raise ConfigError(f"{what}, {class_name!r}, is not of the form module.Class", hint)
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what}, {class_name!r}, could not be imported: {e}", hint) from e


def _label(record: type | None) -> str:
    return record.__qualname__ if record is not None else "(no class)"


_RECORD = ("pulsar.schema.definition", "Record")
_PROTOBUF = ("google.protobuf.message", "Message")


def infer(annotation: Any) -> SchemaCodec | None:
    """The schema an annotation asks for: JSON for a `pulsar.schema.Record` subclass,
    PROTOBUF_NATIVE for a protobuf message class, else None (the plain codecs apply).

    Told by the classes' names, so annotations of other types import nothing."""
    tp = without_none(annotation)
    if not isinstance(tp, type):
        return None
    bases = {(k.__module__, k.__name__) for k in tp.__mro__[1:]}
    where = f"annotation {tp.__qualname__}"
    if _RECORD in bases:
        return schema_codec("JSON", tp, {}, where)
    if _PROTOBUF in bases:
        return schema_codec("PROTOBUF_NATIVE", tp, {}, where)
    return None
