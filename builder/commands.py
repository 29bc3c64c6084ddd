"""`pulsarfunc build` and `pulsarfunc init`: flags and environment in, exit code out.

Exit codes: 0 built (or scaffolded), 2 user error (what was found and what to do), 1 build or
engine failure (with the failing build log lines). Progress goes to stderr; stdout carries the
result: the tag, the image id (--quiet) or a JSON summary (--json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from pulsarfunc.builder.errors import DependencyError
from pulsarfunc.builder.plan import DEFAULT_BASE_IMAGE, DEFAULT_PYTHON_VERSION, BuildOptions
from pulsarfunc.builder.progress import human_size
from pulsarfunc.runtime.errors import ConfigError, PulsarFuncError, UserError
from pulsarfunc.runtime.options import FlagParser

__all__ = ["build_main", "init_main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="pulsarfunc build",
        description="Build a function (a .py file, module directory or package) into one "
        "self-contained image: `docker run IMAGE --inputs IN --output OUT` runs it.",
    )
    parser.add_argument("path", metavar="PATH", type=Path, help="function file or directory")
    parser.add_argument("-t", "--tag", required=True, help="image name[:tag]")
    parser.add_argument(
        "--handler", help="module:attr or attr (default: the runtime's discovery rule)"
    )
    parser.add_argument(
        "--base-image",
        help=f"Python base image (env PULSARFUNC_BASE_IMAGE; default {DEFAULT_BASE_IMAGE})",
    )
    parser.add_argument(
        "--python-version",
        default=DEFAULT_PYTHON_VERSION,
        help="the base image's Python, for which wheels are staged (default %(default)s)",
    )
    parser.add_argument(
        "--platform", default="", help="wheel platform (default manylinux_2_28_<engine arch>)"
    )
    parser.add_argument(
        "--requirements", type=Path, help="requirements file (default PATH/requirements.txt)"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="rebuild the function's layers (not the base)"
    )
    parser.add_argument(
        "--rebuild-base", action="store_true", help="rebuild the shared runtime base image too"
    )
    parser.add_argument("--push", action="store_true", help="push the image after building")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return parser


def _epoch(env: Mapping[str, str]) -> int:
    raw = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise UserError(
            f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds",
            hint="set it to a Unix time, e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)",
        )
    return int(raw)


def options_from(args: argparse.Namespace, env: Mapping[str, str]) -> BuildOptions:
    """BuildOptions from parsed flags, then environment, then defaults."""
    return BuildOptions(
        path=args.path,
        tag=args.tag,
        handler=args.handler,
        base_image=args.base_image or env.get("PULSARFUNC_BASE_IMAGE") or DEFAULT_BASE_IMAGE,
        python_version=args.python_version,
        platform=args.platform,
        requirements=args.requirements,
        source_date_epoch=_epoch(env),
        no_cache=args.no_cache,
        rebuild_base=args.rebuild_base,
        push=args.push,
    )


def _report_error(exc: PulsarFuncError, as_json: bool, out: TextIO, err: TextIO) -> int:
    print(f"pulsarfunc: error: {exc}", file=err)
    if as_json:
        payload: dict[str, object] = {
            "error": exc.problem,
            "hint": exc.hint,
            "exit_code": exc.exit_code,
        }
        if isinstance(exc, DependencyError):
            payload["package"] = exc.package
        print(json.dumps(payload), file=out)
    return exc.exit_code


def build_main(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`pulsarfunc build PATH -t TAG ...`; returns the exit code."""
    from pulsarfunc.builder.build import build_image, git_revision
    from pulsarfunc.builder.docker_engine import Engine
    from pulsarfunc.builder.progress import Progress
    from pulsarfunc.builder.wheels import WheelStager, cache_root

    env = os.environ if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _build_parser().parse_args(list(argv))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except ConfigError as exc:
        return _report_error(exc, "--json" in argv, out, err)
    engine = Engine.from_env(env)
    try:
        options = options_from(args, env)
        result = build_image(
            options,
            engine=engine,
            stager=WheelStager(cache_root(env)),
            progress=Progress.for_output(err, env, quiet=args.quiet, as_json=args.json),
            revision=git_revision(options.path.resolve()),
            env=env,
        )
    except PulsarFuncError as exc:
        return _report_error(exc, args.json, out, err)
    finally:
        engine.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2), file=out)
    elif args.quiet:
        print(result.image_id, file=out)
    else:
        code = next((layer for layer in result.layers if layer.role == "code"), None)
        deps = next((layer for layer in result.layers if layer.role == "dependencies"), None)
        parts = [f"image {human_size(result.size)}"]
        if code:
            parts.append(f"code layer {human_size(code.size)}")
        if deps:
            parts.append(f"dependency layer {human_size(deps.size)}" + (" reused" * deps.reused))
        print(
            f"built {result.tag} {result.image_id[7:19]} ({', '.join(parts)}) "
            f"in {result.seconds:.1f}s",
            file=out,
        )
    return 0


def _init_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="pulsarfunc init",
        description="Scaffold a function directory: handler, requirements.txt, a unit test "
        "and a README.",
    )
    parser.add_argument("name", metavar="NAME", help="directory to create (its name names it)")
    parser.add_argument("--force", action="store_true", help="write into an existing directory")
    return parser


def init_main(argv: Sequence[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`pulsarfunc init NAME`; returns the exit code."""
    from pulsarfunc.builder.scaffold import scaffold

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _init_parser().parse_args(list(argv))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except ConfigError as exc:
        print(f"pulsarfunc: error: {exc}", file=err)
        return exc.exit_code
    try:
        written = scaffold(Path(args.name), force=args.force)
    except PulsarFuncError as exc:
        print(f"pulsarfunc: error: {exc}", file=err)
        return exc.exit_code
    for path in written:
        print(f"created {path}", file=out)
    print(
        f"next: cd {args.name} && python -m pytest && "
        f"pulsarfunc build . -t {Path(args.name).name.lower()}:dev",
        file=out,
    )
    return 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["build"]
    sys.exit(build_main(rest) if command == "build" else init_main(rest))
