"""The one place configuration is resolved: flags > PULSARFUNC_* env vars > files > defaults.

`resolve` turns a command line and an environment into the one checked FunctionConfig of an
instance; `launch` reads the few process settings needed before (or around) that: whether to
show tracebacks, the program name for `--help`, and the image's entrypoint. No other runtime
module looks up a PULSARFUNC_* variable; callers hand the environment in.

The layers are parsed elsewhere (`options`: flags and variables; `formats`: FunctionDetails JSON
and function-config YAML); this module only merges and validates them. So imports run one way:
resolve imports options and formats, they import config, and config imports neither.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NoReturn

from pulsarfunc.runtime.config import (
    FunctionConfig,
    InputSpec,
    ProcessingGuarantee,
    Settings,
    WindowSettings,
    frozen_map,
)
from pulsarfunc.runtime.errors import ConfigError
from pulsarfunc.runtime.formats import custom_inputs, details_settings, function_config_settings
from pulsarfunc.runtime.options import build_parser, env_settings, flag_settings, parse_bool
from pulsarfunc.runtime.windows import WindowConfigError, spec_of

# Where an image's entrypoint lives (Dockerfile.base's ENTRYPOINT); PULSARFUNC_ENTRYPOINT moves it.
ENTRYPOINT = "/opt/pulsarfunc/entrypoint.py"
_FILE_KEYS = ("function_config", "function_details")


# --- process settings, read before the configuration is resolved --------------------------------


@dataclass(frozen=True)
class Launch:
    """What a program needs before its FunctionConfig exists (e.g. to report that it does not)."""

    debug: bool  # show tracebacks of errors: --debug/--no-debug, else PULSARFUNC_DEBUG
    prog: str  # the program's name in usage and --help: PULSARFUNC_PROG, else the caller's
    entrypoint: str  # the image's entrypoint program: PULSARFUNC_ENTRYPOINT, else ENTRYPOINT


def launch(
    argv: Sequence[str], env: Mapping[str, str], *, default_prog: str = "pulsarfunc"
) -> Launch:
    """The process settings for these flags and this environment; never raises.

    A PULSARFUNC_DEBUG that is not a boolean counts as false here: `resolve` reports it.
    """
    debug = False
    with contextlib.suppress(ValueError):  # unset, empty or no boolean: off (resolve says why)
        debug = parse_bool(env.get("PULSARFUNC_DEBUG", ""))
    switches = [arg for arg in argv if arg in ("--debug", "--no-debug")]
    if switches:  # a flag wins over the variable, the last flag over earlier ones, as in resolve
        debug = switches[-1] == "--debug"
    return Launch(
        debug=debug,
        prog=env.get("PULSARFUNC_PROG", "").strip() or default_prog,
        entrypoint=env.get("PULSARFUNC_ENTRYPOINT", "").strip() or ENTRYPOINT,
    )


# --- resolve: flags > PULSARFUNC_* env vars > config files > defaults ---------------------------


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
    return resolve_args(build_parser(prog).parse_args(list(argv)), env, defaults=defaults)


def resolve_args(
    args: argparse.Namespace,
    env: Mapping[str, str],
    *,
    defaults: FunctionConfig | None = None,
) -> FunctionConfig:
    """`resolve` for flags already parsed by a (possibly extended) `options.build_parser()`."""
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
    kinds = [("inputs.topics", topics), ("inputs.patterns", patterns)]
    for key, yaml_key in _CUSTOM_INPUTS.items():  # per-topic serdes and schemas (flags)
        if key in merged:
            kinds.append((key, custom_inputs(yaml_key, merged[key].value, source(key))))
    inputs = tuple(
        replace(spec, topic=_checked(spec.topic, spec.is_regex, source(key)))
        for key, specs in kinds
        for spec in specs
    )
    top = {k: s.value for k, s in merged.items() if "." not in k}
    for key in ("output_schema_properties",):
        if isinstance(top.get(key), Mapping):
            top[key] = frozen_map(top[key])
    for key in ("output", "log_topic", "dead_letter_topic"):
        if topic := value(key, getattr(base, key)):
            top[key] = _checked(topic, False, source(key))
    late = "window.late_data_topic"
    if late in merged and merged[late].value:
        merged = {
            **merged,
            late: merged[late]._replace(value=_checked(merged[late].value, False, source(late))),
        }
    top["log_level"] = _log_level(value("log_level", base.log_level), source("log_level"))
    for key in ("user_config", "secrets"):
        if isinstance(top.get(key), Mapping):
            top[key] = frozen_map(top[key])
    nested = {
        name: replace(getattr(base, name), **_sub_fields(merged, name))
        for name in ("auth", "producer", "window")
    }
    config = replace(base, **top, **nested, inputs=_unique(inputs))
    _validate(config, source)
    return config


def _sub_fields(merged: Settings, name: str) -> dict[str, Any]:
    prefix = name + "."
    return {k[len(prefix) :]: s.value for k, s in merged.items() if k.startswith(prefix)}


# per-topic serdes and schemas, as their function-config keys, merged onto the inputs in order
_CUSTOM_INPUTS = {"inputs.serdes": "customSerdeInputs", "inputs.schemas": "customSchemaInputs"}


def _unique(specs: tuple[InputSpec, ...]) -> tuple[InputSpec, ...]:
    """Inputs in order, one per topic: what a later spec of the same topic sets (a serde, a
    schema, a queue size) replaces the earlier one's, as pulsar-admin's --inputs,
    --custom-serde-inputs and --custom-schema-inputs add up to one ConsumerSpec per topic."""
    by_topic: dict[str, InputSpec] = {}
    for spec in specs:
        earlier = by_topic.get(spec.topic)
        if earlier is not None:
            bare = InputSpec(spec.topic)
            given = {f.name: getattr(spec, f.name) for f in fields(spec)}
            spec = replace(earlier, **{k: v for k, v in given.items() if v != getattr(bare, k)})
        by_topic[spec.topic] = spec
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
# Smallest value of each numeric field (the metrics port also has a largest, 65535).
_MINIMUM = {
    "instance_id": 0,
    "concurrency": 0,
    "max_message_retries": 0,
    "redelivery_delay_ms": 0,
    "timeout_ms": 1,
    "drain_timeout_ms": 0,
    "batch_max_size": 0,
    "batch_max_delay_ms": 0,
    "receiver_queue_size": 0,
    "metrics_port": 0,
    "producer.batching_max_publish_delay_ms": 0,
    "producer.batching_max_messages": 1,
    "producer.max_pending_messages": 1,
}


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
    for key, low in _MINIMUM.items():
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
    if config.window != WindowSettings():
        _validate_window(config, fail)
    if config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE:
        transient = [s.topic for s in config.inputs if s.topic.startswith("non-persistent://")]
        if transient:
            fail(
                "processing_guarantee",
                f"EFFECTIVELY_ONCE with the non-persistent input {transient[0]}: its messages "
                "have no positions (every one is ledger 0, entry 0), so their outputs cannot "
                "get sequence ids and the broker would drop all but the first",
                "use ATLEAST_ONCE for non-persistent inputs, or a persistent:// topic",
            )


def _validate_window(config: FunctionConfig, fail: Callable[[str, str, str], NoReturn]) -> None:
    """Pulsar's WindowConfigUtils checks, and the guarantees a window cannot keep."""
    try:
        spec_of(config.window, config.receiver_queue_size)
    except WindowConfigError as exc:
        fail(exc.key, exc.problem, exc.hint)
    guarantee = config.processing_guarantee
    if guarantee in (ProcessingGuarantee.EFFECTIVELY_ONCE, ProcessingGuarantee.MANUAL):
        fail(
            "processing_guarantee",
            f"window functions do not support {guarantee.name}",
            "use ATLEAST_ONCE (outputs may repeat after a failure: see README, Window "
            "functions) or ATMOST_ONCE"
            + (
                ": a window's output comes from many inputs, so no one input's position can "
                "deduplicate it"
                if guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
                else ": inputs are acknowledged when their windows are done"
            ),
        )


def _get(config: FunctionConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value
