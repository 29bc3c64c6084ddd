"""The committed Function_pb2 is what Function.proto generates, and suits our protobuf floor."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from google.protobuf import json_format

from pulsarfunc.protos import Function_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def _gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_protos", module)
    spec.loader.exec_module(module)
    return module


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_generated_files_are_current() -> None:
    stale = _gen_protos().stale()
    assert stale == [], f"out of date: {stale}; run python scripts/gen_protos.py"


def test_stale_detects_an_edited_generated_file(tmp_path: Path) -> None:
    gen = _gen_protos()
    for name in ("Function.proto", *gen.GENERATED):
        (tmp_path / name).write_bytes((gen.PROTOS / name).read_bytes())
    assert gen.stale(tmp_path) == []
    (tmp_path / "Function_pb2.pyi").write_text("# edited\n")
    (tmp_path / "Function_pb2.py").unlink()
    assert sorted(gen.stale(tmp_path)) == ["Function_pb2.py", "Function_pb2.pyi"]


def test_protobuf_floor_is_at_least_the_gencode_version() -> None:
    """Function_pb2 refuses runtimes older than its gencode: pyproject must not allow them."""
    header = (ROOT / "protos" / "Function_pb2.py").read_text()
    gencode = re.search(r"Protobuf Python Version: ([\d.]+)", header)
    assert gencode is not None
    floor = re.search(r'"protobuf>=([\d.]+)', (ROOT / "pyproject.toml").read_text())
    assert floor is not None
    assert _version(floor.group(1)) >= _version(gencode.group(1))


def test_messages_are_pulsars() -> None:
    """Package `proto`, the field numbers the worker relies on, and the JSON names it prints."""
    details = pb.FunctionDetails.DESCRIPTOR
    assert details.full_name == "proto.FunctionDetails"
    assert details.fields_by_name["secretsMap"].number == 16
    assert pb.SourceSpec.DESCRIPTOR.fields_by_name["negativeAckRedeliveryDelayMs"].number == 13
    assert pb.SinkSpec.DESCRIPTOR.fields_by_name["serDeClassName"].json_name == "serDeClassName"
    parsed = json_format.Parse(
        '{"processingGuarantees": "MANUAL", "source": {"timeoutMs": "30000"}}',
        pb.FunctionDetails(),
    )
    assert parsed.processingGuarantees == pb.MANUAL
    assert parsed.source.timeoutMs == 30000
