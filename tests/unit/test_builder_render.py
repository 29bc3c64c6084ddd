"""Rendered templates match the golden files; a missing value is an error, not a blank."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2
import pytest

from pulsarfunc.builder.render import (
    FunctionValues,
    dockerquote,
    function_name,
    render_function,
    render_template,
)
from pulsarfunc.runtime.options import parse_bool

GOLDEN = Path(__file__).parent / "golden"

VALUES = FunctionValues(
    title="exclaim",
    base_ref="pulsarfunc/runtime:0.0.0-py3.11-0123456789ab",
    deps_key="f" * 64,
    handler_ref="/app/handler.py:handler",
    labels=(
        ("io.pulsarfunc.handler", "/app/handler.py:handler"),
        ("org.opencontainers.image.title", 'ex"claim $HOME'),
    ),
    function_name="exclaim",
    runtime_version="0.0.0",
)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if parse_bool(os.environ.get("PULSARFUNC_UPDATE_GOLDEN") or "false"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; PULSARFUNC_UPDATE_GOLDEN=1 rewrites it"


def test_function_files_match_golden() -> None:
    files = render_function(VALUES)
    _check_golden("Dockerfile", files.dockerfile)
    _check_golden("entrypoint.py", files.entrypoint)
    _check_golden("check.py", files.check)


def test_without_dependencies_there_is_no_dependency_layer() -> None:
    values = FunctionValues(**{**VALUES.__dict__, "deps_key": ""})
    dockerfile = render_function(values).dockerfile
    assert "COPY deps/" not in dockerfile
    assert "COPY code/ /" in dockerfile
    _check_golden("Dockerfile.nodeps", dockerfile)


def test_generated_python_compiles() -> None:
    files = render_function(VALUES)
    compile(files.entrypoint, "entrypoint.py", "exec")
    compile(files.check, "check.py", "exec")


def test_missing_value_fails_at_render_time() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render_template("Dockerfile.j2", {"title": "x"})


def test_function_name_is_a_valid_pulsar_name() -> None:
    assert function_name("My Func/v2!") == "My-Func-v2"
    assert function_name("...") == "function"


def test_dockerquote_escapes_what_docker_would_expand() -> None:
    assert dockerquote('a"b\\c $X') == '"a\\"b\\\\c \\$X"'
    with pytest.raises(ValueError, match="line break"):
        dockerquote("a\nb")
