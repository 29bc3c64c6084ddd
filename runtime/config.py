"""FunctionConfig: everything an instance needs, resolved once and frozen.

Precedence, resolved in one place (`resolve`): flags > PULSARFUNC_* env vars > config file
(function-config YAML or FunctionDetails JSON) > defaults. Nothing else reads the environment.
"""

from __future__ import annotations

import argparse
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn

from pulsarfunc.runtime.errors import ConfigError


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


@dataclass(frozen=True)
class InputSpec:
    """One input: a topic, or a regex pattern of topics (Function.proto's ConsumerSpec)."""

    topic: str
    is_regex: bool = False
    schema_type: str = ""  # Pulsar schema name, e.g. STRING; "" = raw bytes
    serde_class_name: str = ""  # Pulsar Python serde class, e.g. serde.IdentitySerDe
    receiver_queue_size: int | None = None


@dataclass(frozen=True)
class ProducerSettings:
    """How outputs (and context.publish) are produced."""

    batching: bool = True
    batching_max_publish_delay_ms: int = 10
    batching_max_messages: int = 1000
    compression: CompressionType = CompressionType.LZ4
    max_pending_messages: int = 10000


@dataclass(frozen=True)
class AuthSettings:
    """Broker authentication and TLS."""

    token: str | None = None  # JWT for token authentication
    plugin: str | None = None  # Pulsar auth plugin class name, with `params`
    params: str | None = None
    tls_trust_certs_file: str | None = None
    tls_allow_insecure: bool = False
    tls_hostname_verification: bool = False


def _frozen_map(value: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True)
class FunctionConfig:
    """One function instance's configuration; built once by `resolve`, then passed in."""

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
    output_schema_type: str = ""
    output_serde_class_name: str = ""
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    forward_source_message_property: bool = False
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

    # the function itself
    user_config: Mapping[str, Any] = field(default_factory=_frozen_map)
    secrets: Mapping[str, Any] = field(default_factory=_frozen_map)
    class_name: str = ""  # Pulsar's className / handler reference, e.g. "module.func"
    py: str = ""  # Pulsar's `py`: path of the function file or package

    # operations
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    metrics_port: int | None = None
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


# --- resolve: flags > PULSARFUNC_* env vars > config files > defaults ---------------------------


class Setting(NamedTuple):
    """One configured value and where it came from (flag, variable or file), for errors."""

    value: Any
    source: str


# Keys of a settings dict are FunctionConfig field paths ("auth.token"), plus "inputs.topics" and
# "inputs.patterns" (each replaces only its own kind of input) and the two config-file locations.
Settings = dict[str, Setting]
_FILE_KEYS = ("function_config", "function_details")


def resolve(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    defaults: FunctionConfig | None = None,
    prog: str = "pulsarfunc run",
) -> FunctionConfig:
    """The one FunctionConfig for these flags and this environment; ConfigError if unusable.

    `argv` holds flags only (see `options.build_parser`). `defaults` are the caller's values
    (e.g. a name derived from the handler), under everything the user configured. `prog` names
    the program in `--help`.
    """
    from pulsarfunc.runtime.options import build_parser  # options imports this module

    return resolve_args(build_parser(prog).parse_args(list(argv)), env, defaults=defaults)


def resolve_args(
    args: argparse.Namespace,
    env: Mapping[str, str],
    *,
    defaults: FunctionConfig | None = None,
) -> FunctionConfig:
    """`resolve` for flags already parsed by a (possibly extended) `options.build_parser()`."""
    # both import this module, so they are imported here rather than at the top
    from pulsarfunc.runtime.formats import details_settings, function_config_settings
    from pulsarfunc.runtime.options import env_settings, flag_settings

    flags = flag_settings(args)
    environ = env_settings(env)
    layers: list[Settings] = []
    loaders = (function_config_settings, details_settings)
    for key, load in zip(_FILE_KEYS, loaders, strict=True):
        where = flags.get(key) or environ.get(key)
        if where is not None:
            layers.append(load(where.value, where.source))
    merged: Settings = {}
    for layer in (*layers, environ, flags):
        merged.update({key: setting for key, setting in layer.items() if key not in _FILE_KEYS})
    return _build(defaults or FunctionConfig(), merged)


def _build(base: FunctionConfig, merged: Settings) -> FunctionConfig:
    """`merged` over `base`, with topic names in full form and the log level canonical; checked."""

    def source(path: str) -> str:
        return merged[path].source if path in merged else "the defaults"

    def value(path: str, current: Any) -> Any:
        return merged[path].value if path in merged else current

    topics = value("inputs.topics", [s for s in base.inputs if not s.is_regex])
    patterns = value("inputs.patterns", [s for s in base.inputs if s.is_regex])
    inputs = tuple(
        replace(spec, topic=_checked(spec.topic, spec.is_regex, source(key)))
        for key, specs in (("inputs.topics", topics), ("inputs.patterns", patterns))
        for spec in specs
    )
    top = {k: s.value for k, s in merged.items() if "." not in k}
    for key in ("output", "log_topic", "dead_letter_topic"):
        if topic := value(key, getattr(base, key)):
            top[key] = _checked(topic, False, source(key))
    top["log_level"] = _log_level(value("log_level", base.log_level), source("log_level"))
    for key in ("user_config", "secrets"):
        if isinstance(top.get(key), Mapping):
            top[key] = _frozen_map(top[key])
    nested = {
        name: replace(getattr(base, name), **_sub_fields(merged, name))
        for name in ("auth", "producer")
    }
    config = replace(base, **top, **nested, inputs=_unique(inputs))
    _validate(config, source)
    return config


def _sub_fields(merged: Settings, name: str) -> dict[str, Any]:
    prefix = name + "."
    return {k[len(prefix) :]: s.value for k, s in merged.items() if k.startswith(prefix)}


def _unique(specs: tuple[InputSpec, ...]) -> tuple[InputSpec, ...]:
    """Inputs in order, a later spec of the same topic replacing an earlier one (as Pulsar)."""
    by_topic = {spec.topic: spec for spec in specs}
    return tuple(by_topic.values())


# --- topic names --------------------------------------------------------------------------------

_NAME = re.compile(r"[-=:.\w]+")  # Pulsar's NamedEntity rule for tenants and namespaces
_DOMAINS = ("persistent", "non-persistent")


def normalize_topic(name: str, *, pattern: bool = False) -> str:
    """The full form `persistent://tenant/namespace/topic` of a Pulsar topic name or pattern.

    Short forms as Pulsar reads them: `t` is `persistent://public/default/t`, `a/b/t` is
    `persistent://a/b/t`. A pattern must compile as a regular expression. ValueError says why not.
    """
    text = name.strip()
    domain, sep, rest = text.partition("://") if "://" in text else ("persistent", "", text)
    if sep and domain not in _DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; use persistent:// or non-persistent://")
    parts = rest.split("/", 2) if pattern else rest.split("/")
    if len(parts) == 1 and not sep:
        parts = ["public", "default", rest]
    if len(parts) != 3 or not parts[2]:
        raise ValueError(
            "expected topic, tenant/namespace/topic or domain://tenant/namespace/topic"
        )
    tenant, namespace, local = parts
    for what, part in (("tenant", tenant), ("namespace", namespace)):
        if not _NAME.fullmatch(part):
            raise ValueError(f"{what} {part!r} may hold only letters, digits and -=:._")
    full = f"{domain}://{tenant}/{namespace}/{local}"
    if pattern:
        try:
            re.compile(full)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    elif re.search(r"\s", local):
        raise ValueError("a topic name holds no spaces")
    return full


def _checked(topic: str, pattern: bool, source: str) -> str:
    try:
        return normalize_topic(topic, pattern=pattern)
    except ValueError as exc:
        what = "topics pattern" if pattern else "topic name"
        example = (
            "a regular expression of full names, e.g. persistent://public/default/orders-.*"
            if pattern
            else "e.g. my-topic, my-tenant/my-ns/my-topic or persistent://public/default/my-topic"
        )
        raise ConfigError(f"{source}: invalid {what} {topic!r}: {exc}", hint=example) from None


# --- validation ---------------------------------------------------------------------------------

_LOG_LEVELS = {"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"} | {
    level: level for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
}
_SCHEMES = ("pulsar://", "pulsar+ssl://", "http://", "https://")


def _log_level(level: str, source: str) -> str:
    canonical = _LOG_LEVELS.get(str(level).strip().upper())
    if canonical is None:
        raise ConfigError(
            f"{source}: unknown log level {level!r}", hint="use DEBUG, INFO, WARNING or ERROR"
        )
    return canonical


def _validate(config: FunctionConfig, source: Callable[[str], str]) -> None:
    """Cross-field and range checks; `source(field)` names where a value came from."""

    def fail(key: str, problem: str, hint: str) -> NoReturn:
        raise ConfigError(f"{source(key)}: {problem}", hint=hint)

    if not config.inputs:
        raise ConfigError(
            "no input topic configured",
            hint="pass --inputs TOPIC[,TOPIC] or --topics-pattern REGEX (or PULSARFUNC_INPUTS)",
        )
    if not config.service_url.startswith(_SCHEMES):
        fail(
            "service_url",
            f"invalid service URL {config.service_url!r}",
            "use pulsar://host:6650 or pulsar+ssl://host:6651",
        )
    for key in ("tenant", "namespace", "name"):
        text = getattr(config, key)
        if (text or key != "name") and not _NAME.fullmatch(text):
            fail(key, f"invalid {key} {text!r}", "use letters, digits and -=:._ only")
    minimum = {
        "instance_id": 0,
        "concurrency": 0,
        "max_message_retries": 0,
        "redelivery_delay_ms": 0,
        "timeout_ms": 1,
        "receiver_queue_size": 0,
        "metrics_port": 0,
        "producer.batching_max_publish_delay_ms": 0,
        "producer.batching_max_messages": 1,
        "producer.max_pending_messages": 1,
    }
    for key, low in minimum.items():
        number = _get(config, key)
        high = 65535 if key == "metrics_port" else None
        if number is not None and (number < low or (high is not None and number > high)):
            bounds = f"{low}-{high}" if high is not None else f">= {low}"
            fail(key, f"{key.split('.')[-1]} is {number}", f"it must be {bounds}")
    for key in ("user_config", "secrets"):
        if not isinstance(getattr(config, key), Mapping):
            fail(key, f"{key} is not a JSON object", 'pass an object, e.g. {"key": "value"}')
    if config.auth.token and config.auth.plugin:
        fail("auth.plugin", "both a token and an auth plugin given", "pass only one of them")
    if config.dead_letter_topic and config.max_message_retries is None:
        fail(
            "dead_letter_topic",
            "a dead-letter topic needs a retry limit",
            "also pass --max-message-retries N",
        )
    if config.retain_ordering and config.retain_key_ordering:
        fail(
            "retain_key_ordering",
            "retain ordering and retain key ordering both set",
            "choose one: key ordering keeps order per key, ordering keeps all order",
        )
    if (
        config.retain_key_ordering
        and config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
    ):
        fail(
            "retain_key_ordering",
            "retain key ordering with EFFECTIVELY_ONCE",
            "EFFECTIVELY_ONCE already processes in order: drop retain key ordering",
        )


def _get(config: FunctionConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value
