"""BuildPlan: what goes into a function image, decided before any Docker or network work.

`make_plan` reads the function's files (and pulsarfunc's own metadata, for the extras a
function may list: `pulsarfunc[otel]`), nothing else: which files land where in the image,
which handler the entrypoint loads, the declared requirements and the labels. Everything after
it (staging wheels, rendering, the build) works from the plan alone.

Layout in the image:

    /app/<module>.py            a single-file function (PATH is a .py file)
    /app/...                    a module directory's files (PATH is a directory)
    /app/<package>/...          a package (PATH is a directory with __init__.py)
    /opt/pulsarfunc/deps/       the staged dependencies (their own layer)
    /opt/pulsarfunc/site/       the runtime and its dependencies (the base image)
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path, PurePosixPath

from pulsarfunc._version import __version__
from pulsarfunc.builder.errors import PlanError
from pulsarfunc.builder.ignore import DEFAULT_EXCLUDES, IgnoreRules, read_dockerignore
from pulsarfunc.builder.requirements import (
    read_project,
    read_requirements_file,
    without_runtime,
)

__all__ = [
    "APP_DIR",
    "DEFAULT_BASE_IMAGE",
    "DEFAULT_PYTHON_VERSION",
    "BuildOptions",
    "BuildPlan",
    "SourceFile",
    "SourceKind",
    "make_plan",
]

DEFAULT_BASE_IMAGE = "python:3.11-slim"
DEFAULT_PYTHON_VERSION = "3.11"
APP_DIR = PurePosixPath("/app")

# Docker's reference grammar, simplified: [registry[:port]/]name[/name...][:tag]
_TAG_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
)
_HANDLER_RE = re.compile(r"^(?:(?P<module>[A-Za-z_][\w.]*):)?(?P<attr>[A-Za-z_][\w.]*)$")


class SourceKind(Enum):
    """The three shapes a function's PATH can take."""

    FILE = "file"
    DIRECTORY = "directory"
    PACKAGE = "package"


@dataclass(frozen=True)
class BuildOptions:
    """Everything the user chose for one build (flags and environment, resolved by the CLI)."""

    path: Path
    tag: str
    handler: str | None = None
    base_image: str = DEFAULT_BASE_IMAGE
    python_version: str = DEFAULT_PYTHON_VERSION
    platform: str = ""  # "" = manylinux_2_28 for the engine's architecture
    requirements: Path | None = None
    source_date_epoch: int = 0
    no_cache: bool = False  # the function image's layers; the runtime base is kept
    rebuild_base: bool = False
    push: bool = False


@dataclass(frozen=True)
class SourceFile:
    """One host file and where it lands in the image (`dest` is relative to `/`)."""

    source: Path
    dest: str
    mode: int


@dataclass(frozen=True)
class BuildPlan:
    """The decided content of one function image."""

    options: BuildOptions
    kind: SourceKind
    root: Path
    files: tuple[SourceFile, ...]
    host_target: Path
    image_target: PurePosixPath
    attr: str | None
    requirements: tuple[str, ...]
    title: str
    version: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def host_ref(self) -> str:
        """The handler reference the runtime's discovery resolves on the host."""
        return f"{self.host_target}:{self.attr}" if self.attr else str(self.host_target)

    def image_ref(self, attr: str | None = None, host_file: Path | None = None) -> str:
        """The handler reference inside the image: the module file the host check found (or
        the planned target when the check was deferred), with the attribute it resolved."""
        target = self.image_target
        if host_file is not None:
            base = self.root if self.kind is not SourceKind.PACKAGE else self.root.parent
            target = APP_DIR / host_file.resolve().relative_to(base).as_posix()
        name = attr or self.attr
        return f"{target}:{name}" if name else str(target)


def _mode(path: Path) -> int:
    """Normalised permission bits: executable files stay executable, nothing is writable."""
    return 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644


def _walk(directory: Path, rules: IgnoreRules) -> list[tuple[Path, str]]:
    """Every kept regular file under `directory` as (path, relative POSIX path), sorted."""
    found: list[tuple[Path, str]] = []
    for current, dirnames, filenames in os.walk(directory):
        here = Path(current)
        rel_here = here.relative_to(directory).as_posix()
        kept_dirs = []
        for name in sorted(dirnames):
            rel = name if rel_here == "." else f"{rel_here}/{name}"
            sub = here / name
            if (sub / "pyvenv.cfg").exists():
                continue  # a virtualenv, whatever its name
            if rules.excluded(rel) and not rules.may_reinclude_below(rel):
                continue
            if sub.is_symlink():
                raise PlanError(
                    f"{sub} is a symbolic link to a directory",
                    hint="replace it with a real directory, or exclude it in .dockerignore",
                )
            kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            rel = name if rel_here == "." else f"{rel_here}/{name}"
            if not rules.excluded(rel) and (here / name).is_file():
                found.append((here / name, rel))
    return sorted(found, key=lambda item: item[1])


def _parse_handler(handler: str | None) -> tuple[str | None, str | None]:
    """Split `--handler` into (module, attr); `attr` alone keeps discovery's module."""
    if handler is None:
        return None, None
    match = _HANDLER_RE.match(handler)
    if not match:
        raise PlanError(
            f"--handler {handler!r} is not of the form module:attr or attr",
            hint="e.g. --handler main:process, or --handler process",
        )
    return match.group("module"), match.group("attr")


def _module_target(base: Path, module: str) -> Path:
    """The file or package directory of a dotted module name under `base`."""
    parts = module.split(".")
    as_file = base.joinpath(*parts[:-1], parts[-1] + ".py")
    as_package = base.joinpath(*parts)
    if as_file.is_file():
        return as_file
    if (as_package / "__init__.py").is_file():
        return as_package
    raise PlanError(
        f"--handler module {module!r} not found under {base}",
        hint=f"expected {as_file} or {as_package}/__init__.py",
    )


def _requirements(options: BuildOptions, root: Path, kind: SourceKind) -> tuple[str, ...]:
    """Requirements from --requirements, else the directory's pyproject + requirements.txt.

    `pulsarfunc` itself is dropped (the runtime base provides it, and a function's pyproject
    often lists it), but not its extras: `pulsarfunc[otel]` becomes OpenTelemetry's packages.
    """
    found: list[str] = []
    if options.requirements is not None:
        if not options.requirements.is_file():
            raise PlanError(
                f"--requirements {options.requirements} does not exist",
                hint="pass the path of a requirements.txt file",
            )
        found = read_requirements_file(options.requirements)
    elif kind is not SourceKind.FILE:
        found = list(read_project(root / "pyproject.toml").dependencies)
        if (root / "requirements.txt").is_file():
            found += read_requirements_file(root / "requirements.txt")
    return without_runtime(found)


# pulsar-client's `avro` extra (fastavro): the image gets it only when the function uses AVRO
AVRO_REQUIREMENT = "fastavro>=1.9.2"
_AVRO_WORD = re.compile(rb"\bavro\b|AvroSchema", re.IGNORECASE)
_CONFIG_SUFFIXES = (".py", ".yaml", ".yml", ".json")


def uses_avro(files: Sequence[SourceFile]) -> bool:
    """The function's code or config names AVRO (a schemaType, `AvroSchema`)."""
    for file in files:
        if file.source.suffix in _CONFIG_SUFFIXES:
            try:
                if _AVRO_WORD.search(file.source.read_bytes()):
                    return True
            except OSError:
                continue
    return False


def with_schema_requirements(
    requirements: tuple[str, ...], files: Sequence[SourceFile]
) -> tuple[str, ...]:
    """`requirements`, plus fastavro when the function uses AVRO and does not list it."""
    listed = {_dist_name(r) for r in requirements}
    if "fastavro" in listed or not uses_avro(files):
        return requirements
    return (*requirements, AVRO_REQUIREMENT)


def _dist_name(requirement: str) -> str:
    name = re.split(r"[^A-Za-z0-9_.-]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _kind(path: Path) -> SourceKind:
    if path.is_file():
        if path.suffix != ".py":
            raise PlanError(
                f"{path} is not a Python file",
                hint="pass a .py file, a module directory or a package directory",
            )
        return SourceKind.FILE
    if path.is_dir():
        return SourceKind.PACKAGE if (path / "__init__.py").is_file() else SourceKind.DIRECTORY
    raise PlanError(f"{path} does not exist", hint="pass the function's .py file or directory")


def make_plan(options: BuildOptions, *, revision: str = "") -> BuildPlan:
    """Decide the image content for `options`; `revision` is the git commit, if any."""
    if not _TAG_RE.match(options.tag):
        raise PlanError(
            f"-t {options.tag!r} is not a valid image name",
            hint="use lowercase name[:tag], e.g. -t myfunc:dev or -t registry:5000/team/myfunc:1.0",
        )
    path = options.path.resolve()
    kind = _kind(path)
    module, attr = _parse_handler(options.handler)
    if kind is SourceKind.FILE:
        if module is not None:
            raise PlanError(
                f"--handler {options.handler!r} names a module, but {path} is a single file",
                hint=f"pass only the attribute: --handler {attr}",
            )
        root = path.parent
        files = [SourceFile(path, f"app/{path.name}", _mode(path))]
        host_target, image_target = path, APP_DIR / path.name
    else:
        root = path
        rules = IgnoreRules([*DEFAULT_EXCLUDES, *read_dockerignore(path)])
        prefix = APP_DIR / path.name if kind is SourceKind.PACKAGE else APP_DIR
        files = [
            SourceFile(src, str(prefix / rel).lstrip("/"), _mode(src))
            for src, rel in _walk(path, rules)
        ]
        if not files:
            raise PlanError(f"{path} has no files to build", hint="check .dockerignore")
        host_target = _module_target(path, module) if module else path
        image_target = prefix / host_target.relative_to(path).as_posix()
    project = read_project(root / "pyproject.toml") if kind is not SourceKind.FILE else None
    title = (project.name if project and project.name else "") or path.stem
    version = project.version if project else ""
    plan = BuildPlan(
        options=options,
        kind=kind,
        root=root,
        files=tuple(files),
        host_target=host_target,
        image_target=image_target,
        attr=attr,
        requirements=with_schema_requirements(_requirements(options, root, kind), files),
        title=title,
        version=version,
    )
    return _with_labels(plan, revision)


def _with_labels(plan: BuildPlan, revision: str) -> BuildPlan:
    """OCI labels the image carries; the handler label is finalised after host validation."""
    labels = {
        "org.opencontainers.image.title": plan.title,
        "io.pulsarfunc.runtime.version": __version__,
    }
    if plan.version:
        labels["org.opencontainers.image.version"] = plan.version
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    return replace(plan, labels=labels)
