"""Host-side staging of dependencies as manylinux wheels, cached by what determines them.

Builds never touch the network: pip runs here, on the host, for the image's platform and
Python (`--platform --python-version --only-binary=:all:`), and installs into a directory that
the Dockerfile COPYs as one layer. The directory is cached under
`<cache>/wheels/<key>/site`, where the key hashes the requirements, the target platform and
Python, and the runtime's pinned dependencies, so every build and every function with the
same requirements reuses the same bytes (and so the same image layer).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pulsarfunc.builder.errors import DependencyError

__all__ = [
    "StagedDir",
    "Target",
    "WheelStager",
    "cache_root",
    "requirements_key",
    "runtime_requirements",
]

#: Bump when the layout of a staged directory changes, so old cache entries are not reused.
STAGING_FORMAT = 2

_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_NO_VERSION = re.compile(r"Could not find a version that satisfies the requirement (\S+)")


@dataclass(frozen=True)
class Target:
    """The image's interpreter and platform that wheels must match."""

    python_version: str
    platform: str


@dataclass(frozen=True)
class StagedDir:
    """A staged site directory and whether it came from the cache."""

    path: Path
    key: str
    cached: bool


def cache_root(env: Mapping[str, str]) -> Path:
    """`$PULSARFUNC_CACHE`, else `$XDG_CACHE_HOME/pulsarfunc`, else `~/.cache/pulsarfunc`."""
    if env.get("PULSARFUNC_CACHE"):
        return Path(env["PULSARFUNC_CACHE"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "pulsarfunc"
    return Path.home() / ".cache" / "pulsarfunc"


def runtime_requirements() -> tuple[str, ...]:
    """The runtime's own dependencies pinned to the versions installed on this host."""
    pins: list[str] = []
    for spec in importlib.metadata.requires("pulsarfunc") or []:
        if ";" in spec and "extra" in spec.split(";", 1)[1]:
            continue
        name = re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]
        pins.append(f"{name}=={importlib.metadata.version(name)}")
    return tuple(sorted(pins, key=str.lower))


def requirements_key(
    requirements: Sequence[str], target: Target, constraints: Sequence[str] = ()
) -> str:
    """A stable hash of everything that determines a staged directory's content."""
    payload = {
        "format": STAGING_FORMAT,
        "requirements": list(requirements),
        "constraints": sorted(constraints),
        "python": target.python_version,
        "platform": target.platform,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _package_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ @]", spec.strip("'\""), maxsplit=1)[0]


def _dependency_error(stderr: str, target: Target) -> DependencyError:
    """Turn pip's failure into an error that names the package and says what to do."""
    tail = [line for line in stderr.strip().splitlines() if line.strip()][-6:]
    match = _NO_MATCH.search(stderr) or _NO_VERSION.search(stderr)
    if match:
        package = _package_name(match.group(1))
        return DependencyError(
            f"no wheel of {package!r} for CPython {target.python_version} on "
            f"{target.platform}: it ships only a source distribution, or no release matches "
            f"(pip said: {tail[-1].strip()})",
            hint="pulsarfunc installs wheels only (no compiler, no network in the build): pin a "
            f"version of {package} that publishes a manylinux wheel, or build the wheel "
            "yourself and point pip at it with --find-links in requirements.txt",
            package=package,
        )
    return DependencyError(
        "pip could not resolve the requirements:\n    " + "\n    ".join(tail),
        hint="fix the requirements (a conflict with the runtime's pinned dependencies "
        "shows above), then build again",
    )


class WheelStager:
    """Installs requirements into cached site directories with the host's pip."""

    def __init__(self, cache: Path, pip: Sequence[str] = (sys.executable, "-m", "pip")) -> None:
        self.cache = cache
        self.pip = list(pip)

    def stage(
        self, requirements: Sequence[str], target: Target, provided: Sequence[str] = ()
    ) -> StagedDir:
        """The site directory for `requirements`, installing it on a cache miss.

        `provided` pins what the image already has (the runtime's dependencies): resolution is
        constrained to those versions, and their copies are left out of the staged directory.
        """
        key = requirements_key(requirements, target, provided)
        final = self.cache / "wheels" / key
        if (final / "site").is_dir():
            return StagedDir(final / "site", key, cached=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            self._install(requirements, provided, target, work)
            _drop_distributions(work / "site", [_package_name(p) for p in provided])
            try:
                os.rename(work, final)
            except OSError:  # another build staged the same key meanwhile: use theirs
                if not (final / "site").is_dir():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return StagedDir(final / "site", key, cached=False)

    def _install(
        self,
        requirements: Sequence[str],
        constraints: Sequence[str],
        target: Target,
        work: Path,
    ) -> None:
        (work / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
        command = [
            *self.pip,
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--no-warn-script-location",
            "--target",
            str(work / "site"),
            "--platform",
            target.platform,
            "--python-version",
            target.python_version,
            "--implementation",
            "cp",
            "--only-binary=:all:",
            "-r",
            str(work / "requirements.txt"),
        ]
        if constraints:
            (work / "constraints.txt").write_text("".join(f"{c}\n" for c in constraints))
            command += ["-c", str(work / "constraints.txt")]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise _dependency_error(result.stderr + result.stdout, target)
        _prune(work / "site")


def _prune(site: Path) -> None:
    """Drop what must not reach an image: host-specific scripts and bytecode caches."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    for cache_dir in sorted(site.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache_dir, ignore_errors=True)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _drop_distributions(site: Path, names: Sequence[str]) -> None:
    """Remove installed distributions `names` (files listed in their RECORD, then the record)."""
    wanted = {_canonical(n) for n in names}
    for info in sorted(site.glob("*.dist-info")):
        if _canonical(info.name.removesuffix(".dist-info").rsplit("-", 1)[0]) not in wanted:
            continue
        record = info / "RECORD"
        entries = record.read_text().splitlines() if record.is_file() else []
        for row in entries:
            relative = row.split(",", 1)[0]
            path = (site / relative).resolve()
            if path.is_relative_to(site.resolve()) and path.is_file():
                path.unlink()
        shutil.rmtree(info, ignore_errors=True)
    for directory in sorted((d for d in site.rglob("*") if d.is_dir()), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
