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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pulsarfunc.builder.errors import DependencyError
from pulsarfunc.builder.progress import Progress, human_size

__all__ = [
    "StagedDir",
    "Target",
    "WheelStager",
    "cache_root",
    "requirements_key",
    "runtime_requirements",
    "stage_wheels",
]

#: Bump when the layout of a staged directory changes, so old cache entries are not reused.
STAGING_FORMAT = 2

_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_NO_VERSION = re.compile(r"Could not find a version that satisfies the requirement (\S+)")
# pip's own lines for each wheel it fetches: "  Downloading six-1.16.0-py2.py3-none-any.whl (11 kB)"
_FETCHED = re.compile(r"^\s*(Downloading|Using cached) (?:\S*/)?(\S+\.whl) \(([\d.]+) ([kMG]?B)\)")
_UNITS = {"B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}

#: Told of each wheel pip fetches: file name, size in bytes, whether pip's cache had it.
OnWheel = Callable[[str, int, bool], None]


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
    wheels: int = 0  # wheels pip fetched for it (0 when cached)
    fetched: int = 0  # their bytes

    @property
    def size(self) -> int:
        """Bytes installed in the staged directory."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def parse_fetched(line: str) -> tuple[str, int, bool] | None:
    """(wheel file, bytes, from pip's cache) from one line of pip's output, else None."""
    match = _FETCHED.match(line)
    if not match:
        return None
    return match[2], round(float(match[3]) * _UNITS[match[4]]), match[1] == "Using cached"


_MANYLINUX = re.compile(r"manylinux_2_(\d+)_(\w+)")
_OLDEST_GLIBC_MINOR = 17  # manylinux2014: the oldest tag wheels still ship (grpcio only has it)


def compatible_platforms(platform: str) -> list[str]:
    """`platform` and every older manylinux tag a system with its glibc runs too (pip takes
    `--platform` literally: a manylinux_2_28 target would refuse grpcio's manylinux2014 wheels)."""
    match = _MANYLINUX.fullmatch(platform)
    if match is None:
        return [platform]
    newest, arch = int(match.group(1)), match.group(2)
    older = [f"manylinux_2_{minor}_{arch}" for minor in range(newest, _OLDEST_GLIBC_MINOR - 1, -1)]
    return [*older, f"manylinux2014_{arch}"]


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
        self,
        requirements: Sequence[str],
        target: Target,
        provided: Sequence[str] = (),
        on_wheel: OnWheel | None = None,
    ) -> StagedDir:
        """The site directory for `requirements`, installing it on a cache miss.

        `provided` pins what the image already has (the runtime's dependencies): resolution is
        constrained to those versions, and their copies are left out of the staged directory.
        `on_wheel` hears of each wheel as pip fetches it.
        """
        key = requirements_key(requirements, target, provided)
        final = self.cache / "wheels" / key
        if (final / "site").is_dir():
            return StagedDir(final / "site", key, cached=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            fetched = self._install(requirements, provided, target, work, on_wheel)
            _drop_distributions(work / "site", [_package_name(p) for p in provided])
            try:
                os.rename(work, final)
            except OSError:  # another build staged the same key meanwhile: use theirs
                if not (final / "site").is_dir():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return StagedDir(
            final / "site",
            key,
            cached=False,
            wheels=len(fetched),
            fetched=sum(fetched),
        )

    def _install(
        self,
        requirements: Sequence[str],
        constraints: Sequence[str],
        target: Target,
        work: Path,
        on_wheel: OnWheel | None,
    ) -> list[int]:
        """Run pip, reading its lines as they come; the sizes of the wheels it fetched."""
        (work / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
        command = [
            *self.pip,
            "install",
            "--progress-bar",
            "off",
            "--disable-pip-version-check",
            "--no-compile",
            "--no-warn-script-location",
            "--target",
            str(work / "site"),
            *(
                arg
                for platform in compatible_platforms(target.platform)
                for arg in ("--platform", platform)
            ),
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
        output: list[str] = []
        sizes: list[int] = []
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as pip:
            for line in pip.stdout or ():
                output.append(line)
                if (wheel := parse_fetched(line)) is not None:
                    sizes.append(wheel[1])
                    if on_wheel:
                        on_wheel(*wheel)
        if pip.returncode != 0:
            raise _dependency_error("".join(output), target)
        _prune(work / "site")
        return sizes


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


def stage_wheels(
    stager: WheelStager,
    progress: Progress,
    label: str,
    requirements: Sequence[str],
    target: Target,
    provided: Sequence[str] = (),
) -> StagedDir:
    """`stager.stage`, telling `progress` of each wheel, the sizes and how long it took."""
    started = progress.clock()
    progress.wheels_started(label)
    try:
        staged = stager.stage(
            requirements,
            target,
            provided,
            on_wheel=lambda name, size, cached: progress.wheel(label, name, size, cached),
        )
    finally:
        progress.wheels_done(label)
    if staged.cached:
        how = "cached"
    else:
        wheels = f"{staged.wheels} wheel{'s' * (staged.wheels != 1)}"
        how = f"staged: {wheels}, {human_size(staged.fetched)} fetched"
    progress.stage(
        f"{label} {how}, {human_size(staged.size)} installed ({staged.key[:12]}): "
        + ", ".join(requirements),
        progress.clock() - started,
    )
    return staged
