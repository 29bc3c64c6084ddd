"""`pulsarfunc build` / `init` exit codes and messages; user errors stop before any Docker work."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pulsarfunc.builder.commands import build_main, init_main
from pulsarfunc.runtime.discovery import load
from pulsarfunc.runtime.handler import inspect_handler

# Any Docker call fails against this address (nothing listens on loopback port 1) with exit
# code 1: exit code 2 proves the error was found before the builder talked to the engine.
NO_ENGINE = {"DOCKER_HOST": "tcp://127.0.0.1:1"}


def _build(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = build_main(argv, env={**NO_ENGINE, **(env or {})}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def handler(a, b, c):\n    return a\n", "handler"),
        ("def handler(x:\n", "syntax error"),
        ("def other(x):\n    return x\n", "Found: 'other'"),
    ],
)
def test_bad_handler_exits_2_before_docker(tmp_path: Path, source: str, expected: str) -> None:
    (tmp_path / "handler.py").write_text(source)
    code, out, err = _build([str(tmp_path), "-t", "bad:dev"])
    assert code == 2
    assert expected in err
    assert "Docker engine" not in err
    assert out == ""


def test_missing_import_without_requirements_is_a_user_error(tmp_path: Path) -> None:
    source = "import no_such_dep_xyz\n\ndef handler(x):\n    return x\n"
    (tmp_path / "handler.py").write_text(source)
    code, _, err = _build([str(tmp_path), "-t", "bad:dev"])
    assert code == 2
    assert "no_such_dep_xyz" in err
    assert "requirements.txt" in err


def test_engine_unreachable_after_a_good_plan_is_exit_1(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("def handler(x: str) -> str:\n    return x\n")
    code, _, err = _build([str(tmp_path), "-t", "good:dev"])
    assert code == 1
    assert "Docker engine" in err


def test_json_error_summary(tmp_path: Path) -> None:
    code, out, _ = _build([str(tmp_path / "missing"), "-t", "x", "--json"])
    assert code == 2
    payload = json.loads(out)
    assert payload["exit_code"] == 2
    assert "does not exist" in payload["error"]


def test_bad_source_date_epoch_and_missing_tag(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("def handler(x):\n    return x\n")
    assert _build([str(tmp_path), "-t", "x"], {"SOURCE_DATE_EPOCH": "yesterday"})[0] == 2
    assert _build([str(tmp_path)])[0] == 2  # argparse: -t is required


def test_init_scaffolds_a_function_that_passes_its_own_test(tmp_path: Path) -> None:
    target = tmp_path / "My Func"
    out = io.StringIO()
    assert init_main([str(target)], out=out, err=io.StringIO()) == 0
    names = sorted(p.name for p in target.iterdir())
    assert names == [
        ".dockerignore",
        "README.md",
        "handler.py",
        "requirements.txt",
        "test_handler.py",
    ]
    assert "my-func:dev" in (target / "README.md").read_text()
    loaded = load(str(target))
    assert inspect_handler(loaded.obj, where=loaded.where).describe().startswith("sync function")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(target)],
        cwd=target,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    err = io.StringIO()
    assert init_main([str(tmp_path)], out=io.StringIO(), err=err) == 2
    assert "--force" in err.getvalue()
    assert (tmp_path / "keep.txt").read_text() == "mine"
