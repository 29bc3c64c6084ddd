"""Host validation with staged dependencies: early signature errors, import failures deferred."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pulsarfunc.builder.plan import BuildOptions, make_plan
from pulsarfunc.builder.validate import host_runs_target, validate_on_host, validate_with_deps
from pulsarfunc.runtime.errors import HandlerError


def _function(tmp_path: Path, handler_source: str, dep_source: str) -> tuple[Path, Path]:
    function, deps = tmp_path / "fn", tmp_path / "deps"
    function.mkdir()
    deps.mkdir()
    (function / "handler.py").write_text("import stagedonly_dep\n\n" + handler_source)
    (function / "requirements.txt").write_text("stagedonly-dep==1\n")
    (deps / "stagedonly_dep.py").write_text(dep_source)
    return function, deps


def test_deferred_on_host_then_checked_with_the_staged_wheels(tmp_path: Path) -> None:
    function, deps = _function(tmp_path, "def handler(x: str) -> str:\n    return x\n", "")
    plan = make_plan(BuildOptions(path=function, tag="t"))
    first = validate_on_host(plan)
    assert first.deferred
    assert "stagedonly_dep" in first.description
    check = validate_with_deps(plan, deps, dict(os.environ))
    assert not check.deferred
    assert check.attr == "handler"
    assert check.file == function / "handler.py"
    assert plan.image_ref(check.attr, check.file) == "/app/handler.py:handler"


def test_bad_signature_fails_before_any_image(tmp_path: Path) -> None:
    function, deps = _function(tmp_path, "def handler(a, b, c):\n    return a\n", "")
    plan = make_plan(BuildOptions(path=function, tag="t"))
    with pytest.raises(HandlerError, match="3 required positional parameters"):
        validate_with_deps(plan, deps, dict(os.environ))


def test_import_failing_on_this_host_is_left_to_the_image(tmp_path: Path) -> None:
    function, deps = _function(
        tmp_path,
        "def handler(x):\n    return x\n",
        "raise ImportError('failed to find libexample')\n",
    )
    plan = make_plan(BuildOptions(path=function, tag="t"))
    check = validate_with_deps(plan, deps, dict(os.environ))
    assert check.deferred
    assert "in the image" in check.description


def test_host_runs_target_compares_python_and_cpu() -> None:
    assert not host_runs_target("2.7", "manylinux_2_28_x86_64")
    assert not host_runs_target("3.11", "manylinux_2_28_sparc64")
