"""Pulsar's own configuration formats, read through the messages compiled from Function.proto.

Two formats, one mapping. pulsar-admin's function-config YAML is first converted into a
FunctionDetails message the way Pulsar's `FunctionConfigUtils.convert` does it; the worker's
FunctionDetails JSON is parsed into the same message. `details_values` then maps the message to
FunctionConfig values. proto3 fields have implicit presence (0, "" and false read as unset), so
only values that differ from the proto default become settings.

Pulsar's Python instance dies on an unknown field; here unknown keys are logged by name and
skipped. Keys that do not apply to a pulsarfunc instance (parallelism, resources, ...) are
accepted silently.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml
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
)
from pulsarfunc.runtime.errors import ConfigError

_log = logging.getLogger(__name__)

# Function-config keys that mean nothing to one pulsarfunc instance: accepted without a word.
_IGNORED = frozenset(
    {
        "autoAck", "cleanupSubscription", "customRuntimeOptions", "customSchemaOutputs",
        "exposePulsarAdminClientEnabled", "functionType", "go", "inputTypeClassName", "jar",
        "maxPendingAsyncRequests", "outputTypeClassName", "parallelism", "resources",
        "runtime", "runtimeFlags", "skipToLatest",
    }
)  # fmt: skip
_UNSUPPORTED = frozenset({"cryptoConfig", "messagePayloadProcessorConfig"})
_DETAILS_HINT = "pass the FunctionDetails JSON of a Pulsar worker, or @FILE holding it"
_YAML_HINT = "see pulsar-admin's function-config format (pulsar-admin functions create --help)"


# --- the worker's FunctionDetails JSON ---------------------------------------------------------


def details_settings(text: str, source: str) -> Settings:
    """Settings from FunctionDetails JSON text, as the worker passes `--function_details`."""
    values = details_values(parse_details(text, source), source)
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
    values: dict[str, Any] = {}
    named = {
        "tenant": "tenant",
        "namespace": "namespace",
        "name": "name",
        "className": "class_name",
        "logTopic": "log_topic",
    }
    for attr, key in named.items():
        if getattr(details, attr):
            values[key] = getattr(details, attr)
    if details.processingGuarantees:
        name = pb.ProcessingGuarantees.Name(details.processingGuarantees)
        values["processing_guarantee"] = ProcessingGuarantee[name]
    if details.retainOrdering:
        values["retain_ordering"] = True
    if details.retainKeyOrdering:
        values["retain_key_ordering"] = True
    if details.userConfig:
        values["user_config"] = _json_object(details.userConfig, source, "userConfig")
    if details.secretsMap:
        values["secrets"] = _json_object(details.secretsMap, source, "secretsMap")
    values.update(_source_values(details))
    values.update(_sink_values(details.sink))
    if details.HasField("retryDetails"):
        values["max_message_retries"] = details.retryDetails.maxMessageRetries
        if details.retryDetails.deadLetterTopic:
            values["dead_letter_topic"] = details.retryDetails.deadLetterTopic
    return values


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
    values: dict[str, Any] = {}
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
    for topic, spec in sorted(source.inputSpecs.items()):
        queue = spec.receiverQueueSize.value if spec.HasField("receiverQueueSize") else None
        specs[topic] = InputSpec(
            topic=topic,
            is_regex=spec.isRegexPattern,
            schema_type=spec.schemaType,
            serde_class_name=spec.serdeClassName,
            receiver_queue_size=queue,
        )
    for key, regex in (("inputs.topics", False), ("inputs.patterns", True)):
        chosen = tuple(spec for spec in specs.values() if spec.is_regex is regex)
        if chosen:
            values[key] = chosen
    if source.timeoutMs:
        values["timeout_ms"] = source.timeoutMs
    if source.negativeAckRedeliveryDelayMs:
        values["redelivery_delay_ms"] = source.negativeAckRedeliveryDelayMs
    return values


def _sink_values(sink: pb.SinkSpec) -> dict[str, Any]:
    values: dict[str, Any] = {}
    named = {
        "topic": "output",
        "schemaType": "output_schema_type",
        "serDeClassName": "output_serde_class_name",
    }
    for attr, key in named.items():
        if getattr(sink, attr):
            values[key] = getattr(sink, attr)
    if sink.forwardSourceMessageProperty:
        values["forward_source_message_property"] = True
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
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read function config {path!r}: {exc.strerror or exc}",
            hint="pass the path of a pulsar-admin function-config YAML file",
        ) from None
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


def details_from_function_config(
    data: Mapping[Any, Any], source: str
) -> tuple[pb.FunctionDetails, dict[str, Any]]:
    """FunctionDetails for a function-config mapping, as `FunctionConfigUtils.convert` builds it.

    Also returns the values FunctionDetails has no field for (`py`, `logLevel`, batching).
    """
    keys = _Keys(data, source)
    details = pb.FunctionDetails(runtime=pb.FunctionDetails.PYTHON)
    details.componentType = pb.FunctionDetails.FUNCTION
    extras: dict[str, Any] = {}
    if fqfn := keys.text("fqfn"):
        parts = fqfn.split("/")
        if len(parts) != 3 or not all(parts):
            raise keys.bad("fqfn", fqfn, "tenant/namespace/name")
        details.tenant, details.namespace, details.name = parts
    for key in ("tenant", "namespace", "name", "className", "logTopic"):
        if value := keys.text(key):
            setattr(details, key, value)
    if py := keys.text("py"):
        extras["py"] = py
    if level := keys.text("logLevel"):
        extras["log_level"] = level
    if guarantee := keys.choice("processingGuarantees", pb.ProcessingGuarantees.keys()):
        details.processingGuarantees = cast(
            pb.ProcessingGuarantees, pb.ProcessingGuarantees.Value(guarantee)
        )
    details.retainOrdering = bool(keys.flag("retainOrdering"))
    details.retainKeyOrdering = bool(keys.flag("retainKeyOrdering"))
    _convert_source(keys, details.source)
    extras.update(_convert_sink(keys, details.sink))
    for key, attr in (("userConfig", "userConfig"), ("secrets", "secretsMap")):
        if mapping := keys.mapping(key):
            setattr(details, attr, _json_text(mapping, source, key))
    retries, dead_letter = keys.number("maxMessageRetries"), keys.text("deadLetterTopic")
    if retries is not None and retries >= 0:  # like convert: a negative count means "unset"
        details.retryDetails.SetInParent()
        details.retryDetails.maxMessageRetries = retries
        details.retryDetails.deadLetterTopic = dead_letter
    elif dead_letter:
        _log.warning("%s: deadLetterTopic is ignored without maxMessageRetries", source)
    if keys.raw("windowConfig") is not None:
        raise ConfigError(
            f"{source}: key 'windowConfig': window functions are not supported by pulsarfunc",
            hint="remove windowConfig, or run the function on Pulsar's own runtime",
        )
    keys.warn_unknown(_IGNORED)
    return details, extras


def _convert_source(keys: _Keys, source: pb.SourceSpec) -> None:
    """Inputs in convert's order: a later entry for the same topic replaces an earlier one."""
    for topic in keys.texts("inputs"):
        source.inputSpecs[topic].CopyFrom(pb.ConsumerSpec())
    if pattern := keys.text("topicsPattern"):
        source.inputSpecs[pattern].CopyFrom(pb.ConsumerSpec(isRegexPattern=True))
    if serdes := keys.child("customSerdeInputs"):
        for topic in serdes.names():
            spec = pb.ConsumerSpec(serdeClassName=serdes.text(topic))
            source.inputSpecs[topic].CopyFrom(spec)
    if schemas := keys.child("customSchemaInputs"):
        for topic in schemas.names():
            source.inputSpecs[topic].CopyFrom(_consumer_spec(schemas.consumer(topic)))
    if specs := keys.child("inputSpecs"):
        for topic in specs.names():
            source.inputSpecs[topic].CopyFrom(_consumer_spec(specs.child(topic, required=True)))
    if name := keys.text("subName"):
        source.subscriptionName = name
    if position := keys.choice("subscriptionPosition", pb.SubscriptionPosition.keys()):
        source.subscriptionPosition = cast(
            pb.SubscriptionPosition, pb.SubscriptionPosition.Value(position)
        )
    if (timeout := keys.number("timeoutMs", minimum=0)) is not None:
        source.timeoutMs = timeout
        source.negativeAckRedeliveryDelayMs = timeout


def _consumer_spec(keys: _Keys | None) -> pb.ConsumerSpec:
    spec = pb.ConsumerSpec()
    if keys is None:
        return spec
    if schema := keys.text("schemaType"):  # a schema type wins over a serde, as in convert
        spec.schemaType = schema
    elif serde := keys.text("serdeClassName"):
        spec.serdeClassName = serde
    regex = keys.flag("regexPattern")
    spec.isRegexPattern = bool(keys.flag("isRegexPattern") if regex is None else regex)
    if (size := keys.number("receiverQueueSize", minimum=0)) is not None:
        spec.receiverQueueSize.SetInParent()
        spec.receiverQueueSize.value = size
    for key in ("schemaProperties", "consumerProperties"):
        if properties := keys.child(key):
            for name in properties.names():
                getattr(spec, key)[name] = properties.text(name)
    keys.warn_unknown({"poolMessages"})
    return spec


def _convert_sink(keys: _Keys, sink: pb.SinkSpec) -> dict[str, Any]:
    """Output settings; returns the batching values FunctionDetails 4.0 has no field for."""
    extras: dict[str, Any] = {}
    named = {
        "output": "topic",
        "outputSchemaType": "schemaType",
        "outputSerdeClassName": "serDeClassName",
    }
    for key, attr in named.items():
        if value := keys.text(key):
            setattr(sink, attr, value)
    if keys.flag("forwardSourceMessageProperty"):
        sink.forwardSourceMessageProperty = True
    producer = keys.child("producerConfig")
    if producer is not None:
        spec = sink.producerSpec
        spec.SetInParent()
        if (pending := producer.number("maxPendingMessages", minimum=0)) is not None:
            spec.maxPendingMessages = pending
        compression = producer.choice("compressionType", pb.CompressionType.keys())
        spec.compressionType = cast(
            pb.CompressionType, pb.CompressionType.Value(compression or "LZ4")
        )
        if builder := producer.text("batchBuilder"):
            spec.batchBuilder = builder
        batching = producer.child("batchingConfig")
        if batching is not None:
            extras.update(_batching(batching))
        producer.warn_unknown({"maxPendingMessagesAcrossPartitions", "useThreadLocalProducers"})
    if builder := keys.text("batchBuilder"):
        sink.producerSpec.batchBuilder = builder
    return extras


def _batching(keys: _Keys) -> dict[str, Any]:
    """BatchingConfig as Java's BatchingUtils reads it: numbers count only when > 0."""
    values: dict[str, Any] = {}
    enabled = keys.flag("enabled")
    values["producer.batching"] = True if enabled is None else enabled
    numbers = {
        "batchingMaxPublishDelayMs": "producer.batching_max_publish_delay_ms",
        "batchingMaxMessages": "producer.batching_max_messages",
    }
    for key, path in numbers.items():
        number = keys.number(key)
        if number is not None and number > 0:
            values[path] = number
    keys.warn_unknown(
        {"batchBuilder", "batchingMaxBytes", "roundRobinRouterBatchingPartitionSwitchFrequency"}
    )
    return values


def _json_text(value: Mapping[str, Any], source: str, key: str) -> str:
    """JSON text of a YAML mapping; YAML dates become ISO strings, as Jackson reads them."""

    def fallback(item: object) -> str:
        if isinstance(item, datetime.date):
            return item.isoformat()
        raise TypeError(f"a {type(item).__name__}")

    try:
        return json.dumps(value, default=fallback, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{source}: key '{key}' holds a value JSON cannot carry: {exc}",
            hint="use strings, numbers, booleans, lists and mappings",
        ) from None


class _Keys:
    """Typed access to one YAML mapping; errors name the file, the key, the value, the rule."""

    def __init__(self, data: Mapping[Any, Any], source: str, prefix: str = "") -> None:
        self.data = {str(key): value for key, value in data.items()}
        self.source = source
        self.prefix = prefix
        self.used: set[str] = set()

    def bad(self, key: str, value: object, expected: str) -> ConfigError:
        return ConfigError(
            f"{self.source}: key '{self.prefix}{key}' has value {value!r}",
            hint=f"expected {expected}",
        )

    def names(self) -> list[str]:
        self.used.update(self.data)
        return list(self.data)

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def text(self, key: str) -> str:
        value = self.raw(key)
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.bad(key, value, "a string")
        return str(value).strip()

    def flag(self, key: str) -> bool | None:
        value = self.raw(key)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise self.bad(key, value, "true or false")

    def number(self, key: str, minimum: int | None = None) -> int | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(key, value, "a whole number")
        if minimum is not None and value < minimum:
            raise self.bad(key, value, f"a whole number >= {minimum}")
        return value

    def texts(self, key: str) -> list[str]:
        value = self.raw(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return [item.strip() for item in value]
        raise self.bad(key, value, "a list of topic names")

    def choice(self, key: str, allowed: Iterable[str]) -> str:
        """One of `allowed` by name, ignoring case and `_` (so `Latest` is LATEST)."""
        text = self.text(key)
        if not text:
            return ""
        names = list(allowed)
        for name in names:
            if name.replace("_", "").upper() == text.replace("_", "").upper():
                return name
        raise self.bad(key, text, "one of " + ", ".join(names))

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.raw(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.bad(key, value, "a mapping")
        return {str(name): item for name, item in value.items()}

    def child(self, key: str, *, required: bool = False) -> _Keys | None:
        """The nested mapping at `key`, for typed access of its own keys."""
        if self.raw(key) is None and not required:
            return None
        return _Keys(self.mapping(key), self.source, f"{self.prefix}{key}.")

    def consumer(self, topic: str) -> _Keys:
        """A customSchemaInputs value: ConsumerConfig JSON text, a mapping or a schema type."""
        value = self.raw(topic)
        where = f"{self.prefix}{topic}."
        if isinstance(value, dict):
            return _Keys(value, self.source, where)
        text = self.text(topic)
        if not text.startswith("{"):
            return _Keys({"schemaType": text}, self.source, where)
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise self.bad(topic, value, "ConsumerConfig JSON or a schema type") from None
        return _Keys(parsed if isinstance(parsed, dict) else {}, self.source, where)

    def warn_unknown(self, ignored: Iterable[str] = ()) -> None:
        """Log the keys nothing read: unsupported ones, then unknown ones (skipping `ignored`)."""
        left = [key for key in self.data if key not in self.used and key not in set(ignored)]
        unsupported = [self.prefix + key for key in left if key in _UNSUPPORTED]
        unknown = [self.prefix + key for key in left if key not in _UNSUPPORTED]
        if unsupported:
            joined = ", ".join(unsupported)
            _log.warning("%s: not supported by pulsarfunc, ignored: %s", self.source, joined)
        if unknown:
            _log.warning("%s: ignoring unknown keys: %s", self.source, ", ".join(unknown))
