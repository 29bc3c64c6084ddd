"""The `pulsarfunc` command: run, check (runtime); build, init (builder, imported lazily).

The runtime commands never import the builder, so they work inside a function image.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pulsarfunc._version import __version__

USAGE = """\
usage: pulsarfunc COMMAND [ARGS]

commands:
  run PATH[:handler] [flags]   run a function locally against a broker (LocalRun)
  check PATH[:handler]         validate a handler only; prints the form found (exit 0 or 2)
  build PATH -t TAG [...]      build a function into one self-contained image
  init NAME                    scaffold a new function directory
  manifest IMAGE [...]         Kubernetes Deployment and Function Mesh resource for an image

`pulsarfunc COMMAND --help` shows a command's flags. Exit codes: 0 success, 2 user error
(bad handler, flag or config), 1 runtime failure.
"""


def _run(argv: Sequence[str]) -> int:
    from pulsarfunc.runtime.discovery import load
    from pulsarfunc.runtime.options import build_parser
    from pulsarfunc.runtime.resolve import launch
    from pulsarfunc.runtime.start import main_with, report

    if not argv or argv[0] in ("-h", "--help"):
        parser = build_parser("pulsarfunc run PATH[:handler]")
        parser.print_help()
        return 0 if argv else 2
    ref, flags = argv[0], list(argv[1:])
    if ref.startswith("-"):
        print(
            f"pulsarfunc: error: expected PATH[:handler] first, found flag {ref!r}\n"
            "  hint: pulsarfunc run ./myfunc --inputs IN --output OUT",
            file=sys.stderr,
        )
        return 2
    try:
        loaded = load(ref)
    except Exception as exc:
        return report(exc, debug=launch(flags, os.environ).debug)
    return main_with(loaded.obj, flags, os.environ, where=loaded.where)


def _check(argv: Sequence[str]) -> int:
    from pulsarfunc.runtime.discovery import load
    from pulsarfunc.runtime.errors import HandlerError
    from pulsarfunc.runtime.handler import ACCEPTED_FORMS, inspect_handler
    from pulsarfunc.runtime.start import report

    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: pulsarfunc check PATH[:handler]\n\n" + ACCEPTED_FORMS)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
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
    if command in ("build", "init", "manifest"):
        try:
            from pulsarfunc.builder import commands, manifest
        except ImportError as exc:
            print(
                f"pulsarfunc: error: `{command}` needs the builder: {exc}\n"
                "  hint: pip install 'pulsarfunc[builder]'",
                file=sys.stderr,
            )
            return 2
        if command == "manifest":
            return manifest.main(rest)
        return commands.build_main(rest) if command == "build" else commands.init_main(rest)
    print(f"pulsarfunc: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
