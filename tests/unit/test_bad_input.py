"""The bad-input corpus through the command line: each case one short error, exit code 2.

Bad handler modules, flags, config files and topic names, as a user would type them. Every
case must fail before any connection (the broker is replaced by one that fails the test), say
what is wrong and what to do (`hint:`), and show no traceback unless `--debug` is given.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest

from pulsarfunc import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FUNCTIONS = FIXTURES / "functions"
BAD = FIXTURES / "bad_input"
PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))
MAX_LINES = 20  # the longest message: the rules of PATH[:NAME] plus the accepted forms

# Written at test time: linters and type checkers of this repository never see them.
SOURCES = {
    "syntax_error.py": "def handler(text:\n    return text\n",
    "indentation.py": "def handler(text):\nreturn text\n",
    "plain_class.py": "class Upper:\n    def process(self):\n        return 'x'\n",
    "lambda_star.py": "handler = lambda *args: args\n",
    "ok.py": "def handler(text: str) -> str:\n    return text\n",
}


@pytest.fixture
def fns(tmp_path: Path) -> Path:
    for name, text in SOURCES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.yaml").write_bytes(b"\x00\xff\xfe inputs: [a]")
    return tmp_path


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case must fail before connecting; `run` must return rather than exit the process."""

    def connect(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise AssertionError("bad input reached the broker connection")

    def leave(code: int) -> NoReturn:
        raise SystemExit(code)

    monkeypatch.setattr("pulsarfunc.runtime.broker.PulsarBroker", connect)
    monkeypatch.setattr("pulsarfunc.runtime.start.hard_exit", leave)
    monkeypatch.delenv("PULSARFUNC_DEBUG", raising=False)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`pulsarfunc ARGV` in-process: (exit code, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def assert_one_clear_error(code: int, err: str, fragments: list[str]) -> None:
    assert code == 2, err
    assert err.startswith("pulsarfunc: error: "), err
    assert "Traceback" not in err, err
    assert "hint:" in err, err  # every error says what to do
    assert len(err.strip().splitlines()) <= MAX_LINES, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


TOPIC = ["--inputs", "orders"]

# (id, handler reference relative to FUNCTIONS or the temporary dir, what the error names)
HANDLERS = [
    ("syntax-error", "tmp:syntax_error.py", ["syntax_error.py:1", "syntax error", "py_compile"]),
    ("indentation-error", "tmp:indentation.py", ["indentation.py:2", "indented block"]),
    (
        "import-error",
        "import_error/handler.py",
        ["No module named 'pulsarfunc_fixture_missing_dependency'", "requirements.txt"],
    ),
    ("raises-at-import", "raises_at_import/handler.py", ["importing it raised", "move work"]),
    ("missing-handler", "missing_handler/handler.py", ["'handler'", "Found: ", "'helper'"]),
    ("missing-attribute", "missing_handler/handler.py:nothing", ["'nothing'", "helper"]),
    ("no-such-file", "tmp:nowhere.py", ["nowhere.py", "no such file"]),
    (
        "three-parameters",
        "wrong_signatures/handler.py:three",
        ["def three(a: bytes, b: bytes, c: bytes)", "at most 2"],
    ),
    ("star-args", "wrong_signatures/handler.py:star", ["*args is not accepted", "name the"]),
    ("kwargs", "wrong_signatures/handler.py:kwargs", ["**options", "def kwargs"]),
    ("keyword-only", "wrong_signatures/handler.py:kwonly", ["mode", "default"]),
    ("context-last", "wrong_signatures/handler.py:pulsar_order", ["swap them"]),
    ("unsupported-type", "wrong_signatures/handler.py:unsupported_type", ["set[str]"]),
    ("lambda-star", "tmp:lambda_star.py", ["*args is not accepted"]),
    (
        "process-without-context",
        "bad_process/handler.py:MissingContext",
        ["MissingContext.process", "input first, then context"],
    ),
    (
        "class-without-process",
        "bad_process/handler.py:NoProcess",
        ["does not define process", "def process(self, input, context)"],
    ),
    ("class-needs-arguments", "bad_process/handler.py:NeedsArguments", ["no arguments"]),
    ("plain-class-bad-process", "tmp:plain_class.py:Upper", ["Upper.process", "process("]),
    ("not-callable", "not_callable/handler.py", ["42 (of type int) is not callable"]),
]


def _ref(ref: str, tmp: Path) -> str:
    return str(tmp / ref[4:]) if ref.startswith("tmp:") else str(FUNCTIONS / ref)


@pytest.mark.parametrize(
    ("ref", "fragments"), [case[1:] for case in HANDLERS], ids=[case[0] for case in HANDLERS]
)
def test_bad_handler_module(
    ref: str, fragments: list[str], fns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["run", _ref(ref, fns), *TOPIC], capsys)
    assert_one_clear_error(code, err, fragments)


@pytest.mark.parametrize(
    ("ref", "fragments"),
    [case[1:] for case in HANDLERS if case[0] != "missing-attribute"][:8],
    ids=[case[0] for case in HANDLERS if case[0] != "missing-attribute"][:8],
)
def test_check_reports_the_same_as_run(
    ref: str, fragments: list[str], fns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["check", _ref(ref, fns)], capsys)
    assert_one_clear_error(code, err, fragments)


FLAGS = [
    ("unknown-flag", ["--inptus", "orders"], ["--inptus", "did you mean --inputs?"]),
    ("unknown-flag-far", ["--frobnicate", *TOPIC], ["unrecognized arguments: --frobnicate"]),
    ("missing-value", ["--inputs"], ["--inputs: expected one argument", "takes a topic"]),
    ("missing-inputs", [], ["no input topic configured", "--inputs TOPIC"]),
    ("not-a-number", [*TOPIC, "--concurrency", "many"], ["'many'", "whole number >= 0"]),
    ("out-of-range", [*TOPIC, "--concurrency", "-3"], ["concurrency is -3", ">= 0"]),
    ("negative-retries", [*TOPIC, "--max-message-retries", "-1"], ["max_message_retries is -1"]),
    ("zero-timeout", [*TOPIC, "--timeout-ms", "0"], ["timeout_ms is 0", ">= 1"]),
    ("bad-port", [*TOPIC, "--metrics-port", "70000"], ["metrics_port is 70000", "0-65535"]),
    (
        "bad-enum",
        [*TOPIC, "--subscription-type", "WEIRD"],
        ["'WEIRD'", "SHARED|FAILOVER|KEY_SHARED|EXCLUSIVE"],
    ),
    ("bool-with-value", [*TOPIC, "--retain-ordering=yes"], ["--no-retain-ordering"]),
    ("bad-json", [*TOPIC, "--user-config", "{bad"], ["not valid JSON", "a JSON object"]),
    ("json-not-object", [*TOPIC, "--secrets", "[1]"], ["not an object", "--secrets takes"]),
    ("bad-service-url", [*TOPIC, "--service-url", "http//x"], ["'http//x'", "pulsar://host"]),
    ("bad-log-level", [*TOPIC, "--log-level", "LOUD"], ["'LOUD'", "DEBUG, INFO"]),
    (
        "dead-letter-without-retries",
        [*TOPIC, "--dead-letter-topic", "dlq"],
        ["needs a retry limit", "--max-message-retries"],
    ),
    (
        "token-and-plugin",
        [*TOPIC, "--auth-token", "t", "--auth-plugin", "x.Auth"],
        ["both a token and an auth plugin", "only one"],
    ),
    ("missing-user-config-file", [*TOPIC, "--user-config", "@/nonexistent.json"], ["cannot read"]),
]


@pytest.mark.parametrize(
    ("flags", "fragments"), [case[1:] for case in FLAGS], ids=[case[0] for case in FLAGS]
)
def test_bad_flags(
    flags: list[str], fragments: list[str], fns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["run", str(fns / "ok.py"), *flags], capsys)
    assert_one_clear_error(code, err, fragments)


def test_bad_environment_variable_names_the_variable(
    fns: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PULSARFUNC_CONCURRENCY", "abc")
    code, err = run_cli(["run", str(fns / "ok.py"), *TOPIC], capsys)
    assert_one_clear_error(code, err, ["PULSARFUNC_CONCURRENCY", "'abc'", "--concurrency takes"])


def test_a_flag_where_the_handler_should_be(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["run", "--inputs", "orders"], capsys)
    assert_one_clear_error(code, err, ["expected PATH[:handler] first", "pulsarfunc run ./"])


TOPICS = [
    ("space", ["--inputs", "my orders"], ["'my orders'", "no spaces", "e.g. my-topic"]),
    ("unknown-domain", ["--inputs", "kafka://a/b/c"], ["unknown domain 'kafka'"]),
    ("two-parts", ["--inputs", "a/b"], ["'a/b'", "tenant/namespace/topic"]),
    ("bad-tenant", ["--inputs", "te nant/ns/t"], ["tenant 'te nant'"]),
    ("empty-list", ["--inputs", ","], ["no topic name"]),
    ("bad-output", [*TOPIC, "--output", "out put"], ["--output", "'out put'"]),
    (
        "bad-dead-letter",
        [*TOPIC, "--max-message-retries", "1", "--dead-letter-topic", "d l q"],
        ["--dead-letter-topic", "'d l q'"],
    ),
    ("bad-log-topic", [*TOPIC, "--log-topic", "x://y"], ["--log-topic", "unknown domain"]),
    ("bad-pattern", ["--topics-pattern", "orders-(["], ["not a valid regular expression", ".*"]),
]


@pytest.mark.parametrize(
    ("flags", "fragments"), [case[1:] for case in TOPICS], ids=[case[0] for case in TOPICS]
)
def test_invalid_topic_names(
    flags: list[str], fragments: list[str], fns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["run", str(fns / "ok.py"), *flags], capsys)
    assert_one_clear_error(code, err, fragments)


CONFIG_FILES = [
    ("unclosed.yaml", ["not valid YAML", "line 1"]),
    ("list.yaml", ["expected a mapping of keys, found a list", "pulsar-admin"]),
    ("bad_guarantee.yaml", ["'processingGuarantees'", "'SOMETIMES'", "ATLEAST_ONCE"]),
    ("bad_number.yaml", ["'maxMessageRetries'", "'many'", "whole number"]),
    ("bad_topic.yaml", ["'my orders'", "no spaces"]),
    ("bad_dead_letter.yaml", ["dead_letter_topic", "'dead letters'"]),
    ("bad_user_config.yaml", ["'userConfig'", "mapping"]),
    ("tmp:binary.yaml", ["cannot read function config", "utf-8"]),
    ("tmp:missing.yaml", ["cannot read function config", "No such file"]),
]


@pytest.mark.parametrize(("name", "fragments"), CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_malformed_function_config_yaml(
    name: str, fragments: list[str], fns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fns / name[4:] if name.startswith("tmp:") else BAD / name
    code, err = run_cli(["run", str(fns / "ok.py"), "--function-config", str(path)], capsys)
    assert_one_clear_error(code, err, [*fragments, "hint:"])


DETAILS = [
    ("@truncated.json", ["not valid JSON", "FunctionDetails JSON"]),
    ("@list.json", ["expected a JSON object, found a list"]),
    ("@bad_topic.json", ["'persistent://public/default/a b'", "no spaces"]),
    ("@bad_retries.json", ["maxMessageRetries", "'x'"]),
    ("@bad_enum.json", ["ProcessingGuarantees", "value 9", "Function.proto"]),
    ('{"tenant": ', ["not valid JSON"]),
    ("@missing.json", ["cannot read", "missing.json"]),
]


@pytest.mark.parametrize(("text", "fragments"), DETAILS, ids=[d[0] for d in DETAILS])
def test_malformed_function_details_json(
    text: str, fragments: list[str], fns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    value = f"@{BAD / text[1:]}" if text.startswith("@") else text
    code, err = run_cli(["run", str(fns / "ok.py"), "--function-details", value], capsys)
    assert_one_clear_error(code, err, fragments)


def test_debug_shows_the_traceback_and_keeps_exit_code_2(
    fns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["run", str(fns / "ok.py"), "--inputs", "a b", "--debug"], capsys)
    assert code == 2
    assert "Traceback" in err
    assert "ConfigError" in err
    assert err.strip().endswith("or persistent://public/default/my-topic")  # message last


def test_debug_also_shows_the_traceback_of_a_bad_handler(
    fns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["run", str(fns / "syntax_error.py"), *TOPIC, "--debug"], capsys)
    assert code == 2
    assert "Traceback" in err


# The real console script in a process of its own: exit status and stderr as a shell sees them.
PROCESS_CASES = [
    ("tmp:syntax_error.py", [*TOPIC], "syntax error"),
    ("ok.py", ["--inptus", "orders"], "did you mean --inputs?"),
    ("ok.py", ["--function-config", str(BAD / "list.yaml")], "found a list"),
    ("ok.py", ["--function-details", json.dumps({"source": {"inputSpecs": {"a b": {}}}})], "a b"),
]


@pytest.mark.parametrize(("ref", "flags", "fragment"), PROCESS_CASES)
def test_the_console_script_exits_2_without_a_traceback(
    ref: str, flags: list[str], fragment: str, fns: Path
) -> None:
    # The service URL points nowhere: were the input accepted, the run would fail with 1.
    result = subprocess.run(
        [PULSARFUNC, "run", _ref(ref, fns) if ref.startswith("tmp:") else str(fns / ref), *flags,
         "--service-url", "pulsar://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr
    assert result.stdout == ""
