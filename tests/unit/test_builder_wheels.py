"""Wheel staging: keyed cache, pruning, and pip's failures turned into errors naming the package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pulsarfunc.builder.errors import DependencyError
from pulsarfunc.builder.wheels import (
    Target,
    WheelStager,
    _dependency_error,
    cache_root,
    requirements_key,
    runtime_requirements,
)

TARGET = Target("3.11", "manylinux_2_28_x86_64")

# A stand-in for `python -m pip`: records each call, installs a module or fails like pip does.
FAKE_PIP = """\
import pathlib, sys
args = sys.argv[1:]
log = pathlib.Path(sys.argv[0]).with_suffix(".calls")
log.write_text(log.read_text() + " ".join(args) + "\\n" if log.exists() else " ".join(args) + "\\n")
site = pathlib.Path(args[args.index("--target") + 1])
reqs = pathlib.Path(args[args.index("-r") + 1]).read_text()
if "sdistonly" in reqs:
    sys.stderr.write("ERROR: Could not find a version that satisfies the requirement "
                     "sdistonly==1.0 (from versions: none)\\n"
                     "ERROR: No matching distribution found for sdistonly==1.0\\n")
    sys.exit(1)
(site / "bin").mkdir(parents=True)
(site / "bin" / "tool").write_text("#!/host/python\\n")
(site / "mod" / "__pycache__").mkdir(parents=True)
(site / "mod" / "__init__.py").write_text("VALUE = 1\\n")
(site / "mod" / "__pycache__" / "x.pyc").write_text("")
# a copy of a runtime dependency, as pip installs one a requirement depends on
(site / "protobuf-6.33.6.dist-info").mkdir()
(site / "google" / "protobuf").mkdir(parents=True)
(site / "google" / "protobuf" / "__init__.py").write_text("")
(site / "protobuf-6.33.6.dist-info" / "RECORD").write_text(
    "google/protobuf/__init__.py,,\\nprotobuf-6.33.6.dist-info/RECORD,,\\n")
"""


@pytest.fixture
def stager(tmp_path: Path) -> tuple[WheelStager, Path]:
    script = tmp_path / "fakepip.py"
    script.write_text(FAKE_PIP)
    return WheelStager(tmp_path / "cache", pip=[sys.executable, str(script)]), script


def test_key_is_stable_and_sensitive_to_every_input() -> None:
    key = requirements_key(["a==1"], TARGET, ["b==2"])
    assert key == requirements_key(["a==1"], TARGET, ["b==2"])
    others = {
        requirements_key(["a==2"], TARGET, ["b==2"]),
        requirements_key(["a==1"], Target("3.12", TARGET.platform), ["b==2"]),
        requirements_key(["a==1"], Target("3.11", "manylinux_2_28_aarch64"), ["b==2"]),
        requirements_key(["a==1"], TARGET, ["b==3"]),
    }
    assert key not in others
    assert len(others) == 4


def test_stage_installs_once_then_reuses(stager: tuple[WheelStager, Path]) -> None:
    wheel_stager, script = stager
    first = wheel_stager.stage(["mod==1"], TARGET, ["protobuf==6.33.6"])
    again = wheel_stager.stage(["mod==1"], TARGET, ["protobuf==6.33.6"])
    assert (first.cached, again.cached) == (False, True)
    assert first.path == again.path
    assert (first.path / "mod" / "__init__.py").read_text() == "VALUE = 1\n"
    assert not (first.path / "bin").exists()  # host-specific script shebangs never ship
    assert not list(first.path.rglob("__pycache__"))
    # what the runtime base provides is not shipped twice
    assert not (first.path / "google").exists()
    assert not list(first.path.glob("protobuf-*.dist-info"))
    calls = script.with_suffix(".calls").read_text().splitlines()
    assert len(calls) == 1
    flags = ("--platform manylinux_2_28_x86_64", "--python-version 3.11", "--only-binary=:all:")
    for flag in flags:
        assert flag in calls[0]
    assert " -c " in calls[0]


def test_sdist_only_requirement_names_the_package(stager: tuple[WheelStager, Path]) -> None:
    wheel_stager, _ = stager
    with pytest.raises(DependencyError, match="no wheel of 'sdistonly'") as info:
        wheel_stager.stage(["sdistonly==1.0"], TARGET)
    assert info.value.package == "sdistonly"
    assert info.value.exit_code == 2
    assert not list((wheel_stager.cache / "wheels").iterdir())  # no half-staged entry left


def test_other_pip_failures_show_pips_words() -> None:
    error = _dependency_error("ERROR: Cannot install a and b: conflicting dependencies\n", TARGET)
    assert "conflicting dependencies" in error.problem
    assert error.package == ""


def test_cache_root_precedence(tmp_path: Path) -> None:
    assert cache_root({"PULSARFUNC_CACHE": str(tmp_path)}) == tmp_path
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "pulsarfunc"
    assert cache_root({}).parts[-2:] == (".cache", "pulsarfunc")


def test_runtime_requirements_are_pinned() -> None:
    pins = runtime_requirements()
    names = {p.split("==")[0].lower() for p in pins}
    assert {"pulsar-client", "protobuf"} <= names
    assert all("==" in p for p in pins)


def test_a_manylinux_target_takes_the_older_manylinux_wheels_too() -> None:
    from pulsarfunc.builder.wheels import compatible_platforms

    assert compatible_platforms("manylinux_2_28_x86_64")[:2] == [
        "manylinux_2_28_x86_64",
        "manylinux_2_27_x86_64",
    ]
    assert compatible_platforms("manylinux_2_28_aarch64")[-2:] == [
        "manylinux_2_17_aarch64",
        "manylinux2014_aarch64",
    ]
    assert compatible_platforms("musllinux_1_2_x86_64") == ["musllinux_1_2_x86_64"]
