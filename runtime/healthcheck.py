"""`python3 -m pulsarfunc.runtime.healthcheck PROGRAM`: a function image's Docker HEALTHCHECK.

Docker runs the check beside the function, in the same container, but does not pass it the
function's flags. So the check finds the process running PROGRAM (the image's entrypoint),
reads that process's --metrics-port from its own argv and PULSARFUNC_* environment with the
runtime's own rules (flag over variable), and asks its `/readyz` on 127.0.0.1. Exit 0: ready;
1: not, saying why. No files are written, so it works on a read-only root filesystem.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from pulsarfunc.runtime.errors import PulsarFuncError
from pulsarfunc.runtime.options import build_parser, env_settings, flag_settings

TIMEOUT_S = 5.0


def processes(proc: Path = Path("/proc")) -> Iterator[tuple[list[str], dict[str, str]]]:
    """(argv, environment) of every process this user may read."""
    for entry in sorted(proc.glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or another user's
        env = dict(item.decode(errors="replace").partition("=")[::2] for item in environ if item)
        yield [a.decode(errors="replace") for a in argv if a], env


def find(
    program: str, found: Iterator[tuple[list[str], dict[str, str]]]
) -> tuple[list[str], dict[str, str]] | None:
    """The flags and environment of the first process whose argv runs `program`."""
    for argv, env in found:
        if program in argv[:2] and "pulsarfunc.runtime.healthcheck" not in argv:
            return argv[argv.index(program) + 1 :], env
    return None


def metrics_port(flags: Sequence[str], env: dict[str, str]) -> int | None:
    """--metrics-port as the function resolved it: its flag, else PULSARFUNC_METRICS_PORT."""
    settings = {**env_settings(env), **flag_settings(build_parser().parse_args(list(flags)))}
    setting = settings.get("metrics_port")
    return None if setting is None else int(setting.value)


def check(program: str, proc: Path = Path("/proc")) -> tuple[bool, str]:
    """(healthy, what was seen)."""
    target = find(program, processes(proc))
    if target is None:
        return False, f"no process runs {program}"
    flags, env = target
    try:
        port = metrics_port(flags, env)
    except PulsarFuncError as exc:
        return False, f"cannot read the function's configuration: {exc}"
    if not port:
        why = "is off" if port is None else "is 0 (a random port)"
        return False, f"--metrics-port {why}: set a fixed port for the health check"
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return True, f"{url}: {response.status} {response.read().decode().strip()}"
    except urllib.error.HTTPError as exc:
        body = exc.read().decode().strip()
        exc.close()
        return False, f"{url}: {exc.code} {body}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python3 -m pulsarfunc.runtime.healthcheck PROGRAM", file=sys.stderr)
        return 2
    healthy, seen = check(args[0])
    print(seen)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
