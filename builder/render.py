"""Render the Dockerfile, entrypoint and build-time check of a function image (pure).

Templates live in `pulsarfunc/templates/` and are rendered with StrictUndefined, so a value
the template needs but the builder forgot is an error at render time, not a broken image.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

import pulsarfunc.templates
from pulsarfunc._version import __version__

__all__ = [
    "FunctionFiles",
    "FunctionValues",
    "function_name",
    "render_function",
    "render_template",
]


def function_name(title: str) -> str:
    """A Pulsar function name from the image title: letters, digits, `-`, `_` and `.` only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", title).strip("-.") or "function"


def dockerquote(value: object) -> str:
    """Quote a value for a Dockerfile instruction (LABEL): no expansion, no line breaks."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"a Dockerfile value cannot contain a line break: {text!r}")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


@cache
def _environment() -> jinja2.Environment:
    directory = Path(pulsarfunc.templates.__file__).parent
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["dockerquote"] = dockerquote
    env.filters["pyrepr"] = repr
    return env


def render_template(name: str, values: Mapping[str, Any]) -> str:
    """Render one template of `pulsarfunc/templates/` with `values` (StrictUndefined)."""
    return _environment().get_template(name).render(**values)


@dataclass(frozen=True)
class FunctionValues:
    """What the function image templates need, and nothing else."""

    title: str
    base_ref: str
    deps_key: str
    handler_ref: str
    labels: tuple[tuple[str, str], ...]
    source_date_epoch: int = 0
    function_name: str = "function"
    runtime_version: str = __version__


@dataclass(frozen=True)
class FunctionFiles:
    """The rendered files of one function image."""

    dockerfile: str
    entrypoint: str
    check: str


def render_function(values: FunctionValues) -> FunctionFiles:
    """Render the Dockerfile, entrypoint and check module for one function image."""
    context = values.__dict__
    return FunctionFiles(
        dockerfile=render_template("Dockerfile.j2", context),
        entrypoint=render_template("entrypoint.py.j2", context),
        check=render_template("check.py.j2", context),
    )
