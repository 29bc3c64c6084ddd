"""The shared runtime base image: Dockerfile.base + the pinned runtime, built once per key.

Its tag names the runtime and Python versions (`pulsarfunc/runtime:0.1.0-py3.11`) and, for
exactness, a key hashing everything that goes into it: the base image's id, the target
platform, the runtime's pinned dependencies and the runtime's own files. A release's function
images all start FROM the same base; a runtime change during development makes a new one.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pulsarfunc
from pulsarfunc._version import __version__
from pulsarfunc.builder.context import BuildContext
from pulsarfunc.builder.docker_engine import Engine
from pulsarfunc.builder.errors import BuildError, PlanError
from pulsarfunc.builder.progress import BuildLog, Progress, human_size
from pulsarfunc.builder.wheels import Target, WheelStager, runtime_requirements, stage_wheels

__all__ = ["BASE_REPOSITORY", "BaseImage", "ensure_base", "runtime_files"]

BASE_REPOSITORY = "pulsarfunc/runtime"
SITE = "opt/pulsarfunc/site"

#: The parts of the package that run inside images; the builder and templates never do.
_RUNTIME_TOP = ("__init__.py", "_version.py", "cli.py", "__main__.py", "py.typed")
_RUNTIME_DIRS = ("runtime", "protos")


@dataclass(frozen=True)
class BaseImage:
    """The runtime base a function image starts FROM."""

    ref: str
    image_id: str
    built: bool
    diff_ids: tuple[str, ...]


def package_root() -> Path:
    """The directory of the installed (or editable) pulsarfunc package."""
    return Path(pulsarfunc.__file__).resolve().parent


def runtime_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(name relative to the package, path) of every runtime file, sorted."""
    root = root or package_root()
    found = [(name, root / name) for name in _RUNTIME_TOP if (root / name).is_file()]
    for directory in _RUNTIME_DIRS:
        for path in (root / directory).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def dockerfile_base() -> bytes:
    """The content of Dockerfile.base, shipped with the package."""
    return (package_root() / "Dockerfile.base").read_bytes()


def base_key(base_image_id: str, target: Target, pins: tuple[str, ...]) -> str:
    """A hash of everything the runtime base is made of."""
    digest = hashlib.sha256()
    for part in (base_image_id, target.python_version, target.platform, *pins):
        digest.update(part.encode() + b"\0")
    digest.update(dockerfile_base() + b"\0")
    for name, path in runtime_files():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _python_tag(target: Target) -> str:
    return f"{__version__}-py{target.python_version}"


def ensure_base(
    engine: Engine,
    stager: WheelStager,
    progress: Progress,
    *,
    base_image: str,
    target: Target,
    rebuild: bool = False,
) -> BaseImage:
    """The runtime base for `base_image` and `target`, built when the engine lacks it."""
    base_id = engine.image_id(base_image)
    if base_id is None:
        raise PlanError(
            f"the base image {base_image!r} is not in the Docker engine",
            hint="pull it (docker pull), or point --base-image / PULSARFUNC_BASE_IMAGE at a "
            "local Python image (scripts/bootstrap.sh makes pulsarfunc-local/python:3.11)",
        )
    pins = runtime_requirements()
    key = base_key(base_id, target, pins)
    tag = f"{_python_tag(target)}-{key[:12]}"
    ref = f"{BASE_REPOSITORY}:{tag}"
    existing = None if rebuild else engine.image_id(ref)
    if existing is not None:
        progress.stage(f"runtime base {ref} (present)")
        return BaseImage(ref, existing, False, _diff_ids(engine, ref))
    started = progress.clock()
    staged = stage_wheels(stager, progress, "runtime dependencies", pins, target)
    context = BuildContext()
    context.add_bytes("Dockerfile", dockerfile_base())
    context.add_tree(f"runtime-deps/{SITE}", staged.path)
    for name, path in runtime_files():
        context.add_file(f"runtime/{SITE}/pulsarfunc/{name}", path)
    log = BuildLog(progress, "base")
    with tempfile.TemporaryFile() as stream:
        context.write(stream)
        progress.stage(f"runtime base: build context {human_size(stream.tell())}")
        stream.seek(0)
        for event in engine.build(
            stream,
            tag=ref,
            nocache=rebuild,
            buildargs={
                "BASE_IMAGE": base_image,
                "PYTHON_VERSION": target.python_version,
                "RUNTIME_VERSION": __version__,
                "BASE_KEY": key,
            },
        ):
            log.feed(event)
    log.close()
    if log.error or not log.image_id:
        raise BuildError(
            f"building the runtime base {ref} failed: {log.error or 'no image produced'}",
            hint=f"check that {base_image} has python3 {target.python_version} at /usr/bin or "
            "/usr/local/bin",
            log=list(log.tail),
        )
    engine.tag(ref, BASE_REPOSITORY, _python_tag(target))
    size = int(engine.inspect(ref).get("Size") or 0)
    progress.stage(f"runtime base {ref} built, {human_size(size)}", progress.clock() - started)
    _untag_older(engine, ref, f"{BASE_REPOSITORY}:{_python_tag(target)}-")
    return BaseImage(ref, log.image_id, True, _diff_ids(engine, ref))


def _untag_older(engine: Engine, current: str, prefix: str) -> None:
    """Drop the tags of superseded bases of this release and Python (a runtime change during
    development makes a new key); their images stay while function images still use them."""
    for old in engine.tags(BASE_REPOSITORY):
        if old.startswith(prefix) and old != current:
            engine.remove(old)


def _diff_ids(engine: Engine, ref: str) -> tuple[str, ...]:
    return tuple(engine.inspect(ref)["RootFS"]["Layers"])
