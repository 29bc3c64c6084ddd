"""pulsar-admin's function-config YAML, converted to FunctionDetails like Pulsar's own `convert`.

`FunctionConfigUtils.convert` is how Pulsar turns this YAML into the FunctionDetails its worker
hands to instances; doing the same here lets both formats share one mapping to FunctionConfig
(`formats.details_values`). Values FunctionDetails 4.0 has no field for (`py`, `logLevel`,
producer batching, and pulsarfunc's own `drainTimeoutMs`, `inputProperties`, `batchMaxSize`
and `batchMaxDelayMs`) come back beside the message. Every value is type-checked on the way in: a
wrong one is a ConfigError naming the file, the key path, the value and what is allowed.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

from pulsarfunc.protos import Function_pb2 as pb
from pulsarfunc.runtime.errors import ConfigError

_log = logging.getLogger(__name__)

# Function-config keys that mean nothing to one pulsarfunc instance: accepted without a word.
_IGNORED = frozenset(
    {
        "autoAck", "cleanupSubscription", "customRuntimeOptions",
        "exposePulsarAdminClientEnabled", "functionType", "go", "jar",
        "maxPendingAsyncRequests", "parallelism", "resources",
        "runtime", "runtimeFlags", "skipToLatest",
    }
)  # fmt: skip
_UNSUPPORTED = frozenset({"cryptoConfig", "messagePayloadProcessorConfig"})
WINDOW_CONFIG_KEY = "__WINDOWCONFIGS__"  # where Pulsar keeps windowConfig: in userConfig


def details_from_function_config(
    data: Mapping[Any, Any], source: str
) -> tuple[pb.FunctionDetails, dict[str, Any]]:
    """FunctionDetails for a function-config mapping, as `FunctionConfigUtils.convert` builds it.

    Also returns the values FunctionDetails has no field for (`py`, `logLevel`, batching,
    `drainTimeoutMs`), keyed by FunctionConfig field path.
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
    if (drain := keys.number("drainTimeoutMs", minimum=0)) is not None:  # a pulsarfunc key
        extras["drain_timeout_ms"] = drain
    if (stamps := keys.flag("inputProperties")) is not None:  # a pulsarfunc key
        extras["input_properties"] = stamps
    for key, field in (
        ("batchMaxSize", "batch_max_size"),
        ("batchMaxDelayMs", "batch_max_delay_ms"),
    ):
        if (number := keys.number(key, minimum=0)) is not None:  # pulsarfunc keys
            extras[field] = number
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
    if (window := keys.child("windowConfig")) is not None:
        _window_config(window, details)
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
    if type_class := keys.text("inputTypeClassName"):
        source.typeClassName = type_class
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
    if type_class := keys.text("outputTypeClassName"):
        sink.typeClassName = type_class
    outputs = keys.child("customSchemaOutputs")
    if outputs is not None and sink.topic in outputs.names():
        # convert takes the output's schemaProperties; its schemaType too when none is given
        conf = _consumer_spec(outputs.consumer(sink.topic))
        sink.schemaProperties.update(conf.schemaProperties)
        if conf.schemaType and not sink.schemaType:
            sink.schemaType = conf.schemaType
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


_WINDOW_NUMBERS = (
    "windowLengthCount", "windowLengthDurationMs", "slidingIntervalCount",
    "slidingIntervalDurationMs", "maxLagMs", "watermarkEmitIntervalMs", "maxWindowMessages",
)  # fmt: skip
_WINDOW_TEXTS = ("lateDataTopic", "timestampExtractorClassName", "actualWindowFunctionClassName")


def _window_config(keys: _Keys, details: pb.FunctionDetails) -> None:
    """windowConfig, type-checked, kept where Pulsar's convert keeps it: the JSON object under
    userConfig["__WINDOWCONFIGS__"] (with pulsarfunc's own useEventTime, maxWindowMessages)."""
    window: dict[str, Any] = {}
    for key in _WINDOW_NUMBERS:
        if (number := keys.number(key)) is not None:
            window[key] = number
    for key in _WINDOW_TEXTS:
        if text := keys.text(key):
            window[key] = text
    if (flag := keys.flag("useEventTime")) is not None:
        window["useEventTime"] = flag
    keys.warn_unknown()
    user = json.loads(details.userConfig) if details.userConfig else {}
    user[WINDOW_CONFIG_KEY] = window
    details.userConfig = json.dumps(user, separators=(",", ":"))


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
