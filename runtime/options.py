"""The runtime's flags: one table that drives `--help`, the parser and the env var names.

Every flag `--some-flag` has the environment variable `PULSARFUNC_SOME_FLAG`. This module only
turns text into typed values (naming the flag or variable when the text is wrong); which value
wins, and whether the whole makes sense, is `resolve.resolve`'s job. `parse_bool` is the one
reading of a boolean word, for every variable and flag value in pulsarfunc.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

from pulsarfunc.runtime.config import (
    CompressionType,
    FunctionConfig,
    InputSpec,
    LogFormat,
    ProcessingGuarantee,
    Setting,
    SubscriptionPosition,
    SubscriptionType,
)
from pulsarfunc.runtime.errors import ConfigError

ENV_PREFIX = "PULSARFUNC_"
_log = logging.getLogger(__name__)
_E = TypeVar("_E", bound=Enum)


# --- converters: text -> value, or ValueError saying why --------------------------------------


def _text(raw: str) -> str:
    return raw.strip()


def _integer(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("not a whole number") from None


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(raw: str) -> bool:
    """True or false from one of TRUE_WORDS or FALSE_WORDS (any case); ValueError otherwise."""
    text = raw.strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError("not a boolean")


def _squash(name: str) -> str:
    return re.sub(r"[-_\s]", "", name).upper()


def parse_enum(enum_type: type[_E], raw: str) -> _E:
    """An enum member by name, ignoring case, `-` and `_` (so `Key_Shared` is KEY_SHARED)."""
    wanted = _squash(raw)
    for member in enum_type:
        if _squash(member.name) == wanted:
            return member
    raise ValueError(f"not a {enum_type.__name__}")


def _enum(enum_type: type[Enum]) -> Callable[[str], Any]:
    return lambda raw: parse_enum(enum_type, raw)


def _text_or_file(raw: str) -> str:
    """The value itself, or the contents of FILE when it is written `@FILE`."""
    if not raw.startswith("@"):
        return raw
    path = Path(raw[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # a binary file holds no JSON either
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _json_object(raw: str) -> Mapping[str, Any]:
    text = _text_or_file(raw)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"JSON {type(value).__name__}, not an object")
    return value


def _topics(raw: str) -> tuple[InputSpec, ...]:
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if not names:
        raise ValueError("no topic name")
    return tuple(InputSpec(topic=name) for name in names)


def _pattern(raw: str) -> tuple[InputSpec, ...]:
    if not raw.strip():
        raise ValueError("empty pattern")
    return (InputSpec(topic=raw.strip(), is_regex=True),)


def _names(enum_type: type[Enum]) -> str:
    return "|".join(member.name for member in enum_type)


# --- the table ----------------------------------------------------------------------------------

Kind = Literal["value", "list", "bool"]


@dataclass(frozen=True)
class Option:
    """One runtime flag, its environment variable and the FunctionConfig field it sets."""

    flag: str  # "--service-url"
    field: str  # FunctionConfig field path ("auth.token"); "inputs.topics"/".patterns"; files
    group: str
    help: str
    metavar: str = "VALUE"
    allowed: str = ""  # what a valid value looks like, for errors
    convert: Callable[[str], Any] = _text
    kind: Kind = "value"  # "list": repeatable, values add up; "bool": --x/--no-x

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


_BROKER = "broker connection"
_IDENTITY = "function identity"
_INPUTS = "inputs"
_OUTPUT = "output"
_PROCESSING = "processing"
_FUNCTION = "user config and secrets"
_WINDOW = "window functions (Pulsar's windowConfig)"
_OPS = "logging, metrics, debugging"
_FILES = "configuration files (lowest precedence, under flags and env vars)"

_TOPIC = "a topic: name, tenant/namespace/name or persistent://tenant/namespace/name"
_WHOLE = "a whole number"
_BOOL = "true or false (also 1/0, yes/no, on/off)"

OPTIONS: tuple[Option, ...] = (
    Option("--service-url", "service_url", _BROKER, "Pulsar service URL", "URL",
           "pulsar://host:6650 or pulsar+ssl://host:6651"),
    Option("--auth-token", "auth.token", _BROKER, "JWT for token authentication", "TOKEN"),
    Option("--auth-plugin", "auth.plugin", _BROKER,
           "Pulsar authentication plugin class (with --auth-params)", "CLASS"),
    Option("--auth-params", "auth.params", _BROKER, "parameters of --auth-plugin", "PARAMS"),
    Option("--tls-trust-certs-file", "auth.tls_trust_certs_file", _BROKER,
           "trusted TLS certificates (PEM)", "FILE"),
    Option("--tls-allow-insecure", "auth.tls_allow_insecure", _BROKER,
           "accept an untrusted TLS certificate from the broker", allowed=_BOOL, kind="bool"),
    Option("--tls-hostname-verification", "auth.tls_hostname_verification", _BROKER,
           "check that the broker's certificate matches its host name", allowed=_BOOL,
           kind="bool"),
    Option("--tenant", "tenant", _IDENTITY, "Pulsar tenant", "TENANT"),
    Option("--namespace", "namespace", _IDENTITY, "Pulsar namespace (without the tenant)", "NS"),
    Option("--name", "name", _IDENTITY, "function name (default: from the handler's name)",
           "NAME"),
    Option("--function-id", "function_id", _IDENTITY,
           "function id (default: derived from tenant/namespace/name)", "ID"),
    Option("--function-version", "function_version", _IDENTITY, "function version", "VERSION"),
    Option("--instance-id", "instance_id", _IDENTITY, "index of this instance", "N",
           "a whole number >= 0", _integer),
    Option("--cluster-name", "cluster_name", _IDENTITY, "Pulsar cluster name", "CLUSTER"),
    Option("--inputs", "inputs.topics", _INPUTS,
           "input topics, comma-separated; repeatable", "TOPIC[,TOPIC...]", _TOPIC, _topics,
           "list"),
    Option("--topics-pattern", "inputs.patterns", _INPUTS,
           "regular expression of input topics; repeatable", "REGEX",
           "a regular expression of topic names", _pattern, "list"),
    Option("--subscription", "subscription", _INPUTS,
           "subscription name (default: tenant/namespace/name)", "NAME"),
    Option("--subscription-type", "subscription_type", _INPUTS, "subscription type",
           _names(SubscriptionType), _names(SubscriptionType) + " (any case; Key_Shared too)",
           _enum(SubscriptionType)),
    Option("--subscription-position", "subscription_position", _INPUTS,
           "where a new subscription starts", _names(SubscriptionPosition),
           _names(SubscriptionPosition), _enum(SubscriptionPosition)),
    Option("--custom-serde-inputs", "inputs.serdes", _INPUTS,
           "input topics with the Pulsar Python serde class of each, as pulsar-admin takes "
           "them: a JSON object, or @FILE holding one", '{"TOPIC":"CLASS"}',
           'a JSON object of topic -> serde class, e.g. {"in": "mymod.MySerDe"}',
           _json_object),
    Option("--custom-schema-inputs", "inputs.schemas", _INPUTS,
           "input topics with the Pulsar schema of each (STRING, JSON, AVRO, PROTOBUF_NATIVE, "
           "BYTES or a schema class; or ConsumerConfig JSON), as pulsar-admin takes them",
           '{"TOPIC":"SCHEMA"}',
           'a JSON object of topic -> schema type or ConsumerConfig JSON, e.g. {"in": "AVRO"}',
           _json_object),
    Option("--input-type-class-name", "input_type_class_name", _INPUTS,
           "the pulsar.schema.Record class (module.Class) of JSON/AVRO inputs, Pulsar's "
           "source typeClassName (default: the handler's input annotation)", "CLASS"),
    Option("--receiver-queue-size", "receiver_queue_size", _INPUTS,
           "messages each consumer prefetches", "N", "a whole number >= 0", _integer),
    Option("--output", "output", _OUTPUT, "output topic (default: no output)", "TOPIC", _TOPIC),
    Option("--output-schema-type", "output_schema_type", _OUTPUT,
           "Pulsar schema of the output: STRING, JSON, AVRO, PROTOBUF_NATIVE, BYTES or a "
           "schema class (module.Class)", "SCHEMA"),
    Option("--schema-type", "output_schema_type", _OUTPUT,
           "pulsar-admin's name for --output-schema-type", "SCHEMA"),
    Option("--output-type-class-name", "output_type_class_name", _OUTPUT,
           "the pulsar.schema.Record class (module.Class) of a JSON/AVRO output, Pulsar's sink "
           "typeClassName (default: the handler's return annotation)", "CLASS"),
    Option("--output-serde-classname", "output_serde_class_name", _OUTPUT,
           "Pulsar Python serde class of the output", "CLASS"),
    Option("--batching", "producer.batching", _OUTPUT, "batch outputs", allowed=_BOOL,
           kind="bool"),
    Option("--batching-max-publish-delay-ms", "producer.batching_max_publish_delay_ms", _OUTPUT,
           "longest wait before a batch is sent", "MS", "a whole number >= 0", _integer),
    Option("--compression-type", "producer.compression", _OUTPUT, "output compression",
           _names(CompressionType), _names(CompressionType), _enum(CompressionType)),
    Option("--forward-source-message-property", "forward_source_message_property", _OUTPUT,
           "copy each input's properties onto its outputs", allowed=_BOOL, kind="bool"),
    Option("--input-properties", "input_properties", _OUTPUT,
           "stamp each output with its input's topic and message id (__pfn_input_topic__, "
           "__pfn_input_msg_id__) as Pulsar's instances do (default); --no-input-properties "
           "leaves them off, for speed", allowed=_BOOL, kind="bool"),
    Option("--processing-guarantees", "processing_guarantee", _PROCESSING,
           "when inputs are acknowledged", _names(ProcessingGuarantee),
           _names(ProcessingGuarantee), _enum(ProcessingGuarantee)),
    Option("--retain-ordering", "retain_ordering", _PROCESSING,
           "process messages in order, one at a time (failover subscription)", allowed=_BOOL,
           kind="bool"),
    Option("--retain-key-ordering", "retain_key_ordering", _PROCESSING,
           "keep the order of messages with the same key (key-shared subscription)",
           allowed=_BOOL, kind="bool"),
    Option("--concurrency", "concurrency", _PROCESSING,
           "messages processed at the same time (default 0 = auto: 16 for async handlers on "
           "shared or key-shared subscriptions, else 1; sync handlers run on N threads)",
           "N", "a whole number >= 0", _integer),
    Option("--max-message-retries", "max_message_retries", _PROCESSING,
           "redeliveries before a message goes to the dead-letter topic (default: forever)",
           "N", "a whole number >= 0", _integer),
    Option("--dead-letter-topic", "dead_letter_topic", _PROCESSING,
           "where messages go after --max-message-retries (default: <input>-<sub>-DLQ)",
           "TOPIC", _TOPIC),
    Option("--redelivery-delay-ms", "redelivery_delay_ms", _PROCESSING,
           "delay before a failed message is redelivered", "MS", "a whole number >= 0",
           _integer),
    Option("--timeout-ms", "timeout_ms", _PROCESSING,
           "longest a handler may take for one message (default: no limit)", "MS",
           "a whole number >= 1", _integer),
    Option("--drain-timeout-ms", "drain_timeout_ms", _PROCESSING,
           "longest a graceful stop (SIGTERM) waits for messages in flight before it "
           "negatively acknowledges the rest", "MS", "a whole number >= 0", _integer),
    Option("--batch-max-size", "batch_max_size", _PROCESSING,
           "call the handler with a list of up to N inputs, returning one output per input "
           "(default 0: one input per call; a Batch[T] annotation makes it 100)", "N",
           "a whole number >= 0", _integer),
    Option("--batch-max-delay-ms", "batch_max_delay_ms", _PROCESSING,
           "longest a batch waits to fill before the handler is called with what it has",
           "MS", "a whole number >= 0", _integer),
    Option("--window-length-count", "window.window_length_count", _WINDOW,
           "a window of N messages (the handler gets list[T])", "N", "a whole number >= 1",
           _integer),
    Option("--window-length-duration-ms", "window.window_length_duration_ms", _WINDOW,
           "a window of the last MS milliseconds", "MS", "a whole number >= 1", _integer),
    Option("--sliding-interval-count", "window.sliding_interval_count", _WINDOW,
           "fire every N messages (default: the window length, a tumbling window)", "N",
           "a whole number >= 1", _integer),
    Option("--sliding-interval-duration-ms", "window.sliding_interval_duration_ms", _WINDOW,
           "fire every MS milliseconds (default: the window length)", "MS",
           "a whole number >= 1", _integer),
    Option("--timestamp-extractor-classname", "window.timestamp_extractor_class_name",
           _WINDOW, "event time: module.Class with extract_timestamp(value) -> epoch ms",
           "CLASS"),
    Option("--use-event-time", "window.use_event_time", _WINDOW,
           "event time: each message's event time (else its publish time)", allowed=_BOOL,
           kind="bool"),
    Option("--max-lag-ms", "window.max_lag_ms", _WINDOW,
           "event time: how late data may come before the watermark passes it (default 0)",
           "MS", "a whole number >= 0", _integer),
    Option("--watermark-emit-interval-ms", "window.watermark_emit_interval_ms", _WINDOW,
           "event time: how often the watermark advances (default 1000)", "MS",
           "a whole number >= 1", _integer),
    Option("--late-data-topic", "window.late_data_topic", _WINDOW,
           "event time: where data older than the watermark goes (default: dropped, counted)",
           "TOPIC", _TOPIC),
    Option("--max-window-messages", "window.max_window_messages", _WINDOW,
           "messages a window function holds at most (default: 10 x --receiver-queue-size)",
           "N", "a whole number >= 1", _integer),
    Option("--state-storage-service-url", "state_storage_service_url", _FUNCTION,
           "managed state (counters, put_state): Pulsar's state storage, the BookKeeper table "
           "service (needs pulsarfunc[state])", "bk://HOST:4181", "bk://HOST:PORT"),
    Option("--user-config", "user_config", _FUNCTION,
           "user config: a JSON object, or @FILE holding one", "JSON|@FILE",
           'a JSON object, e.g. {"key": "value"}, or @FILE', _json_object),
    Option("--secrets", "secrets", _FUNCTION, "secrets map: a JSON object, or @FILE holding one",
           "JSON|@FILE", 'a JSON object, e.g. {"name": "ENV_VAR"}, or @FILE', _json_object),
    Option("--log-level", "log_level", _OPS, "log level", "LEVEL",
           "DEBUG|INFO|WARNING|ERROR|CRITICAL"),
    Option("--log-format", "log_format", _OPS, "log line format", _names(LogFormat).lower(),
           "text or json", _enum(LogFormat)),
    Option("--log-topic", "log_topic", _OPS, "topic that also receives the function's logs",
           "TOPIC", _TOPIC),
    Option("--metrics-port", "metrics_port", _OPS,
           "serve Prometheus metrics on this port (0: any free port; default: off)", "PORT",
           "a port number, 0-65535", _integer),
    Option("--tracing", "tracing", _OPS,
           "trace each message with OpenTelemetry (needs pulsarfunc[otel]; exporter, endpoint "
           "and service name from the standard OTEL_* variables)", allowed=_BOOL, kind="bool"),
    Option("--debug", "debug", _OPS, "show tracebacks of errors", allowed=_BOOL, kind="bool"),
    Option("--function-config", "function_config", _FILES,
           "pulsar-admin function-config YAML file", "FILE", "a YAML file"),
    Option("--function-details", "function_details", _FILES,
           "the Pulsar worker's FunctionDetails JSON, or @FILE holding it", "JSON|@FILE",
           "FunctionDetails JSON, or @FILE", _text_or_file),
)  # fmt: skip

_BY_ENV = {option.env: option for option in OPTIONS}
_BY_FLAG = {option.flag: option for option in OPTIONS}


# --- the parser ---------------------------------------------------------------------------------


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError instead of printing usage and exiting 2.

    `--help` still prints and exits 0.
    """

    def error(self, message: str) -> NoReturn:
        known = [flag for action in self._actions for flag in action.option_strings]
        hint = f"see `{self.prog} --help`"
        for word in re.findall(r"--?[\w-]+", message):
            if word in _BY_FLAG:
                option = _BY_FLAG[word]
                hint = f"{word} takes {option.allowed or option.metavar}"
                if option.kind == "bool":
                    hint = f"{word} takes no value; --no-{word[2:]} turns it off"
            elif word not in known and (close := difflib.get_close_matches(word, known, n=1)):
                hint = f"did you mean {close[0]}?"
        raise ConfigError(message, hint=hint)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help text without breaking flag and variable names at their hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(text, width, break_on_hyphens=False)


def _default_text(field_path: str) -> str:
    value: Any = FunctionConfig()
    for part in field_path.split("."):
        if not is_dataclass(value) or part not in {f.name for f in fields(value)}:
            return ""
        value = getattr(value, part)
    if isinstance(value, Enum):
        value = value.value
    if value in ("", None, ()) or isinstance(value, Mapping):
        return ""
    if isinstance(value, bool):
        value = str(value).lower()
    return f"; default {value}"


def build_parser(prog: str = "pulsarfunc run") -> FlagParser:
    """Every runtime flag, grouped, with help text and env var names.

    It takes no positional argument: a caller that needs one (`pulsarfunc run PATH[:handler]`)
    adds it to the returned parser. The usage line is `PROG [flags]`, so name positionals in
    `prog`.
    """
    parser = FlagParser(
        prog=prog,
        usage="%(prog)s [flags]",
        description="Run a Pulsar function. Every flag --some-flag can also be set by the "
        "environment variable PULSARFUNC_SOME_FLAG. Precedence: flags, then environment "
        "variables, then --function-details, then --function-config, then defaults.",
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
        argument_default=argparse.SUPPRESS,  # absent flags stay absent: lower layers show through
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in OPTIONS:
        group = groups.get(option.group) or groups.setdefault(
            option.group, parser.add_argument_group(option.group)
        )
        help_text = f"{option.help} [env {option.env}{_default_text(option.field)}]"
        if option.kind == "bool":
            group.add_argument(
                option.flag, dest=option.dest, action=argparse.BooleanOptionalAction,
                help=help_text,
            )  # fmt: skip
        else:
            group.add_argument(
                option.flag, dest=option.dest, metavar=option.metavar, help=help_text,
                action="append" if option.kind == "list" else "store",
            )  # fmt: skip
    return parser


# --- settings from the parsed flags and from the environment ------------------------------------


def _convert(option: Option, raw: str, source: str) -> Any:
    """`raw` as the option's type; a bool is only ever text in a variable (the flag has none)."""
    convert = parse_bool if option.kind == "bool" else option.convert
    try:
        return convert(raw)
    except ValueError as exc:
        takes = option.env if option.kind == "bool" else option.flag
        raise ConfigError(
            f"{source}: invalid value {raw!r}: {exc}",
            hint=f"{takes} takes {option.allowed or option.metavar}",
        ) from None


def flag_settings(args: argparse.Namespace) -> dict[str, Setting]:
    """The settings given as flags, keyed by field path; extra attributes are ignored."""
    settings: dict[str, Setting] = {}
    for option in OPTIONS:
        if not hasattr(args, option.dest):
            continue
        raw = getattr(args, option.dest)
        if option.kind == "bool":
            value: Any = bool(raw)
        elif option.kind == "list":
            value = tuple(item for text in raw for item in _convert(option, text, option.flag))
        else:
            value = _convert(option, raw, option.flag)
        settings[option.field] = Setting(value, option.flag)
    return settings


def env_settings(env: Mapping[str, str]) -> dict[str, Setting]:
    """The settings given as PULSARFUNC_* variables; empty ones count as unset.

    An unknown PULSARFUNC_* name close to a known one is logged as a probable typo.
    """
    settings: dict[str, Setting] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or not raw.strip():
            continue
        option = _BY_ENV.get(name)
        if option is None:
            close = difflib.get_close_matches(name, list(_BY_ENV), n=1, cutoff=0.85)
            if close:
                _log.warning("ignoring unknown variable %s; did you mean %s?", name, close[0])
            continue
        settings[option.field] = Setting(_convert(option, raw, name), name)
    return settings


def env_names(options: Sequence[Option] = OPTIONS) -> list[str]:
    """The environment variable of every flag, in table order (for docs and images)."""
    return [option.env for option in options]
