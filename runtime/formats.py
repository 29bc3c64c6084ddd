"""Pulsar's own configuration formats, read through the messages compiled from Function.proto.

Two formats, one mapping. pulsar-admin's function-config YAML is first converted into a
FunctionDetails message the way Pulsar's `FunctionConfigUtils.convert` does it
(`function_config_yaml`); the worker's
FunctionDetails JSON is parsed into the same message. `details_values` then maps the message to
FunctionConfig values. proto3 fields have implicit presence (0, "" and false read as unset), so
only values that differ from the proto default become settings.

Pulsar's Python instance dies on an unknown field; here unknown keys are logged by name and
skipped. Keys that do not apply to a pulsarfunc instance (parallelism, resources, ...) are
accepted silently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from google.protobuf import descriptor, json_format

from pulsarfunc.protos import Function_pb2 as pb
from pulsarfunc.runtime.config import (
    CompressionType,
    InputSpec,
    ProcessingGuarantee,
    Setting,
    Settings,
    SubscriptionPosition,
    SubscriptionType,
    frozen_map,
)
from pulsarfunc.runtime.errors import ConfigError
from pulsarfunc.runtime.function_config_yaml import (
    WINDOW_CONFIG_KEY,
    details_from_function_config,
)

_log = logging.getLogger(__name__)

_DETAILS_HINT = "pass the FunctionDetails JSON of a Pulsar worker, or @FILE holding it"
_YAML_HINT = "see pulsar-admin's function-config format (pulsar-admin functions create --help)"


# --- the worker's FunctionDetails JSON ---------------------------------------------------------


def details_settings(text: str, source: str) -> Settings:
    """Settings from FunctionDetails JSON text, as the worker passes `--function_details`."""
    details = parse_details(text, source)
    try:
        values = details_values(details, source)
    except ValueError as exc:  # an enum number Function.proto does not define
        raise ConfigError(
            f"{source}: {exc}", hint="use an enum name (or number) that Function.proto defines"
        ) from None
    return _settings(values, source)


def parse_details(text: str, source: str) -> pb.FunctionDetails:
    """FunctionDetails from its JSON text; unknown fields and enum values are logged, skipped."""
    text = text.strip()
    text = text[1:] if text.startswith("'") else text  # the worker's shell quotes, as Pulsar does
    text = text[:-1] if text.endswith("'") else text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}", hint=_DETAILS_HINT) from None
    if not isinstance(data, dict):
        found = type(data).__name__
        raise ConfigError(f"{source}: expected a JSON object, found a {found}", hint=_DETAILS_HINT)
    unknown = _unknown_json(data, cast(descriptor.Descriptor, pb.FunctionDetails.DESCRIPTOR))
    if unknown:
        _log.warning("%s: ignoring unknown FunctionDetails fields: %s", source, ", ".join(unknown))
    details = pb.FunctionDetails()
    try:
        json_format.ParseDict(data, details, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ConfigError(f"{source}: {exc}", hint=_DETAILS_HINT) from None
    return details


def _unknown_json(
    data: Mapping[str, Any], message: descriptor.Descriptor, path: str = ""
) -> list[str]:
    """Keys (and enum names) that `ParseDict(..., ignore_unknown_fields=True)` would drop."""
    found: list[str] = []
    for key, value in data.items():
        field = message.fields_by_camelcase_name.get(key) or message.fields_by_name.get(key)
        if field is None:
            found.append(path + key)
            continue
        enum = field.enum_type
        if enum is not None and isinstance(value, str) and value not in enum.values_by_name:
            found.append(f"{path}{key}={value}")
        inner = field.message_type
        if inner is None or not isinstance(value, dict):
            continue
        if inner.GetOptions().map_entry:
            entry = inner.fields_by_name["value"].message_type
            for name, item in value.items():
                if entry is not None and isinstance(item, dict):
                    found += _unknown_json(item, entry, f"{path}{key}.{name}.")
        else:
            found += _unknown_json(value, inner, f"{path}{key}.")
    return found


# --- one mapping: FunctionDetails -> FunctionConfig values --------------------------------------


def details_values(details: pb.FunctionDetails, source: str) -> dict[str, Any]:
    """FunctionConfig values (keyed by field path) of every field set in `details`."""
    values = _set_fields(
        details,
        tenant="tenant",
        namespace="namespace",
        name="name",
        className="class_name",
        logTopic="log_topic",
        retainOrdering="retain_ordering",
        retainKeyOrdering="retain_key_ordering",
    )
    if details.processingGuarantees:
        name = pb.ProcessingGuarantees.Name(details.processingGuarantees)
        values["processing_guarantee"] = ProcessingGuarantee[name]
    if details.userConfig:
        user = _json_object(details.userConfig, source, "userConfig")
        if WINDOW_CONFIG_KEY in user:  # where Pulsar's worker keeps windowConfig
            values.update(_window_values(user.pop(WINDOW_CONFIG_KEY), source))
        values["user_config"] = user
    if details.secretsMap:
        values["secrets"] = _json_object(details.secretsMap, source, "secretsMap")
    values.update(_source_values(details))
    values.update(_sink_values(details.sink))
    if details.HasField("retryDetails"):
        values["max_message_retries"] = details.retryDetails.maxMessageRetries
        if details.retryDetails.deadLetterTopic:
            values["dead_letter_topic"] = details.retryDetails.deadLetterTopic
    return values


_WINDOW_FIELDS = {
    "windowLengthCount": "window_length_count",
    "windowLengthDurationMs": "window_length_duration_ms",
    "slidingIntervalCount": "sliding_interval_count",
    "slidingIntervalDurationMs": "sliding_interval_duration_ms",
    "lateDataTopic": "late_data_topic",
    "maxLagMs": "max_lag_ms",
    "watermarkEmitIntervalMs": "watermark_emit_interval_ms",
    "timestampExtractorClassName": "timestamp_extractor_class_name",
    "useEventTime": "use_event_time",
    "maxWindowMessages": "max_window_messages",
}
_WINDOW_IGNORED = ("actualWindowFunctionClassName", "processingGuarantees")


def _window_values(window: Any, source: str) -> dict[str, Any]:
    """Pulsar's WindowConfig JSON (userConfig["__WINDOWCONFIGS__"]) as `window.*` values."""
    where = f"{source}: userConfig.{WINDOW_CONFIG_KEY}"
    if not isinstance(window, dict):
        raise ConfigError(f"{where} is not a JSON object", hint=_DETAILS_HINT)
    values: dict[str, Any] = {}
    for key, value in window.items():
        field_name = _WINDOW_FIELDS.get(key)
        if field_name is None:
            if key not in _WINDOW_IGNORED:
                _log.warning("%s: ignoring unknown key %s", where, key)
            continue
        if value is None:
            continue
        expected: type = str if field_name.endswith(("topic", "class_name")) else int
        if field_name == "use_event_time":
            expected = bool
        if (expected is int and isinstance(value, bool)) or not isinstance(value, expected):
            raise ConfigError(
                f"{where}.{key} is {value!r}, not a {expected.__name__}", hint=_DETAILS_HINT
            )
        values[f"window.{field_name}"] = value
    return values


def _set_fields(message: Any, **names: str) -> dict[str, Any]:
    """{config field: value} for each proto field (named by keyword) that is set (non-zero)."""
    return {key: getattr(message, attr) for attr, key in names.items() if getattr(message, attr)}


def _subscription_type(details: pb.FunctionDetails) -> SubscriptionType:
    """The consumer type by the rules of Pulsar's Python instance (plus KEY_SHARED as given)."""
    given = details.source.subscriptionType
    effectively_once = details.processingGuarantees == pb.EFFECTIVELY_ONCE
    if given == pb.FAILOVER or details.retainOrdering or effectively_once:
        return SubscriptionType.FAILOVER
    if given == pb.KEY_SHARED or details.retainKeyOrdering:
        return SubscriptionType.KEY_SHARED
    return SubscriptionType.SHARED


def _source_values(details: pb.FunctionDetails) -> dict[str, Any]:
    source = details.source
    values = _set_fields(
        source,
        timeoutMs="timeout_ms",
        negativeAckRedeliveryDelayMs="redelivery_delay_ms",
        typeClassName="input_type_class_name",
    )
    kind = _subscription_type(details)
    if kind is not SubscriptionType.SHARED:
        values["subscription_type"] = kind
    position = source.subscriptionPosition or details.subscriptionPosition
    if position:
        values["subscription_position"] = SubscriptionPosition[
            pb.SubscriptionPosition.Name(position)
        ]
    if source.subscriptionName.strip():
        values["subscription"] = source.subscriptionName
    specs: dict[str, InputSpec] = {}
    for topic, serde in sorted(source.topicsToSerDeClassName.items()):  # legacy form
        specs[topic] = InputSpec(topic=topic, serde_class_name=serde)
    if source.topicsPattern:  # legacy form
        specs[source.topicsPattern] = InputSpec(topic=source.topicsPattern, is_regex=True)
    specs.update(_input_specs(source))
    for key, regex in (("inputs.topics", False), ("inputs.patterns", True)):
        chosen = tuple(spec for spec in specs.values() if spec.is_regex is regex)
        if chosen:
            values[key] = chosen
    return values


def _input_specs(source: pb.SourceSpec) -> dict[str, InputSpec]:
    specs: dict[str, InputSpec] = {}
    for topic, spec in sorted(source.inputSpecs.items()):
        queue = spec.receiverQueueSize.value if spec.HasField("receiverQueueSize") else None
        specs[topic] = InputSpec(
            topic=topic,
            is_regex=spec.isRegexPattern,
            schema_type=spec.schemaType,
            serde_class_name=spec.serdeClassName,
            receiver_queue_size=queue,
            schema_properties=frozen_map(spec.schemaProperties),
        )
    return specs


def custom_inputs(key: str, value: Mapping[str, Any], source: str) -> tuple[InputSpec, ...]:
    """The inputs of a function-config `customSerdeInputs` or `customSchemaInputs` mapping
    (what pulsar-admin's --custom-serde-inputs and --custom-schema-inputs take), read the very
    way the YAML's are; ConfigError naming `source` if a value is wrong."""
    details, _ = details_from_function_config({key: value}, source)
    return tuple(_input_specs(details.source).values())


def _sink_values(sink: pb.SinkSpec) -> dict[str, Any]:
    values = _set_fields(
        sink,
        topic="output",
        schemaType="output_schema_type",
        serDeClassName="output_serde_class_name",
        forwardSourceMessageProperty="forward_source_message_property",
        typeClassName="output_type_class_name",
    )
    if sink.schemaProperties:
        values["output_schema_properties"] = frozen_map(sink.schemaProperties)
    if sink.HasField("producerSpec"):  # present: its compression (LZ4 = 0) is meant
        producer = sink.producerSpec
        values["producer.compression"] = CompressionType[
            pb.CompressionType.Name(producer.compressionType)
        ]
        if producer.maxPendingMessages > 0:
            values["producer.max_pending_messages"] = producer.maxPendingMessages
    return values


def _settings(values: Mapping[str, Any], source: str) -> Settings:
    """Each value with its source and field, e.g. "f.yaml: output", for error messages."""
    return {key: Setting(value, f"{source}: {key}") for key, value in values.items()}


def _json_object(text: str, source: str, key: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: {key} is not valid JSON: {exc}", hint=_DETAILS_HINT) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} is {text!r}, not a JSON object", hint=_DETAILS_HINT)
    return value


# --- pulsar-admin's function-config YAML -------------------------------------------------------


def function_config_settings(path: str, source: str) -> Settings:
    """Settings from a function-config YAML file (`--function-config`)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # a binary file is not a YAML file either
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(
            f"{source}: cannot read function config {path!r}: {reason}",
            hint="pass the path of a pulsar-admin function-config YAML file",
        ) from None
    import yaml  # here: only a function config needs it (a megabyte resident otherwise)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}", hint=_YAML_HINT) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        found = type(data).__name__
        raise ConfigError(f"{path}: expected a mapping of keys, found a {found}", hint=_YAML_HINT)
    details, extras = details_from_function_config(data, path)
    values = details_values(details, path) | extras
    return _settings(values, path)
