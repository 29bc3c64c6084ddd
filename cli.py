"""The `pulsarfunc` command: run, check (runtime); build, init (builder, imported lazily).

The runtime commands never import the builder, so they work inside a function image; `manifest`
needs only the runtime's dependencies; `build` and `init` need the `builder` extra and say so,
in one line, when it is missing. Usage errors are two lines on stderr and exit 2.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence

from pulsarfunc._version import __version__

USAGE = """\
usage: pulsarfunc COMMAND [ARGS]

commands:
  run PATH[:handler] [flags]   run a function locally against a broker (LocalRun);
                               --watch reloads it when its files change
  check PATH[:handler]         validate a handler only; prints the form found (exit 0 or 2)
  build PATH -t TAG [...]      build a function into one self-contained image
  init NAME                    scaffold a new function directory
  manifest IMAGE [...]         Kubernetes Deployment and Function Mesh resource for an image

`pulsarfunc COMMAND --help` shows a command's flags. Exit codes: 0 success, 2 user error
(bad handler, flag or config), 1 runtime failure.
"""


WATCH_HELP = (
    "LocalRun only: reload the handler when the function's files change, keeping the "
    "subscription and the messages in flight; a change to requirements.txt asks for a "
    "restart (needs pip install 'pulsarfunc[watch]')"
)


#: The `builder` extra's modules (see pyproject.toml) and the distributions that provide them.
BUILDER_MODULES = {"docker": "docker", "jinja2": "Jinja2", "rich": "rich"} | (
    {"tomli": "tomli"} if sys.version_info < (3, 11) else {}
)


def _usage_error(problem: str, hint: str) -> int:
    """A usage error: two lines on stderr, exit 2."""
    print(f"pulsarfunc: error: {problem}\n  hint: {hint}", file=sys.stderr)
    return 2


def missing_builder_modules() -> list[str]:
    """The distributions of the `builder` extra whose modules cannot be imported."""
    return [
        dist for module, dist in BUILDER_MODULES.items() if not importlib.util.find_spec(module)
    ]


def _run(argv: Sequence[str]) -> int:
    from pulsarfunc.runtime.discovery import load
    from pulsarfunc.runtime.options import build_parser
    from pulsarfunc.runtime.resolve import launch
    from pulsarfunc.runtime.start import main_with, report

    example = "pulsarfunc run ./myfunc --inputs IN --output OUT (--help: every flag)"
    if not argv:
        return _usage_error("`pulsarfunc run` needs PATH[:handler]", example)
    if argv[0] in ("-h", "--help"):
        parser = build_parser("pulsarfunc run PATH[:handler]")
        parser.add_argument_group("local run").add_argument(
            "--watch", action="store_true", help=WATCH_HELP
        )
        parser.print_help()
        return 0
    watch = "--watch" in argv
    argv = [arg for arg in argv if arg != "--watch"]
    if not argv:
        return _usage_error(
            "--watch needs PATH[:handler] first", "pulsarfunc run ./myfunc --watch --inputs IN"
        )
    ref, flags = argv[0], list(argv[1:])
    if ref.startswith("-"):
        return _usage_error(f"expected PATH[:handler] first, found flag {ref!r}", example)
    try:
        if watch:
            from pulsarfunc.runtime.watch import require_watcher

            require_watcher()
            sys.dont_write_bytecode = True  # a stale .pyc (same size, same second) hides an edit
        loaded = load(ref)
    except Exception as exc:
        return report(exc, debug=launch(flags, os.environ).debug)
    attach = None
    if watch:
        from pulsarfunc.runtime.watch import watcher_for

        attach = watcher_for(ref, loaded)
    return main_with(loaded.obj, flags, os.environ, where=loaded.where, attach=attach)


def _check(argv: Sequence[str]) -> int:
    from pulsarfunc.runtime.discovery import DISCOVERY_RULE, load
    from pulsarfunc.runtime.errors import HandlerError
    from pulsarfunc.runtime.handler import ACCEPTED_FORMS, inspect_handler
    from pulsarfunc.runtime.start import report

    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: pulsarfunc check PATH[:handler]\n\n{DISCOVERY_RULE}\n{ACCEPTED_FORMS}")
        return 0
    if len(argv) != 1:
        problem = (
            "`pulsarfunc check` needs PATH[:handler]"
            if not argv
            else (f"`pulsarfunc check` takes one PATH[:handler], got {len(argv)} arguments")
        )
        return _usage_error(problem, "pulsarfunc check ./myfunc (--help: how it is found)")
    try:
        loaded = load(argv[0])
    except Exception as exc:
        return report(exc, debug=False)
    try:
        handler = inspect_handler(loaded.obj, where=loaded.where)
    except HandlerError as exc:  # maybe a window function's (list[Record] items)
        try:
            window = inspect_handler(loaded.obj, where=loaded.where, window=True)
        except HandlerError:
            return report(exc, debug=False)
        print(f"ok: {loaded.where}: {window.describe()} (needs a windowConfig)")
        return 0
    print(f"ok: {loaded.where}: {handler.describe()}")
    if handler.takes_input and handler.input_codec.name.startswith("JSON list"):
        window = inspect_handler(loaded.obj, where=loaded.where, window=True)  # the same input
        print(f"  with a windowConfig: {window.describe()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pulsarfunc` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("--version", "version"):
        print(f"pulsarfunc {__version__}")
        return 0
    if command == "run":
        from pulsarfunc.runtime.start import hard_exit

        hard_exit(_run(rest))  # see hard_exit: the client's threads must not outlive us
    if command == "check":
        return _check(rest)
    if command == "manifest":  # pure: needs only the runtime's dependencies
        from pulsarfunc.builder import manifest

        return manifest.main(rest)
    if command in ("build", "init"):
        if missing := missing_builder_modules():
            print(
                f"pulsarfunc: error: `pulsarfunc {command}` needs the builder extra "
                f"(missing {', '.join(missing)}): pip install 'pulsarfunc[builder]'",
                file=sys.stderr,
            )
            return 2
        from pulsarfunc.builder import commands

        return commands.build_main(rest) if command == "build" else commands.init_main(rest)
    return _usage_error(
        f"unknown command {command!r}", "commands: run, check, build, init, manifest (--help)"
    )
