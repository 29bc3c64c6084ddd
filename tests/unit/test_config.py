"""resolve: every flag and its env var, precedence, --help, and errors that name the flag."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pulsarfunc.runtime.config import (
    CompressionType,
    FunctionConfig,
    InputSpec,
    LogFormat,
    ProcessingGuarantee,
    SubscriptionPosition,
    SubscriptionType,
)
from pulsarfunc.runtime.errors import ConfigError, UserError
from pulsarfunc.runtime.options import OPTIONS, build_parser
from pulsarfunc.runtime.resolve import resolve, resolve_args

IN = ["--inputs", "in"]  # every resolve needs an input
IN_ENV = {"PULSARFUNC_INPUTS": "in"}


def get(config: FunctionConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def topics(*names: str) -> tuple[InputSpec, ...]:
    return tuple(InputSpec(f"persistent://public/default/{name}") for name in names)


# (flag, text given, FunctionConfig field, expected value); bool flags are given without text.
FLAGS: list[tuple[str, str | None, str, Any]] = [
    ("--service-url", "pulsar+ssl://broker:6651", "service_url", "pulsar+ssl://broker:6651"),
    ("--auth-token", "eyJ.x.y", "auth.token", "eyJ.x.y"),
    ("--auth-plugin", "org.Auth", "auth.plugin", "org.Auth"),
    ("--auth-params", "k:v", "auth.params", "k:v"),
    ("--tls-trust-certs-file", "/ca.pem", "auth.tls_trust_certs_file", "/ca.pem"),
    ("--tls-allow-insecure", None, "auth.tls_allow_insecure", True),
    ("--tls-hostname-verification", None, "auth.tls_hostname_verification", True),
    ("--tenant", "acme", "tenant", "acme"),
    ("--namespace", "payments", "namespace", "payments"),
    ("--name", "enrich", "name", "enrich"),
    ("--function-id", "f-1", "function_id", "f-1"),
    ("--function-version", "7", "function_version", "7"),
    ("--instance-id", "3", "instance_id", 3),
    ("--cluster-name", "east", "cluster_name", "east"),
    ("--inputs", "a, b,acme/ns/c", "inputs", (*topics("a", "b"), InputSpec("persistent://acme/ns/c"))),
    ("--topics-pattern", "in-.*", "inputs",
     (*topics("in"), InputSpec("persistent://public/default/in-.*", is_regex=True))),
    ("--custom-serde-inputs", '{"in": "my.Serde"}', "inputs",
     (InputSpec("persistent://public/default/in", serde_class_name="my.Serde"),)),
    ("--custom-schema-inputs", '{"in": "AVRO", "b": "{\\"schemaType\\": \\"JSON\\"}"}', "inputs",
     (InputSpec("persistent://public/default/in", schema_type="AVRO"),
      InputSpec("persistent://public/default/b", schema_type="JSON"))),
    ("--input-type-class-name", "fn.Order", "input_type_class_name", "fn.Order"),
    ("--subscription", "sub", "subscription", "sub"),
    ("--subscription-type", "Key_Shared", "subscription_type", SubscriptionType.KEY_SHARED),
    ("--subscription-position", "earliest", "subscription_position", SubscriptionPosition.EARLIEST),
    ("--receiver-queue-size", "0", "receiver_queue_size", 0),
    ("--output", "out", "output", "persistent://public/default/out"),
    ("--output-schema-type", "STRING", "output_schema_type", "STRING"),
    ("--schema-type", "JSON", "output_schema_type", "JSON"),
    ("--output-type-class-name", "fn.Out", "output_type_class_name", "fn.Out"),
    ("--output-serde-classname", "my.Serde", "output_serde_class_name", "my.Serde"),
    ("--no-batching", None, "producer.batching", False),
    ("--batching-max-publish-delay-ms", "25", "producer.batching_max_publish_delay_ms", 25),
    ("--compression-type", "zstd", "producer.compression", CompressionType.ZSTD),
    ("--forward-source-message-property", None, "forward_source_message_property", True),
    ("--no-input-properties", None, "input_properties", False),
    ("--processing-guarantees", "effectively_once", "processing_guarantee",
     ProcessingGuarantee.EFFECTIVELY_ONCE),
    ("--retain-ordering", None, "retain_ordering", True),
    ("--retain-key-ordering", None, "retain_key_ordering", True),
    ("--concurrency", "8", "concurrency", 8),
    ("--max-message-retries", "0", "max_message_retries", 0),
    ("--dead-letter-topic", "dlq", "dead_letter_topic", "persistent://public/default/dlq"),
    ("--redelivery-delay-ms", "250", "redelivery_delay_ms", 250),
    ("--timeout-ms", "5000", "timeout_ms", 5000),
    ("--drain-timeout-ms", "0", "drain_timeout_ms", 0),
    ("--batch-max-size", "50", "batch_max_size", 50),
    ("--batch-max-delay-ms", "0", "batch_max_delay_ms", 0),
    ("--window-length-count", "10", "window.window_length_count", 10),
    ("--window-length-duration-ms", "500", "window.window_length_duration_ms", 500),
    ("--sliding-interval-count", "5", "window.sliding_interval_count", 5),
    ("--sliding-interval-duration-ms", "100", "window.sliding_interval_duration_ms", 100),
    ("--timestamp-extractor-classname", "fn.Ts", "window.timestamp_extractor_class_name", "fn.Ts"),
    ("--use-event-time", None, "window.use_event_time", True),
    ("--max-lag-ms", "5", "window.max_lag_ms", 5),
    ("--watermark-emit-interval-ms", "250", "window.watermark_emit_interval_ms", 250),
    ("--late-data-topic", "late", "window.late_data_topic", "persistent://public/default/late"),
    ("--max-window-messages", "5000", "window.max_window_messages", 5000),
    ("--state-storage-service-url", "bk://pulsar:4181", "state_storage_service_url",
     "bk://pulsar:4181"),
    ("--user-config", '{"a": [1, 2]}', "user_config", {"a": [1, 2]}),
    ("--secrets", '{"pw": "PASSWORD_VAR"}', "secrets", {"pw": "PASSWORD_VAR"}),
    ("--log-level", "warn", "log_level", "WARNING"),
    ("--log-format", "JSON", "log_format", LogFormat.JSON),
    ("--log-topic", "t/n/logs", "log_topic", "persistent://t/n/logs"),
    ("--metrics-port", "9100", "metrics_port", 9100),
    ("--tracing", None, "tracing", True),
    ("--debug", None, "debug", True),
    ("--function-config", "word-count.yaml", "name", "word-count"),
    ("--function-details", '{"name": "from-details"}', "name", "from-details"),
]  # fmt: skip
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
_BY_TIME = ["--window-length-duration-ms", "500"]
_NEEDS = {  # flags that are only valid together with another one
    "--dead-letter-topic": ["--max-message-retries", "1"],
    "--sliding-interval-count": ["--window-length-count", "10"],
    "--sliding-interval-duration-ms": _BY_TIME,
    "--timestamp-extractor-classname": _BY_TIME,
    "--use-event-time": _BY_TIME,
    "--max-lag-ms": _BY_TIME,
    "--watermark-emit-interval-ms": _BY_TIME,
    "--late-data-topic": [*_BY_TIME, "--use-event-time"],
    "--max-window-messages": _BY_TIME,
    "--function-config": [],
}


def _argv(flag: str, text: str | None) -> list[str]:
    if flag == "--function-config" and text is not None:
        text = str(FIXTURES / text)
    given = [flag] if text is None else [flag, text]
    inputs = [] if flag in ("--inputs", "--function-config") else IN
    return [*inputs, *_NEEDS.get(flag, []), *given]


def test_the_table_covers_every_flag() -> None:
    tested = {flag.replace("--no-", "--") for flag, *_ in FLAGS}
    assert tested == {option.flag for option in OPTIONS}


@pytest.mark.parametrize(("flag", "text", "path", "expected"), FLAGS, ids=[f[0] for f in FLAGS])
def test_every_flag_parses(flag: str, text: str | None, path: str, expected: Any) -> None:
    assert get(resolve(_argv(flag, text), {}), path) == expected


@pytest.mark.parametrize(("flag", "text", "path", "expected"), FLAGS, ids=[f[0] for f in FLAGS])
def test_every_flag_has_its_env_var(flag: str, text: str | None, path: str, expected: Any) -> None:
    option = next(o for o in OPTIONS if o.flag == flag.replace("--no-", "--"))
    if text is None:
        text = "false" if flag.startswith("--no-") else "true"
    elif flag == "--function-config":
        text = str(FIXTURES / text)
    env = {option.env: text}
    argv = [] if flag in ("--inputs", "--function-config") else list(IN)
    argv += _NEEDS.get(flag, [])
    assert get(resolve(argv, env), path) == expected


def test_env_var_names() -> None:
    names = {option.flag: option.env for option in OPTIONS}
    assert names["--output-serde-classname"] == "PULSARFUNC_OUTPUT_SERDE_CLASSNAME"
    assert names["--function-config"] == "PULSARFUNC_FUNCTION_CONFIG"
    assert names["--function-details"] == "PULSARFUNC_FUNCTION_DETAILS"
    assert names["--batching"] == "PULSARFUNC_BATCHING"


def test_lists_add_up_across_repeats_and_commas() -> None:
    config = resolve(["--inputs", "a,b", "--inputs", "c", "--topics-pattern", "x-.*"], {})
    assert config.input_topics == (
        "persistent://public/default/a",
        "persistent://public/default/b",
        "persistent://public/default/c",
        "persistent://public/default/x-.*",
    )
    assert resolve(["--inputs", "a,a"], {}).input_topics == ("persistent://public/default/a",)


@pytest.mark.parametrize(
    "spelling",
    ["SHARED", "shared", "Shared", "KEY_SHARED", "Key_Shared", "key-shared", "KeyShared"],
)
def test_subscription_type_spellings(spelling: str) -> None:
    kind = resolve([*IN, "--subscription-type", spelling], {}).subscription_type
    assert kind.name.replace("_", "") == spelling.replace("_", "").replace("-", "").upper()


def test_json_values_from_files(tmp_path: Path) -> None:
    (tmp_path / "user.json").write_text('{"threshold": 3}')
    config = resolve([*IN, "--user-config", f"@{tmp_path / 'user.json'}"], {})
    assert dict(config.user_config) == {"threshold": 3}
    with pytest.raises(TypeError):
        config.user_config["x"] = 1  # type: ignore[index]


# --- precedence: flags > env > --function-details > --function-config > defaults ----------------


def _write(tmp_path: Path, yaml_output: str | None, json_output: str | None) -> list[str]:
    argv = []
    if yaml_output is not None:
        (tmp_path / "f.yaml").write_text(f"inputs: [in]\noutput: {yaml_output}\n")
        argv += ["--function-config", str(tmp_path / "f.yaml")]
    if json_output is not None:
        argv += ["--function-details", f'{{"sink": {{"topic": "{json_output}"}}}}']
    return argv


# (flag, env, FunctionDetails, function config, caller default) -> the output topic that wins
PRECEDENCE = [
    (None, None, None, None, None, ""),
    (None, None, None, None, "default", "default"),
    (None, None, None, "yaml", "default", "yaml"),
    (None, None, "json", "yaml", "default", "json"),
    (None, "env", "json", "yaml", "default", "env"),
    ("flag", "env", "json", "yaml", "default", "flag"),
    ("flag", None, None, "yaml", None, "flag"),
    (None, "env", None, None, "default", "env"),
]


@pytest.mark.parametrize(("flag", "env", "details", "yaml", "default", "winner"), PRECEDENCE)
def test_precedence(
    tmp_path: Path,
    flag: str | None,
    env: str | None,
    details: str | None,
    yaml: str | None,
    default: str | None,
    winner: str,
) -> None:
    argv = [*IN, *_write(tmp_path, yaml, details)]
    argv += ["--output", flag] if flag else []
    environ = {"PULSARFUNC_OUTPUT": env} if env else {}
    defaults = FunctionConfig(output=default) if default else None
    output = resolve(argv, environ, defaults=defaults).output
    assert output == (f"persistent://public/default/{winner}" if winner else "")


def test_file_locations_themselves_follow_precedence(tmp_path: Path) -> None:
    (tmp_path / "flag.yaml").write_text("inputs: [in]\nname: from-flag\n")
    (tmp_path / "env.yaml").write_text("inputs: [in]\nname: from-env\n")
    env = {"PULSARFUNC_FUNCTION_CONFIG": str(tmp_path / "env.yaml")}
    assert resolve([], env).name == "from-env"
    assert resolve(["--function-config", str(tmp_path / "flag.yaml")], env).name == "from-flag"


def test_nested_fields_and_booleans_follow_precedence(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(
        "inputs: [in]\nretainOrdering: true\nproducerConfig: {compressionType: ZLIB}\n"
    )
    base = ["--function-config", str(tmp_path / "f.yaml")]
    config = resolve(base, {})
    assert (config.producer.compression, config.retain_ordering) == (CompressionType.ZLIB, True)
    env = {"PULSARFUNC_COMPRESSION_TYPE": "SNAPPY", "PULSARFUNC_RETAIN_ORDERING": "false"}
    config = resolve(base, env)
    assert (config.producer.compression, config.retain_ordering) == (CompressionType.SNAPPY, False)
    config = resolve([*base, "--compression-type", "NONE", "--retain-ordering"], env)
    assert (config.producer.compression, config.retain_ordering) == (CompressionType.NONE, True)


def test_topics_and_patterns_are_replaced_separately(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text("inputs: [file-in]\ntopicsPattern: file-.*\n")
    argv = ["--function-config", str(tmp_path / "f.yaml")]
    assert resolve([*argv, "--inputs", "flag-in"], {}).input_topics == (
        "persistent://public/default/flag-in",
        "persistent://public/default/file-.*",
    )
    env = {"PULSARFUNC_TOPICS_PATTERN": "env-.*"}
    assert resolve(argv, env).input_topics == (
        "persistent://public/default/file-in",
        "persistent://public/default/env-.*",
    )


def test_defaults_sit_under_everything_the_user_set() -> None:
    defaults = FunctionConfig(name="from-handler", concurrency=4, inputs=topics("d"))
    config = resolve(["--concurrency", "2"], {}, defaults=defaults)
    assert (config.name, config.concurrency, config.input_topics) == (
        "from-handler",
        2,
        ("persistent://public/default/d",),
    )


def test_empty_env_vars_count_as_unset() -> None:
    config = resolve(IN, {"PULSARFUNC_CONCURRENCY": "", "PULSARFUNC_OUTPUT": " "})
    assert (config.concurrency, config.output) == (0, "")


def test_other_variables_are_ignored_and_typos_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    env = {"PULSARFUNC_INPUT": "x", "PULSARFUNC_CACHE": "/tmp", "HOME": "/root", **IN_ENV}
    with caplog.at_level(logging.WARNING):
        config = resolve([], env)
    assert config.input_topics == ("persistent://public/default/in",)
    assert "PULSARFUNC_INPUT; did you mean PULSARFUNC_INPUTS?" in caplog.text
    assert "PULSARFUNC_CACHE" not in caplog.text


# --- the parser ---------------------------------------------------------------------------------


def test_help_lists_every_flag_and_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        resolve(["--help"], {}, prog="docker run my-fn")
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    assert text.startswith("usage: docker run my-fn [flags]")
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text
    assert "--no-batching" in text
    assert "default pulsar://localhost:6650" in text


def test_callers_add_their_own_positional() -> None:
    parser = build_parser("pulsarfunc run PATH[:handler]")
    parser.add_argument("target", metavar="PATH[:handler]")
    args = parser.parse_args(["./fn.py:main", "--inputs", "in", "--concurrency", "2"])
    assert args.target == "./fn.py:main"
    assert resolve_args(args, {}).concurrency == 2
    with pytest.raises(ConfigError, match="unrecognized arguments: extra"):
        resolve(["extra", *IN], {})  # the runtime parser itself takes no positional


# (argv, env, fragments the error must contain)
ERRORS: list[tuple[list[str], dict[str, str], list[str]]] = [
    (["--inptus", "a"], {}, ["--inptus", "did you mean --inputs?"]),
    ([*IN, "--output"], {}, ["--output", "expected one argument", "takes a topic"]),
    ([*IN, "--debug=yes"], {}, ["--debug", "'yes'", "--no-debug turns it off"]),
    (["--input", "a"], {}, ["--input", "did you mean --inputs?"]),  # no abbreviations
    ([*IN, "--concurrency", "many"], {}, ["--concurrency", "'many'", "whole number"]),
    ([*IN, "--concurrency", "-1"], {}, ["--concurrency", "concurrency is -1", ">= 0"]),
    ([], {**IN_ENV, "PULSARFUNC_CONCURRENCY": "-2"}, ["PULSARFUNC_CONCURRENCY", ">= 0"]),
    ([], {**IN_ENV, "PULSARFUNC_INSTANCE_ID": "x"}, ["PULSARFUNC_INSTANCE_ID", "'x'"]),
    ([*IN, "--subscription-type", "ROUND_ROBIN"], {},
     ["--subscription-type", "'ROUND_ROBIN'", "SHARED|FAILOVER|KEY_SHARED|EXCLUSIVE"]),
    ([*IN, "--subscription-position", "middle"], {}, ["'middle'", "LATEST|EARLIEST"]),
    ([*IN, "--processing-guarantees", "ONCE"], {}, ["'ONCE'", "ATLEAST_ONCE|ATMOST_ONCE"]),
    ([*IN, "--compression-type", "brotli"], {}, ["'brotli'", "NONE|LZ4|ZLIB|ZSTD|SNAPPY"]),
    ([*IN, "--log-format", "xml"], {}, ["--log-format", "'xml'", "text or json"]),
    ([], {**IN_ENV, "PULSARFUNC_RETAIN_ORDERING": "maybe"},
     ["PULSARFUNC_RETAIN_ORDERING", "true or false"]),
    ([*IN, "--user-config", "[1, 2]"], {}, ["--user-config", "not an object"]),
    ([*IN, "--user-config", "{oops"], {}, ["--user-config", "not valid JSON"]),
    ([*IN, "--secrets", "@/nonexistent/secrets.json"], {}, ["--secrets", "cannot read"]),
    ([*IN, "--metrics-port", "70000"], {}, ["--metrics-port", "70000", "0-65535"]),
    ([*IN, "--max-message-retries", "-1"], {}, ["--max-message-retries", ">= 0"]),
    ([*IN, "--timeout-ms", "0"], {}, ["--timeout-ms", ">= 1"]),
    ([*IN, "--drain-timeout-ms", "-1"], {}, ["--drain-timeout-ms", "is -1", ">= 0"]),
    ([], {**IN_ENV, "PULSARFUNC_DRAIN_TIMEOUT_MS": "soon"},
     ["PULSARFUNC_DRAIN_TIMEOUT_MS", "'soon'", "whole number"]),
    ([*IN, "--redelivery-delay-ms", "-5"], {}, ["--redelivery-delay-ms", ">= 0"]),
    ([*IN, "--service-url", "localhost:6650"], {},
     ["--service-url", "'localhost:6650'", "pulsar://"]),
    ([*IN, "--log-level", "LOUD"], {}, ["--log-level", "'LOUD'", "INFO"]),
    ([*IN, "--tenant", "a b"], {}, ["--tenant", "'a b'"]),
    (["--inputs", "tenant/topic"], {}, ["--inputs", "'tenant/topic'", "tenant/namespace/topic"]),
    (["--topics-pattern", "in-("], {}, ["--topics-pattern", "'in-('", "regular expression"]),
    ([*IN, "--output", "kafka://x/y/z"], {}, ["--output", "unknown domain 'kafka'"]),
    ([*IN, "--dead-letter-topic", "dlq"], {}, ["--dead-letter-topic", "--max-message-retries"]),
    ([*IN, "--retain-ordering", "--retain-key-ordering"], {},
     ["--retain-key-ordering", "choose one"]),
    ([*IN, "--retain-key-ordering", "--processing-guarantees", "EFFECTIVELY_ONCE"], {},
     ["--retain-key-ordering", "EFFECTIVELY_ONCE"]),
    ([*IN, "--auth-token", "t", "--auth-plugin", "p"], {}, ["--auth-plugin", "only one"]),
    ([], {}, ["no input topic", "--inputs", "--topics-pattern"]),
    (["--function-config", "/nonexistent.yaml"], {}, ["--function-config", "/nonexistent.yaml"]),
    (["--function-details", "@/nonexistent.json"], {}, ["--function-details", "cannot read"]),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "env", "fragments"), ERRORS, ids=[str(e[0]) for e in ERRORS])
def test_bad_configuration_is_one_clear_error(
    argv: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as error:
        resolve(argv, env)
    assert isinstance(error.value, UserError)  # exit code 2, no traceback
    for fragment in fragments:
        assert fragment in str(error.value)
