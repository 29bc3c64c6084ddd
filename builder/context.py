"""A deterministic Docker build context: the same inputs always give the same tar bytes.

Entries are sorted by name; every entry has the same mtime (SOURCE_DATE_EPOCH, default 0),
uid/gid 0 with empty owner names, and normalised modes (0755 for directories and executable
files, 0644 otherwise). Parent directories are written explicitly, so `COPY dir/ /` recreates
them with these fixed attributes instead of the build's wall-clock time.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

__all__ = ["BuildContext"]


@dataclass(frozen=True)
class _Entry:
    kind: bytes  # a tarfile type: REGTYPE, DIRTYPE or SYMTYPE
    mode: int
    source: Path | None = None
    data: bytes | None = None
    link: str = ""


class BuildContext:
    """Collects files under tar names, then writes them as one reproducible tar stream."""

    def __init__(self, mtime: int = 0) -> None:
        self.mtime = mtime
        self._entries: dict[str, _Entry] = {}

    def _add(self, name: str, entry: _Entry) -> None:
        clean = PurePosixPath(name.lstrip("/")).as_posix()
        if clean in ("", "."):
            raise ValueError(f"invalid tar entry name {name!r}")
        for parent in PurePosixPath(clean).parents:
            if str(parent) != ".":
                self._entries.setdefault(str(parent), _Entry(tarfile.DIRTYPE, 0o755))
        self._entries[clean] = entry

    def add_file(self, name: str, source: Path, mode: int = 0o644) -> None:
        """Add the host file `source` as `name` (contents read when the tar is written)."""
        self._add(name, _Entry(tarfile.REGTYPE, mode, source=source))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add generated content, e.g. a rendered Dockerfile."""
        self._add(name, _Entry(tarfile.REGTYPE, mode, data=data))

    def add_tree(self, prefix: str, directory: Path) -> None:
        """Add every file, directory and symlink under `directory` below `prefix`."""
        self._add(prefix, _Entry(tarfile.DIRTYPE, 0o755))
        for current, dirnames, filenames in os.walk(directory):
            dirnames.sort()
            here = Path(current)
            rel = here.relative_to(directory).as_posix()
            base = prefix if rel == "." else f"{prefix}/{rel}"
            for name in dirnames:
                if (here / name).is_symlink():
                    self._add(f"{base}/{name}", _symlink(here / name))
                else:
                    self._add(f"{base}/{name}", _Entry(tarfile.DIRTYPE, 0o755))
            for name in sorted(filenames):
                path = here / name
                if path.is_symlink():
                    self._add(f"{base}/{name}", _symlink(path))
                else:
                    self._add(f"{base}/{name}", _Entry(tarfile.REGTYPE, _mode(path), source=path))

    def names(self) -> list[str]:
        """All entry names in the order they are written."""
        return sorted(self._entries)

    def write(self, fileobj: IO[bytes]) -> None:
        """Write the tar stream to `fileobj`."""
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in self.names():
                entry = self._entries[name]
                info = tarfile.TarInfo(name)
                info.type = entry.kind
                info.mode = entry.mode
                info.mtime = self.mtime
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if entry.kind == tarfile.SYMTYPE:
                    info.linkname = entry.link
                    tar.addfile(info)
                elif entry.kind == tarfile.DIRTYPE:
                    tar.addfile(info)
                else:
                    with _content(entry) as content:
                        info.size = _size(entry)
                        tar.addfile(info, content)

    def to_bytes(self) -> bytes:
        """The whole tar in memory (small contexts and tests)."""
        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()


def _mode(path: Path) -> int:
    return 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644


def _symlink(path: Path) -> _Entry:
    return _Entry(tarfile.SYMTYPE, 0o777, link=os.readlink(path))


def _size(entry: _Entry) -> int:
    if entry.data is not None:
        return len(entry.data)
    assert entry.source is not None
    return entry.source.stat().st_size


@contextmanager
def _content(entry: _Entry) -> Iterator[IO[bytes]]:
    """An entry's content as a binary stream (in-memory bytes or the host file)."""
    if entry.data is not None:
        yield io.BytesIO(entry.data)
        return
    assert entry.source is not None
    with entry.source.open("rb") as stream:
        yield stream
