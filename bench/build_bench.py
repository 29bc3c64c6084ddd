"""Build benchmark (not a test): pulsarfunc build vs a plain pip-in-the-build Dockerfile.

Measured side by side in one run, on the same function (examples/msgsize: a binary-wheel
dependency) and the same Python base image:

  cold build        no layer cache for the function (--no-cache), empty wheel cache
  warm rebuild      after a code-only change (one line of handler.py), caches as left
  changed layers    bytes a code-only change adds (what a push or pull has to move)
  image size

The plain Dockerfile is what most projects write: COPY the directory, then pip install in a RUN.
Containers here cannot reach PyPI, so its pip installs from a wheelhouse inside the context
(pip itself runs from its wheel): its figures leave out the download, a lower bound in its favour.
pulsarfunc's runtime base (built once per release, shared by every function) is timed apart.

Usage: PULSARFUNC_BASE_IMAGE=pulsarfunc-local/python:3.11 .venv/bin/python bench/build_bench.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "msgsize"
PLAIN_DOCKERFILE = """\
FROM {base}
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=/opt/site
WORKDIR /app
COPY . /app
RUN python3 /app/{pip}/pip install --quiet --no-index --find-links /app/wheelhouse \\
    --target /opt/site -r requirements.txt {runtime}
CMD ["python3", "-c", "import handler"]
"""


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    return result


def timed(command: list[str], **env: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = run(command, **env)
    return time.perf_counter() - started, result.stdout


def image_size(tag: str) -> int:
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).stdout)


def top_layer_sizes(tag: str, count: int) -> int:
    """Bytes of the `count` newest non-empty history entries (the layers a code edit remakes)."""
    command = ["docker", "history", "--no-trunc", "--human=false", "--format", "{{json .}}", tag]
    sizes = []
    for line in run(command).stdout.splitlines():
        entry = json.loads(line)
        if "#(nop)" in entry["CreatedBy"] and " COPY " not in entry["CreatedBy"]:
            continue
        sizes.append(int(entry["Size"]))
    return sum(sizes[:count])


def edit(handler: Path, n: int) -> None:
    handler.write_text(handler.read_text() + f"\n# edit {n}\n")


def pulsarfunc_figures(work: Path, base: str) -> dict[str, float]:
    function = work / "pf" / "msgsize"
    shutil.copytree(EXAMPLE, function)
    cache = str(work / "pf-cache")
    cli = [sys.executable, "-m", "pulsarfunc", "build", str(function), "--json", "-q"]
    env = {"PULSARFUNC_CACHE": cache, "PULSARFUNC_BASE_IMAGE": base}
    base_s, _ = timed([*cli, "-t", "bench-pf:base", "--rebuild-base"], **env)
    shutil.rmtree(cache)
    cold_s, out = timed([*cli, "-t", "bench-pf:cold", "--no-cache"], **env)
    edit(function / "handler.py", 1)
    warm_s, out = timed([*cli, "-t", "bench-pf:warm"], **env)
    summary = json.loads(out)
    code = next(layer for layer in summary["layers"] if layer["role"] == "code")
    deps = next(layer for layer in summary["layers"] if layer["role"] == "dependencies")
    return {
        "base_s": base_s,
        "cold_s": cold_s,
        "warm_s": warm_s,
        "changed_bytes": code["size"],
        "deps_reused": float(deps["reused"]),
        "image_bytes": summary["size"],
    }


def plain_figures(work: Path, base: str) -> dict[str, float]:
    context = work / "plain"
    shutil.copytree(EXAMPLE, context)
    runtime = run([sys.executable, "-c", PINS]).stdout.split()
    wheelhouse = context / "wheelhouse"
    run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
         "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
         "--implementation", "cp", "-d", str(wheelhouse), "-r",
         str(context / "requirements.txt"), *runtime]
    )  # fmt: skip
    pip_download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    run([*pip_download, "-d", str(context), "pip"])
    pip = next(context.glob("pip-*.whl")).name
    shutil.copytree(REPO / "runtime", context / "pulsarfunc" / "runtime")  # as if pip-installed
    (context / "Dockerfile").write_text(
        PLAIN_DOCKERFILE.format(base=base, pip=pip, runtime=" ".join(runtime))
    )
    build = ["docker", "build", "-q", str(context)]
    env = {"DOCKER_BUILDKIT": "0"}
    cold_s, _ = timed([*build, "--no-cache", "-t", "bench-plain:cold"], **env)
    edit(context / "handler.py", 1)
    warm_s, _ = timed([*build, "-t", "bench-plain:warm"], **env)
    return {
        "cold_s": cold_s,
        "warm_s": warm_s,
        "changed_bytes": top_layer_sizes("bench-plain:warm", 2),  # COPY . + RUN pip install
        "image_bytes": image_size("bench-plain:warm"),
    }


PINS = "from pulsarfunc.builder.wheels import runtime_requirements as r; print(*r())"


def main() -> None:
    base = os.environ.get("PULSARFUNC_BASE_IMAGE", "python:3.11-slim")
    with tempfile.TemporaryDirectory(prefix="pulsarfunc-bench-") as tmp:
        work = Path(tmp)
        pf = pulsarfunc_figures(work, base)
        plain = plain_figures(work, base)
    run(["docker", "rmi", "-f", *(f"bench-{k}" for k in
         ("pf:base", "pf:cold", "pf:warm", "plain:cold", "plain:warm"))])  # fmt: skip
    mb = 1000**2
    rows = [
        ("cold build (s)", plain["cold_s"], pf["cold_s"], "{:.1f}"),
        ("warm rebuild, code-only change (s)", plain["warm_s"], pf["warm_s"], "{:.1f}"),
        ("layers changed by a code edit (MB)", plain["changed_bytes"] / mb,
         pf["changed_bytes"] / mb, "{:.3f}"),
        ("image size (MB)", plain["image_bytes"] / mb, pf["image_bytes"] / mb, "{:.1f}"),
    ]  # fmt: skip
    print(f"function: examples/msgsize (msgpack), base image: {base}")
    first = pf["base_s"]
    print(f"pulsarfunc first build, runtime base included (once per release): {first:.1f} s")
    print(f"{'':38} {'plain Dockerfile':>17} {'pulsarfunc':>11} {'plain/pulsarfunc':>17}")
    for name, a, b, fmt in rows:
        ratio = f"{a / b:.1f}x" if b else "-"
        print(f"{name:38} {fmt.format(a):>17} {fmt.format(b):>11} {ratio:>17}")
    print(f"pulsarfunc dependency layer reused on the warm rebuild: {bool(pf['deps_reused'])}")


if __name__ == "__main__":
    main()
