"""What a new user meets first: usage errors of every command, a package directory, root or sudo.

Each command runs as a real process (`python -m pulsarfunc`), so a traceback would show.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulsarfunc import cli

REPO = Path(__file__).resolve().parents[2]
EXCLAIM = REPO / "examples" / "exclaim"


def pulsarfunc(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pulsarfunc", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


USAGE_ERRORS = [
    (["run"], "`pulsarfunc run` needs PATH[:handler]"),
    (["run", "--inputs", "in"], "expected PATH[:handler] first, found flag '--inputs'"),
    (["run", "nowhere"], "nowhere: no such file, directory or module"),
    (["run", str(EXCLAIM), "--inputz", "in"], "unrecognized arguments: --inputz"),
    (["run", str(EXCLAIM), "--processing-guarantees", "ALWAYS"], "ALWAYS"),
    (["check"], "`pulsarfunc check` needs PATH[:handler]"),
    (["check", "a", "b"], "takes one PATH[:handler], got 2 arguments"),
    (["check", "nowhere"], "nowhere: no such file, directory or module"),
    (["build"], "the following arguments are required: PATH, -t/--tag"),
    (["build", str(EXCLAIM)], "the following arguments are required: -t/--tag"),
    (["build", "nowhere", "-t", "x:1"], "nowhere does not exist"),
    (["build", str(EXCLAIM), "-t", "x:1", "--pyhton-version", "3.11"], "unrecognized arguments"),
    (["init"], "the following arguments are required: NAME"),
    (["init", "a", "b"], "unrecognized arguments: b"),
    (["init", "/proc/pulsarfunc-cannot-be-here"], "cannot write the scaffold into"),
    (["manifest"], "the following arguments are required: IMAGE"),
    (["manifest", "img:1", "--inputs", "in", "--cpu", "lots"], "is not a Kubernetes quantity"),
    (["manifest", "img:1", "--inputs", "in", "--autoscale", "3:1"], "MIN 3 is greater than MAX 1"),
    (["frobnicate"], "unknown command 'frobnicate'"),
]


@pytest.mark.parametrize(("argv", "says"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_a_missing_or_wrong_argument_is_one_error_and_a_hint(
    argv: list[str], says: str, tmp_path: Path
) -> None:
    done = pulsarfunc(*argv, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert 1 <= len(lines) <= 2, done.stderr
    assert lines[0].startswith("pulsarfunc: error: ")
    assert says in lines[0]
    assert done.stdout == ""


def test_every_command_is_covered_by_the_usage_errors() -> None:
    commands = {argv[0] for argv, _ in USAGE_ERRORS}
    assert {"run", "check", "build", "init", "manifest"} <= commands


def test_check_on_a_directory_holding_one_package_names_it(tmp_path: Path) -> None:
    package = tmp_path / "project" / "wordcount"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("def handler(text: str) -> str:\n    return text\n")
    (tmp_path / "project" / "README.md").write_text("a project\n")
    done = pulsarfunc("check", "project", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "pulsarfunc: error: project: holds no module, only the package wordcount",
        "  hint: give the package's directory as PATH: project/wordcount",
    ]
    done = pulsarfunc("check", "project/wordcount", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: project/wordcount/__init__.py:handler")


def test_check_names_every_package_and_the_src_layout(tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        (tmp_path / "two" / name).mkdir(parents=True)
        (tmp_path / "two" / name / "__init__.py").write_text("")
    (tmp_path / "src-layout" / "src" / "gamma").mkdir(parents=True)
    (tmp_path / "src-layout" / "src" / "gamma" / "__init__.py").write_text("")
    two = pulsarfunc("check", "two", cwd=tmp_path).stderr
    assert "only the packages alpha, beta" in two
    assert "two/alpha or two/beta" in two
    src = pulsarfunc("check", "src-layout", cwd=tmp_path).stderr
    assert "give the package's directory as PATH: src-layout/src/gamma" in src


def test_check_help_shows_the_discovery_rule_and_the_accepted_forms(tmp_path: Path) -> None:
    done = pulsarfunc("check", "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "For a directory, the module is the first of handler.py" in done.stdout
    assert "PIP-32 order" in done.stdout


def test_the_builder_modules_are_the_builder_extra() -> None:
    """cli.BUILDER_MODULES must follow pyproject's `builder` extra (the one-line error names it)."""
    import importlib.metadata

    extra = [
        req.split(";")[0]
        for req in importlib.metadata.requires("pulsarfunc") or []
        if 'extra == "builder"' in req and "tomli" not in req
    ]
    names = {r.split("<")[0].split(">")[0].split("=")[0].strip().lower() for r in extra}
    assert names == {d.lower() for d in cli.BUILDER_MODULES.values()} - {"tomli"}


def test_a_missing_builder_module_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "docker" else real(name, *a),
    )
    for command in ("build", "init"):
        assert cli.main([command, "x"]) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [
            f"pulsarfunc: error: `pulsarfunc {command}` needs the builder extra "
            "(missing docker): pip install 'pulsarfunc[builder]'"
        ]


# --- the scripts: as root without sudo, and as a user with sudo ------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged user can read and write (pytest's tmp_path is root's)."""
    path = Path(tempfile.mkdtemp(prefix="pulsarfunc-as-root-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def _probe(directory: Path) -> Path:
    """A script that uses scripts/lib/as-root.sh as scripts/demo does, then says who it is."""
    shutil.copy(REPO / "scripts" / "lib" / "as-root.sh", directory / "as-root.sh")
    probe = directory / "probe"
    probe.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        'source "$(dirname "${BASH_SOURCE[0]}")/as-root.sh"\n'
        'as_root "${BASH_SOURCE[0]}" "$@"\n'
        'echo "ran as uid $(id -u) with $*"\n'
    )
    for path in (probe, directory / "as-root.sh"):
        path.chmod(0o755)
    return probe


def _fake_sudo(directory: Path) -> Path:
    """A `sudo` that records how it was called (it cannot make anyone root)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    sudo = bin_dir / "sudo"
    sudo.write_text(f'#!/bin/sh\necho "$(id -u) $*" > {directory}/sudo-call\n')
    sudo.chmod(sudo.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def _path_without_sudo(directory: Path) -> str:
    """A PATH with what the scripts' first lines use, and no sudo."""
    bin_dir = directory / "bin-without-sudo"
    bin_dir.mkdir()
    for tool in ("bash", "id", "dirname", "basename", "env"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="needs root and setpriv to run the scripts as another user",
)


def _run(probe: Path, path: str, *, as_nobody: bool) -> subprocess.CompletedProcess[str]:
    user = (
        [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        if as_nobody
        else []
    )
    return subprocess.run(
        [*user, str(probe), "a", "b"],
        env={"PATH": path, "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@needs_root
def test_as_root_without_sudo_the_scripts_just_run(shared_dir: Path) -> None:
    done = _run(_probe(shared_dir), _path_without_sudo(shared_dir), as_nobody=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran as uid 0 with a b"
    assert done.stderr == ""


@needs_root
def test_a_user_with_sudo_has_the_script_re_run_under_sudo(shared_dir: Path) -> None:
    probe = _probe(shared_dir)
    path = f"{_fake_sudo(shared_dir)}:{_path_without_sudo(shared_dir)}"
    done = _run(probe, path, as_nobody=True)
    assert done.returncode == 0, done.stderr
    # the user's own run went no further: it became `sudo bash SCRIPT ARGS...`
    assert (shared_dir / "sudo-call").read_text().split() == ["65534", "bash", str(probe), "a", "b"]
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "probe: needs root (apt-get, dockerd): re-running with sudo"
    ]


@needs_root
def test_a_user_without_sudo_gets_one_line_and_exit_2(shared_dir: Path) -> None:
    done = _run(_probe(shared_dir), _path_without_sudo(shared_dir), as_nobody=True)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "probe: needs root (apt-get, dockerd) and sudo is not installed: run it as root (su -)"
    ]


def test_the_readme_and_the_scripts_need_no_sudo_command() -> None:
    """The quick start runs the scripts bare; each script makes itself root first."""
    readme = (REPO / "README.md").read_text()
    assert "sudo scripts/" not in readme
    assert "    scripts/demo" in readme
    for name in ("demo", "test", "bootstrap.sh"):
        text = (REPO / "scripts" / name).read_text()
        head = text.split("set -euo pipefail\n", 1)[1].splitlines()
        assert head[1:3] == [
            'source "$(dirname "${BASH_SOURCE[0]}")/lib/as-root.sh"',
            'as_root "${BASH_SOURCE[0]}" "$@"',
        ], name
