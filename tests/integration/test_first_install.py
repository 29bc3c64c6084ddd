"""`pip install pulsarfunc` without extras, in a fresh venv: the first commands a new user runs.

Installs this checkout (copied, so the worktree gets no build/ directory) with its runtime
dependencies from the package index, as a user would; needs the index (pip's cache makes a
second run fast).
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_SKIP = shutil.ignore_patterns(
    ".git", ".venv", ".pkg", "build", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench"
)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding pulsarfunc as `pip install pulsarfunc` leaves it: no extras."""
    root = tmp_path_factory.mktemp("first-install")
    source = root / "pulsarfunc-src"
    shutil.copytree(REPO, source, ignore=_SKIP)
    venv.create(root / "venv", with_pip=True)
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip"]
    done = subprocess.run(
        [*pip, "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return root / "venv" / "bin"


def pulsarfunc(bin_dir: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "pulsarfunc"), *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_fresh_venv_has_no_builder_and_no_rich(fresh: Path) -> None:
    listed = subprocess.run(
        [str(fresh / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    names = {line.split("==")[0].replace("_", "-") for line in listed.split()}
    assert {"pulsarfunc", "pulsar-client", "protobuf", "pyyaml", "prometheus-client"} <= names
    assert not names & {"docker", "jinja2", "rich"}


@pytest.mark.parametrize("argv", [["build", "{exclaim}", "-t", "exclaim:dev"], ["init", "myfunc"]])
def test_build_and_init_name_the_missing_extra_in_one_line(
    fresh: Path, argv: list[str], tmp_path: Path
) -> None:
    argv = [a.format(exclaim=REPO / "examples" / "exclaim") for a in argv]
    done = pulsarfunc(fresh, *argv, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"pulsarfunc: error: `pulsarfunc {argv[0]}` needs the builder extra")
    assert "pip install 'pulsarfunc[builder]'" in line
    assert "docker" in line
    assert not (tmp_path / "myfunc").exists()


def test_run_check_and_manifest_work_without_the_extra(fresh: Path, tmp_path: Path) -> None:
    check = pulsarfunc(fresh, "check", str(REPO / "examples" / "exclaim"), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: ")
    manifest = pulsarfunc(
        fresh,
        "manifest",
        "exclaim:1",
        "--inputs",
        "in",
        "--service-url",
        "pulsar://b:6650",
        cwd=tmp_path,
    )
    assert manifest.returncode == 0, manifest.stderr
    assert "kind: Deployment" in manifest.stdout
    run = pulsarfunc(fresh, "run", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines()[0] == "pulsarfunc: error: `pulsarfunc run` needs PATH[:handler]"


def test_the_extra_brings_build_and_init(fresh: Path, tmp_path: Path) -> None:
    """After the one line's advice, init works (build needs Docker: its own tests cover it)."""
    source = next(fresh.parent.parent.glob("pulsarfunc-src"))
    done = subprocess.run(
        [str(fresh / "python"), "-m", "pip", "install", "--quiet", f"{source}[builder]"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    init = pulsarfunc(fresh, "init", "myfunc", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "myfunc" / "handler.py").is_file()
