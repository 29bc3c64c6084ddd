"""One build's way: plan -> host check -> runtime base -> wheels -> render -> context -> build.

Then the engine's image is given a reproducible id (see `normalize`) under the requested tag,
and optionally pushed. The engine and the wheel stager are passed in; this module only
orchestrates and reports.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulsarfunc.builder.base import BaseImage, ensure_base
from pulsarfunc.builder.context import BuildContext
from pulsarfunc.builder.docker_engine import Engine
from pulsarfunc.builder.errors import BuildError, EngineError
from pulsarfunc.builder.normalize import history_layers, normalize
from pulsarfunc.builder.plan import BuildOptions, BuildPlan, make_plan
from pulsarfunc.builder.progress import BuildLog, Progress, human_size
from pulsarfunc.builder.render import (
    FunctionFiles,
    FunctionValues,
    function_name,
    render_function,
)
from pulsarfunc.builder.validate import host_runs_target, validate_on_host, validate_with_deps
from pulsarfunc.builder.wheels import (
    StagedDir,
    Target,
    WheelStager,
    runtime_requirements,
    stage_wheels,
)

__all__ = ["BuildResult", "LayerReport", "build_context", "build_image", "git_revision"]

DEPS_DIR = "opt/pulsarfunc/deps"


@dataclass(frozen=True)
class LayerReport:
    """One layer the function build added on top of the runtime base."""

    role: str
    diff_id: str
    size: int
    reused: bool


@dataclass(frozen=True)
class BuildResult:
    """What `pulsarfunc build` made (also the --json summary)."""

    tag: str
    image_id: str
    size: int
    base: str
    base_built: bool
    handler: str
    layers: tuple[LayerReport, ...]
    deps_staged_from_cache: bool | None
    reproducible_id: bool
    seconds: float
    pushed_digest: str = ""


def split_tag(tag: str) -> tuple[str, str]:
    """`repo[:tag]` -> (repo, tag); a registry port is not mistaken for a tag."""
    repo, _, last = tag.rpartition("/")
    if ":" in last:
        name, _, version = last.partition(":")
        return (f"{repo}/{name}" if repo else name), version
    return tag, "latest"


def git_revision(path: Path) -> str:
    """The commit checked out where the function lives, or "" outside git."""
    directory = path if path.is_dir() else path.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def build_context(plan: BuildPlan, files: FunctionFiles, deps: StagedDir | None) -> BuildContext:
    """The deterministic context: Dockerfile, deps/ (one layer), code/ (the next layer)."""
    context = BuildContext(mtime=plan.options.source_date_epoch)
    context.add_bytes("Dockerfile", files.dockerfile.encode())
    if deps is not None:
        context.add_tree(f"deps/{DEPS_DIR}", deps.path)
    for item in plan.files:
        context.add_file(f"code/{item.dest}", item.source, item.mode)
    context.add_bytes("code/opt/pulsarfunc/entrypoint.py", files.entrypoint.encode())
    context.add_bytes("code/opt/pulsarfunc/check.py", files.check.encode())
    return context


def _layer_counts(engine: Engine, history_oldest_first: list[dict[str, Any]]) -> list[int | None]:
    """Layers of each history entry's image where the engine still has it (classic steps)."""
    counts: list[int | None] = []
    for entry in history_oldest_first:
        image = str(entry.get("Id") or "")
        known = image.startswith("sha256:") and engine.image_id(image) is not None
        counts.append(len(engine.inspect(image)["RootFS"]["Layers"]) if known else None)
    return counts


def _layer_reports(
    engine: Engine,
    image: str,
    base: BaseImage,
    log: BuildLog,
    has_deps: bool,
    counts: list[int | None],
) -> tuple[LayerReport, ...]:
    diff_ids = list(engine.inspect(image)["RootFS"]["Layers"])
    history = list(reversed(engine.history(image)))
    made = history_layers(history, len(diff_ids), counts)
    sizes = [int(e.get("Size") or 0) for e, layer in zip(history, made, strict=True) if layer]
    roles = ["dependencies", "code"] if has_deps else ["code"]
    prefixes = {"dependencies": "COPY deps/", "code": "COPY code/"}
    own = list(zip(diff_ids, sizes, strict=True))[len(base.diff_ids) :]
    reports = []
    for role, (diff_id, size) in zip(roles, own, strict=False):
        step = log.step_for(prefixes[role])
        reports.append(LayerReport(role, diff_id, size, bool(step and step.cached)))
    return tuple(reports)


def build_image(
    options: BuildOptions,
    *,
    engine: Engine,
    stager: WheelStager,
    progress: Progress,
    revision: str = "",
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> BuildResult:
    """Build the function image `options` describe; raises UserError/BuildError/EngineError."""
    started = clock()
    env = {} if env is None else env
    plan = make_plan(options, revision=revision)
    check = validate_on_host(plan)
    image_ref = plan.image_ref(check.attr, check.file)
    progress.stage(f"handler {image_ref}: {check.description}")

    platform = options.platform or f"manylinux_2_28_{engine.architecture()}"
    target = Target(options.python_version, platform)
    deps = None
    if plan.requirements:  # before the base: a requirement without wheels fails fast
        deps = stage_wheels(
            stager, progress, "dependencies", plan.requirements, target, runtime_requirements()
        )
        if check.deferred and host_runs_target(target.python_version, target.platform):
            check = validate_with_deps(plan, deps.path, env)
            image_ref = plan.image_ref(check.attr, check.file)
            progress.stage(f"handler {image_ref}: {check.description}")
    base = ensure_base(
        engine,
        stager,
        progress,
        base_image=options.base_image,
        target=target,
        rebuild=options.rebuild_base,
    )

    labels = {**plan.labels, "io.pulsarfunc.handler": image_ref}
    files = render_function(
        FunctionValues(
            title=plan.title,
            base_ref=base.ref,
            deps_key=deps.key if deps else "",
            handler_ref=image_ref,
            labels=tuple(sorted(labels.items())),
            source_date_epoch=options.source_date_epoch,
            function_name=function_name(plan.title),
        )
    )
    context = build_context(plan, files, deps)
    log = BuildLog(progress, "image")
    build_started = clock()
    with tempfile.TemporaryFile() as stream:
        context.write(stream)
        progress.stage(f"image: build context {human_size(stream.tell())}")
        stream.seek(0)
        for event in engine.build(stream, nocache=options.no_cache):
            log.feed(event)
    log.close()
    if log.error or not log.image_id:
        raise BuildError(
            f"building {options.tag} failed: {log.error or 'the engine produced no image'}",
            hint="the lines above come from the build; a failed `check.py` step means the "
            "handler does not import inside the image (a missing native library or dependency)",
            log=list(log.tail),
        )
    counts = _layer_counts(engine, list(reversed(engine.history(log.image_id))))
    layers = _layer_reports(engine, log.image_id, base, log, deps is not None, counts)
    repo, tag = split_tag(options.tag)
    image_id, reproducible = _finalize(engine, log.image_id, options, repo, tag, counts, progress)
    size = int(engine.inspect(image_id).get("Size") or 0)
    progress.stage(f"image {repo}:{tag} built, {human_size(size)}", clock() - build_started)
    pushed = _push(engine, repo, tag, progress) if options.push else ""
    return BuildResult(
        tag=f"{repo}:{tag}",
        image_id=image_id,
        size=size,
        base=base.ref,
        base_built=base.built,
        handler=image_ref,
        layers=layers,
        deps_staged_from_cache=deps.cached if deps else None,
        reproducible_id=reproducible,
        seconds=round(clock() - started, 3),
        pushed_digest=pushed,
    )


def _finalize(
    engine: Engine,
    raw_id: str,
    options: BuildOptions,
    repo: str,
    tag: str,
    counts: list[int | None],
    progress: Progress,
) -> tuple[str, bool]:
    """Tag the image with a reproducible id; falls back to the engine's id when impossible."""
    try:
        image = normalize(
            engine.inspect(raw_id),
            engine.history(raw_id),
            epoch=options.source_date_epoch,
            repo_tag=f"{repo}:{tag}",
            layer_counts=counts,
        )
    except ValueError as exc:
        progress.stage(f"image id not normalised ({exc}); tagging the engine's image")
        engine.tag(raw_id, repo, tag)
        return raw_id, False
    engine.load(image.archive)
    return image.image_id, True


def _push(engine: Engine, repo: str, tag: str, progress: Progress) -> str:
    """Push and return the registry's digest of the image."""
    digest = ""
    for event in engine.push(repo, tag):
        if event.get("error"):
            raise EngineError(
                f"pushing {repo}:{tag} failed: {event['error']}",
                hint="check the registry address, that it is running, and `docker login`",
            )
        aux = event.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = str(aux["Digest"])
    progress.stage(f"pushed {repo}:{tag} {digest}")
    return digest
