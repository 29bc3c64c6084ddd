"""FunctionConfig: everything an instance needs, as plain frozen data.

This module is the data model only. Text becomes typed `Settings` in `options` (flags and
PULSARFUNC_* variables) and `formats` (FunctionDetails JSON, function-config YAML); `resolve`
merges them (flags > env vars > config files > defaults) and validates the result.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple


class ProcessingGuarantee(enum.Enum):
    """When an input is acknowledged (Pulsar's ProcessingGuarantees, same names)."""

    ATLEAST_ONCE = "ATLEAST_ONCE"  # ack once every output of the message is persisted
    ATMOST_ONCE = "ATMOST_ONCE"  # ack on receipt, before the handler runs
    EFFECTIVELY_ONCE = "EFFECTIVELY_ONCE"  # at-least-once + broker dedup by sequence id
    MANUAL = "MANUAL"  # the handler calls context.ack()


class SubscriptionType(enum.Enum):
    """Pulsar subscription types (Function.proto has the first three; EXCLUSIVE is ours)."""

    SHARED = "SHARED"
    FAILOVER = "FAILOVER"
    KEY_SHARED = "KEY_SHARED"
    EXCLUSIVE = "EXCLUSIVE"


class SubscriptionPosition(enum.Enum):
    """Where a new subscription starts."""

    LATEST = "LATEST"
    EARLIEST = "EARLIEST"


class CompressionType(enum.Enum):
    """Output compression (Pulsar's names)."""

    NONE = "NONE"
    LZ4 = "LZ4"
    ZLIB = "ZLIB"
    ZSTD = "ZSTD"
    SNAPPY = "SNAPPY"


class LogFormat(enum.Enum):
    """How log records are written to stdout."""

    TEXT = "text"
    JSON = "json"


def frozen_map(value: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only copy of `value`, as FunctionConfig holds mappings."""
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True)
class InputSpec:
    """One input: a topic, or a regex pattern of topics (Function.proto's ConsumerSpec)."""

    topic: str
    is_regex: bool = False
    schema_type: str = ""  # Pulsar schema: STRING, JSON, AVRO, ... or a class; "" = none
    serde_class_name: str = ""  # Pulsar Python serde class, e.g. serde.IdentitySerDe
    receiver_queue_size: int | None = None
    schema_properties: Mapping[str, str] = field(default_factory=frozen_map)


@dataclass(frozen=True)
class ProducerSettings:
    """How outputs (and context.publish) are produced."""

    batching: bool = True
    batching_max_publish_delay_ms: int = 10
    batching_max_messages: int = 1000
    compression: CompressionType = CompressionType.LZ4
    max_pending_messages: int = 10000


@dataclass(frozen=True)
class WindowSettings:
    """Pulsar's WindowConfig (milliseconds and counts), plus pulsarfunc's own limits.

    A window is configured when either length is set; a missing slide is the length (a tumbling
    window), as Pulsar's `WindowConfigUtils.inferMissingArguments` makes it."""

    window_length_count: int | None = None
    window_length_duration_ms: int | None = None
    sliding_interval_count: int | None = None
    sliding_interval_duration_ms: int | None = None
    late_data_topic: str = ""
    max_lag_ms: int | None = None  # event time: how late data may be (Pulsar's default 0)
    watermark_emit_interval_ms: int | None = None  # event time (Pulsar's default 1000)
    timestamp_extractor_class_name: str = ""  # event time from the value: module.Class
    use_event_time: bool = False  # event time from each message's event time (pulsarfunc)
    max_window_messages: int | None = None  # held at most; None: 10 x receiver queue size

    @property
    def enabled(self) -> bool:
        return self.window_length_count is not None or self.window_length_duration_ms is not None

    @property
    def event_time(self) -> bool:
        return bool(self.timestamp_extractor_class_name) or self.use_event_time


@dataclass(frozen=True)
class AuthSettings:
    """Broker authentication and TLS."""

    token: str | None = None  # JWT for token authentication
    plugin: str | None = None  # Pulsar auth plugin class name, with `params`
    params: str | None = None
    tls_trust_certs_file: str | None = None
    tls_allow_insecure: bool = False
    tls_hostname_verification: bool = False


@dataclass(frozen=True)
class FunctionConfig:
    """One function instance's configuration; built once by `resolve.resolve`, then passed in."""

    # identity (PIP-32 getters)
    tenant: str = "public"
    namespace: str = "default"
    name: str = ""  # "" = derived from the handler's name at start-up
    function_id: str = ""  # "" = derived (uuid5 of the fully qualified name)
    function_version: str = ""
    instance_id: int = 0
    cluster_name: str = "standalone"

    # broker
    service_url: str = "pulsar://localhost:6650"
    auth: AuthSettings = field(default_factory=AuthSettings)

    # inputs
    inputs: tuple[InputSpec, ...] = ()
    subscription: str = ""  # "" = Pulsar's default "tenant/namespace/name"
    subscription_type: SubscriptionType = SubscriptionType.SHARED
    subscription_position: SubscriptionPosition = SubscriptionPosition.LATEST
    receiver_queue_size: int = 1000

    # outputs
    output: str = ""  # "" = no output topic
    output_schema_type: str = ""  # Pulsar schema of the output; "" = none (a serde encodes)
    output_serde_class_name: str = ""
    output_schema_properties: Mapping[str, str] = field(default_factory=frozen_map)
    # Record classes (`module.Class`) of JSON/AVRO schemas: Pulsar's source/sink typeClassName
    input_type_class_name: str = ""
    output_type_class_name: str = ""
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    forward_source_message_property: bool = False
    # stamp outputs with `__pfn_input_topic__` / `__pfn_input_msg_id__`, as Pulsar's instances do
    input_properties: bool = True
    log_topic: str = ""

    # processing
    processing_guarantee: ProcessingGuarantee = ProcessingGuarantee.ATLEAST_ONCE
    retain_ordering: bool = False
    retain_key_ordering: bool = False
    concurrency: int = 0  # 0 = auto (see instance.effective_concurrency)
    max_message_retries: int | None = None  # None = retry forever (no dead-letter topic)
    dead_letter_topic: str = ""  # "" = Pulsar's name "<input>-<subscription>-DLQ" when retries set
    redelivery_delay_ms: int = 1000  # nack delay; Pulsar's 60 s default is too slow for a function
    timeout_ms: int | None = None  # handler timeout per message; None = no limit
    drain_timeout_ms: int = 30_000  # graceful stop's one deadline; then the rest is nacked
    batch_max_size: int = 0  # > 0: a batch handler, called with up to N inputs (batching.py)
    batch_max_delay_ms: int = 10  # longest a batch waits to fill before the handler is called
    window: WindowSettings = field(default_factory=WindowSettings)  # window functions

    # the function itself
    state_storage_service_url: str = ""  # BookKeeper table service (bk://HOST:4181); "" = none
    user_config: Mapping[str, Any] = field(default_factory=frozen_map)
    secrets: Mapping[str, Any] = field(default_factory=frozen_map)
    class_name: str = ""  # Pulsar's className / handler reference, e.g. "module.func"
    py: str = ""  # Pulsar's `py`: path of the function file or package

    # operations
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    metrics_port: int | None = None
    tracing: bool = False  # OpenTelemetry spans per message (the `otel` extra; OTEL_* env)
    debug: bool = False

    @property
    def fqfn(self) -> str:
        """Fully qualified function name, tenant/namespace/name."""
        return f"{self.tenant}/{self.namespace}/{self.name}"

    @property
    def subscription_name(self) -> str:
        """The subscription actually used (Pulsar's default when none is configured)."""
        return self.subscription or self.fqfn

    @property
    def input_topics(self) -> tuple[str, ...]:
        """Input topic names and patterns, in configuration order."""
        return tuple(spec.topic for spec in self.inputs)


# --- settings: configured values on their way to a FunctionConfig ------------------------------


class Setting(NamedTuple):
    """One configured value and where it came from (flag, variable or file), for errors."""

    value: Any
    source: str


# Keys of a settings dict are FunctionConfig field paths ("auth.token"), plus "inputs.topics" and
# "inputs.patterns" (each replaces only its own kind of input), "inputs.serdes" and
# "inputs.schemas" (per-topic serde or schema, merged onto those inputs) and the two config-file
# locations.
Settings = dict[str, Setting]
