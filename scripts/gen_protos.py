#!/usr/bin/env python3
"""Regenerate protos/Function_pb2.py and Function_pb2.pyi from the committed Function.proto.

The generated files are committed so that function images need no protoc; a unit test calls
`stale()` to prove they are still what the committed .proto generates with the dev venv's
grpcio-tools.

    python scripts/gen_protos.py               rewrite the generated files in protos/
    python scripts/gen_protos.py --check       exit 1 (and name them) if they are out of date
    python scripts/gen_protos.py --from-jar J  first copy Function.proto out of Pulsar's
                                               lib/org.apache.pulsar-pulsar-functions-proto-*.jar

The generated module checks the protobuf runtime's version at import: keep the lower bound of
`protobuf` in pyproject.toml at least the "Protobuf Python Version" in Function_pb2.py's header.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent.parent / "protos"
PROTO_FILES = ("Function.proto",)  # Function.proto imports nothing
GENERATED = ("Function_pb2.py", "Function_pb2.pyi")


def generate(out_dir: Path, protos_dir: Path = PROTOS) -> list[Path]:
    """Compile the .proto files in `protos_dir` into `out_dir`; return the generated files."""
    # dev-only dependency (no type stubs): function images never regenerate
    from grpc_tools import protoc  # type: ignore[import-untyped]

    args = [
        "protoc",
        f"-I{protos_dir}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)} in {protos_dir}")
    return [out_dir / name for name in GENERATED]


def stale(protos_dir: Path = PROTOS) -> list[str]:
    """Names of committed generated files that a fresh generation differs from (or lacks)."""
    with tempfile.TemporaryDirectory(prefix="pulsarfunc-protos-") as tmp:
        return [
            fresh.name
            for fresh in generate(Path(tmp), protos_dir)
            if not (protos_dir / fresh.name).is_file()
            or (protos_dir / fresh.name).read_bytes() != fresh.read_bytes()
        ]


def copy_from_jar(jar: Path, protos_dir: Path = PROTOS) -> None:
    """Replace the committed .proto files with the ones inside a pulsar-functions-proto jar."""
    with zipfile.ZipFile(jar) as archive:
        for name in PROTO_FILES:
            (protos_dir / name).write_bytes(archive.read(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date files")
    parser.add_argument("--from-jar", type=Path, metavar="JAR", help="take Function.proto from JAR")
    args = parser.parse_args(argv)
    if args.from_jar:
        copy_from_jar(args.from_jar)
    if args.check:
        outdated = stale()
        for name in outdated:
            print(f"protos/{name} is out of date: run scripts/gen_protos.py", file=sys.stderr)
        return 1 if outdated else 0
    with tempfile.TemporaryDirectory(prefix="pulsarfunc-protos-") as tmp:
        for fresh in generate(Path(tmp)):
            shutil.copyfile(fresh, PROTOS / fresh.name)
            print(f"wrote protos/{fresh.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
