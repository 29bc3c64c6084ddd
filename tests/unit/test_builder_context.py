"""The build context is reproducible: same inputs, same bytes, fixed metadata."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from pulsarfunc.builder.build import build_context
from pulsarfunc.builder.context import BuildContext
from pulsarfunc.builder.plan import BuildOptions, make_plan
from pulsarfunc.builder.render import FunctionFiles
from pulsarfunc.builder.wheels import StagedDir

FILES = FunctionFiles(dockerfile="FROM x\n", entrypoint="# e\n", check="# c\n")


def _tree(root: Path) -> Path:
    (root / "fn" / "pkg").mkdir(parents=True)
    (root / "fn" / "main.py").write_text("def handler(x): return x\n")
    (root / "fn" / "pkg" / "data.txt").write_text("data")
    (root / "fn" / "tool.sh").write_text("#!/bin/sh\n")
    (root / "fn" / "tool.sh").chmod(0o750)
    (root / "deps" / "lib").mkdir(parents=True)
    (root / "deps" / "lib" / "__init__.py").write_text("")
    return root


def _context_bytes(root: Path, epoch: int = 0) -> bytes:
    plan = make_plan(BuildOptions(path=root / "fn", tag="t", source_date_epoch=epoch))
    return build_context(plan, FILES, StagedDir(root / "deps", "k", cached=True)).to_bytes()


def test_same_inputs_give_identical_bytes_even_after_touching_files(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = _context_bytes(root)
    os.utime(root / "fn" / "main.py", (1_000_000, 1_000_000))
    (root / "fn" / "pkg" / "data.txt").chmod(0o600)
    assert _context_bytes(root) == first


def test_entries_are_sorted_with_fixed_metadata(tmp_path: Path) -> None:
    data = _context_bytes(_tree(tmp_path), epoch=1_700_000_000)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
        (1_700_000_000, 0, 0, "", "")
    }
    modes = {m.name: m.mode for m in members}
    assert modes["code/app/tool.sh"] == 0o755
    assert modes["code/app/main.py"] == 0o644
    assert modes["code/app/pkg"] == 0o755
    # parents are explicit, so `COPY code/ /` recreates /app with the fixed mtime, not "now"
    assert {"code", "code/app", "code/opt", "code/opt/pulsarfunc"} <= set(names)
    assert "deps/opt/pulsarfunc/deps/lib/__init__.py" in names
    assert {"Dockerfile", "code/opt/pulsarfunc/entrypoint.py", "code/opt/pulsarfunc/check.py"} <= (
        set(names)
    )


def test_symlinks_are_kept_as_links(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "real.txt").write_text("x")
    (tmp_path / "d" / "link.txt").symlink_to("real.txt")
    context = BuildContext()
    context.add_tree("t", tmp_path / "d")
    with tarfile.open(fileobj=io.BytesIO(context.to_bytes())) as tar:
        link = tar.getmember("t/link.txt")
    assert link.issym()
    assert link.linkname == "real.txt"
