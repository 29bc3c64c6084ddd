"""resolve.launch and the rules every variable shares: one set of boolean words, one reader.

Also the drain deadline (`--drain-timeout-ms`) from each of its sources.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from pulsarfunc.builder.manifest import main as manifest_main
from pulsarfunc.runtime import pulsar_instance, start
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.errors import ConfigError
from pulsarfunc.runtime.options import OPTIONS, parse_bool
from pulsarfunc.runtime.pulsar_instance import translate
from pulsarfunc.runtime.resolve import ENTRYPOINT, Launch, launch, resolve

IN = ["--inputs", "in"]
RUNTIME = Path(pulsar_instance.__file__).parent

# The one contract for every boolean variable and value: these words, any case, any padding.
TRUE = ["1", "true", "yes", "on", "TRUE", "Yes", " on "]
FALSE = ["0", "false", "no", "off", "False", "OFF", " no "]
NOT_BOOLEAN = ["maybe", "y", "t", "2", "enabled"]
WORDS = [(word, True) for word in TRUE] + [(word, False) for word in FALSE]
BOOL_OPTIONS = [option for option in OPTIONS if option.kind == "bool"]


def get(config: FunctionConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_there_are_boolean_options_to_check() -> None:
    assert {"--debug", "--batching", "--retain-ordering"} <= {o.flag for o in BOOL_OPTIONS}


@pytest.mark.parametrize(("word", "meaning"), WORDS)
def test_parse_bool_reads_every_word(word: str, meaning: bool) -> None:
    assert parse_bool(word) is meaning


@pytest.mark.parametrize("word", NOT_BOOLEAN)
def test_parse_bool_refuses_other_words(word: str) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(word)


@pytest.mark.parametrize("option", BOOL_OPTIONS, ids=lambda o: o.env)
@pytest.mark.parametrize(("word", "meaning"), WORDS)
def test_every_boolean_variable_takes_the_same_words(option: Any, word: str, meaning: bool) -> None:
    window = ["--window-length-count", "1"] if option.field.startswith("window.") else []
    assert get(resolve([*IN, *window], {option.env: word}), option.field) is meaning


@pytest.mark.parametrize("option", BOOL_OPTIONS, ids=lambda o: o.env)
@pytest.mark.parametrize("word", NOT_BOOLEAN)
def test_every_boolean_variable_refuses_the_same_words(option: Any, word: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(IN, {option.env: word})
    assert f"{option.env}: invalid value {word!r}: not a boolean" in str(caught.value)
    assert f"{option.env} takes true or false" in str(caught.value)


@pytest.mark.parametrize(("word", "meaning"), WORDS)
def test_pulsarfunc_debug_takes_the_same_words_in_launch(word: str, meaning: bool) -> None:
    assert launch([], {"PULSARFUNC_DEBUG": word}).debug is meaning
    assert resolve(IN, {"PULSARFUNC_DEBUG": word}).debug is meaning  # and agrees with resolve


@pytest.mark.parametrize("word", ["", "  ", *NOT_BOOLEAN])
def test_launch_reads_an_unusable_debug_as_false_and_leaves_the_error_to_resolve(
    word: str,
) -> None:
    assert launch([], {"PULSARFUNC_DEBUG": word}).debug is False


@pytest.mark.parametrize(("word", "meaning"), WORDS)
@pytest.mark.parametrize("name", ["tls_allow_insecure_connection", "hostname_verification_enabled"])
def test_pulsar_instance_switches_take_the_same_words(name: str, word: str, meaning: bool) -> None:
    flag = {"tls_allow_insecure_connection": "--tls-allow-insecure"}.get(
        name, "--tls-hostname-verification"
    )
    assert (flag in translate([f"--{name}", word])) is meaning


def test_pulsar_instance_switch_refuses_other_words() -> None:
    with pytest.raises(ConfigError, match="--hostname_verification_enabled 'maybe'"):
        translate(["--hostname_verification_enabled", "maybe"])


# --- launch -------------------------------------------------------------------------------------


def test_launch_defaults() -> None:
    assert launch([], {}) == Launch(debug=False, prog="pulsarfunc", entrypoint=ENTRYPOINT)
    assert ENTRYPOINT == "/opt/pulsarfunc/entrypoint.py" == pulsar_instance.ENTRYPOINT
    assert launch([], {}, default_prog="my-fn").prog == "my-fn"


def test_launch_reads_its_variables() -> None:
    env = {
        "PULSARFUNC_DEBUG": "yes",
        "PULSARFUNC_PROG": "docker run my-fn",
        "PULSARFUNC_ENTRYPOINT": "/app/main.py",
    }
    assert launch([], env, default_prog="my-fn") == Launch(
        debug=True, prog="docker run my-fn", entrypoint="/app/main.py"
    )


@pytest.mark.parametrize(
    ("argv", "env", "debug"),
    [
        (["--debug"], {}, True),
        (["--inputs", "in", "--debug"], {"PULSARFUNC_DEBUG": "off"}, True),  # flag over variable
        (["--no-debug"], {"PULSARFUNC_DEBUG": "on"}, False),
        (["--debug", "--no-debug"], {}, False),  # the last flag wins, as argparse has it
        (["--debug=yes"], {}, False),  # not a flag argparse takes: resolve says so
    ],
)
def test_launch_debug_flag_wins_over_the_variable(
    argv: list[str], env: dict[str, str], debug: bool
) -> None:
    assert launch(argv, env).debug is debug


def _handler(text: str) -> str:
    return text


def test_main_with_takes_prog_and_debug_from_the_env_it_is_given(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PULSARFUNC_PROG", raising=False)
    monkeypatch.delenv("PULSARFUNC_DEBUG", raising=False)
    with pytest.raises(SystemExit):
        start.main_with(_handler, ["--help"], {"PULSARFUNC_PROG": "docker run my-fn"})
    assert capsys.readouterr().out.startswith("usage: docker run my-fn [flags]")

    assert start.main_with(_handler, [], {"PULSARFUNC_DEBUG": "on"}) == 2  # no input topic
    assert "Traceback" in capsys.readouterr().err
    assert start.main_with(_handler, [], {"PULSARFUNC_DEBUG": "maybe"}) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "PULSARFUNC_DEBUG: invalid value 'maybe'" in err


def test_start_passes_the_process_environment_to_launch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["/app/my-fn.py", "--help"])
    monkeypatch.setenv("PULSARFUNC_PROG", "docker run my-fn")
    with pytest.raises(SystemExit):
        start.start(_handler)
    assert capsys.readouterr().out.startswith("usage: docker run my-fn [flags]")
    monkeypatch.delenv("PULSARFUNC_PROG")
    with pytest.raises(SystemExit):
        start.start(_handler)
    assert capsys.readouterr().out.startswith("usage: my-fn.py [flags]")


def test_pulsar_instance_execs_the_entrypoint_launch_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[str]] = []

    def execv(_path: str, args: list[str]) -> None:
        calls.append(args)
        raise SystemExit(0)

    monkeypatch.setattr("os.execv", execv)
    monkeypatch.setenv("PULSARFUNC_ENTRYPOINT", "/app/main.py")
    with pytest.raises(SystemExit):
        pulsar_instance.main(["--instance_id", "2"])
    assert calls[0][1:] == ["/app/main.py", "--instance-id", "2"]
    monkeypatch.delenv("PULSARFUNC_ENTRYPOINT")
    with pytest.raises(SystemExit):
        pulsar_instance.main([])
    assert calls[1][1:] == [ENTRYPOINT]


def _environment_lookups(path: Path) -> list[str]:
    """`os.getenv(...)`, `os.environ.get/[...]` and `X.get/[...]("PULSARFUNC_...")` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "getenv":
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
                continue
            if node.func.attr != "get":
                continue
            target, key = node.func.value, node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript):
            target, key = node.value, node.slice
        else:
            continue
        environ = isinstance(target, ast.Attribute) and target.attr == "environ"
        named = isinstance(key, ast.Constant) and str(key.value).startswith("PULSARFUNC_")
        if environ or named:
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_the_lookup_finder_finds_lookups(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import os\n"
        "a = os.environ.get('HOME')\n"
        "b = env.get('PULSARFUNC_PROG', '')\n"
        "c = os.environ['PULSARFUNC_X']\n"
        "d = os.getenv('X')\n"
        "e = config.get('other')\n"
        "main(os.environ)\n"
    )
    assert len(_environment_lookups(source)) == 4


@pytest.mark.parametrize(
    "path",
    sorted(p for p in RUNTIME.glob("*.py") if p.name != "resolve.py"),
    ids=lambda p: p.name,
)
def test_only_resolve_looks_up_environment_variables(path: Path) -> None:
    assert _environment_lookups(path) == []


# --- the drain deadline -------------------------------------------------------------------------


def test_drain_timeout_default_flag_and_variable() -> None:
    assert resolve(IN, {}).drain_timeout_ms == 30_000
    assert resolve([*IN, "--drain-timeout-ms", "5000"], {}).drain_timeout_ms == 5000
    env = {"PULSARFUNC_DRAIN_TIMEOUT_MS": "7000"}
    assert resolve(IN, env).drain_timeout_ms == 7000
    assert resolve([*IN, "--drain-timeout-ms", "0"], env).drain_timeout_ms == 0  # flag wins


def test_drain_timeout_from_function_config_yaml(tmp_path: Path) -> None:
    path = tmp_path / "function.yaml"
    path.write_text("inputs: [in]\ndrainTimeoutMs: 12000\n")
    assert resolve(["--function-config", str(path)], {}).drain_timeout_ms == 12000
    env = {"PULSARFUNC_DRAIN_TIMEOUT_MS": "1000"}  # a variable outranks the file
    assert resolve(["--function-config", str(path)], env).drain_timeout_ms == 1000


def test_input_properties_in_every_form(tmp_path: Path) -> None:
    """On by default (Pulsar's output contract); off by flag, variable or the YAML key; a flag
    outranks a variable, a variable the file; a bad YAML value names the key."""
    assert resolve(IN, {}).input_properties is True
    assert resolve([*IN, "--no-input-properties"], {}).input_properties is False
    off = {"PULSARFUNC_INPUT_PROPERTIES": "false"}
    assert resolve(IN, off).input_properties is False
    assert resolve([*IN, "--input-properties"], off).input_properties is True
    path = tmp_path / "function.yaml"
    path.write_text("inputs: [in]\ninputProperties: false\n")
    assert resolve(["--function-config", str(path)], {}).input_properties is False
    on = {"PULSARFUNC_INPUT_PROPERTIES": "true"}
    assert resolve(["--function-config", str(path)], on).input_properties is True
    path.write_text("inputs: [in]\ninputProperties: sometimes\n")
    with pytest.raises(ConfigError, match=r"(?s)inputProperties.*true or false"):
        resolve(["--function-config", str(path)], {})


@pytest.mark.parametrize(
    ("argv", "env", "text", "fragments"),
    [
        (["--drain-timeout-ms", "-1"], {}, "", ["--drain-timeout-ms: drain_timeout_ms is -1"]),
        (["--drain-timeout-ms", "1.5"], {}, "", ["--drain-timeout-ms", "'1.5'", "whole number"]),
        ([], {"PULSARFUNC_DRAIN_TIMEOUT_MS": "-3"}, "", ["PULSARFUNC_DRAIN_TIMEOUT_MS", ">= 0"]),
        ([], {}, "drainTimeoutMs: -1\n", ["key 'drainTimeoutMs' has value -1", ">= 0"]),
        ([], {}, "drainTimeoutMs: soon\n", ["key 'drainTimeoutMs'", "'soon'", "whole number"]),
    ],
)
def test_a_bad_drain_timeout_is_one_clear_error(
    tmp_path: Path, argv: list[str], env: dict[str, str], text: str, fragments: list[str]
) -> None:
    if text:
        (tmp_path / "f.yaml").write_text("inputs: [in]\n" + text)
        argv = ["--function-config", str(tmp_path / "f.yaml")]
    with pytest.raises(ConfigError) as caught:
        resolve([*IN, *argv], env)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert caught.value.hint


def test_drain_timeout_reaches_the_manifest_and_the_grace_period() -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["registry.example/fn:1", *IN, "--name", "fn", "--drain-timeout-ms", "90000"]
    assert manifest_main([*argv, "--kind", "deployment"], out=out, err=err) == 0, err.getvalue()
    (deployment,) = [doc for doc in yaml.safe_load_all(out.getvalue()) if doc]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 120  # the drain, then 30 s to close
    args = pod["containers"][0]["args"]
    assert args[args.index("--drain-timeout-ms") + 1] == "90000"


# --- effectively-once needs positions -----------------------------------------------------------


def test_effectively_once_on_a_non_persistent_input_is_refused() -> None:
    argv = [
        "--inputs", "non-persistent://public/default/in", "--processing-guarantees",
        "EFFECTIVELY_ONCE",
    ]  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        resolve(argv, {})
    text = str(caught.value)
    assert "EFFECTIVELY_ONCE with the non-persistent input" in text
    assert "use ATLEAST_ONCE" in text
    assert caught.value.exit_code == 2
    assert resolve([*argv[:2], "--processing-guarantees", "ATLEAST_ONCE"], {}).inputs
