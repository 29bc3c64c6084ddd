"""Give a classically built image a reproducible id (pure: dicts in, bytes out).

Docker 20.10's classic builder stamps wall-clock times, the build container's id and the
parent image's id into the image config, so two builds of identical layers get different
ids. This module rewrites the config canonically — every `created` set to SOURCE_DATE_EPOCH,
no container fields, keys sorted — and wraps it in a `docker load` archive that lists the
layers by diff id but carries none of them: the engine already has them, and `docker load`
only reads a layer it lacks. The image id (sha256 of the config) then depends only on the
layers, the runtime configuration and the history's commands.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = ["NormalizedImage", "history_layers", "normalize"]

_METADATA = re.compile(
    r"^(?:/bin/sh -c #\(nop\)\s+(?!COPY |ADD |WORKDIR )|"
    r"(?:ENV|CMD|LABEL|ARG|ENTRYPOINT|EXPOSE|USER|STOPSIGNAL|SHELL|VOLUME|HEALTHCHECK|"
    r"ONBUILD|MAINTAINER) )"
)


@dataclass(frozen=True)
class NormalizedImage:
    """A canonical image config, its id, and a layer-less archive that loads it."""

    image_id: str
    config: bytes
    archive: bytes


def _resolve(entries: Sequence[Mapping[str, Any]], layers: int) -> list[bool]:
    """Which of `entries` made a layer, knowing they made `layers` layers in all."""
    if len(entries) == 1 and layers in (0, 1):
        return [layers == 1]
    definite: list[bool | None] = []
    for entry in entries:
        created_by = str(entry.get("CreatedBy") or "")
        if int(entry.get("Size") or 0) > 0 or (not created_by and entry.get("Comment")):
            definite.append(True)
        elif _METADATA.match(created_by):
            definite.append(False)
        else:
            definite.append(None)  # e.g. a RUN or WORKDIR that may have written nothing
    known = sum(1 for d in definite if d)
    unknown = sum(1 for d in definite if d is None)
    if known == layers:
        return [bool(d) for d in definite]
    if known + unknown == layers:
        return [d is not False for d in definite]
    raise ValueError(
        f"cannot match {len(definite)} history entries to {layers} layers "
        f"({known} certain layers, {unknown} undecided)"
    )


def history_layers(
    history_oldest_first: Sequence[Mapping[str, Any]],
    layers: int,
    layer_counts: Sequence[int | None] | None = None,
) -> list[bool]:
    """For each history entry, whether it made a layer; raises ValueError when undecidable.

    The history API does not return `empty_layer`. Where an entry's image is still in the
    engine (every step of a local classic build is), `layer_counts` gives that image's number
    of layers, which settles it; the rest (e.g. a pulled base's older entries) is recovered
    from the commands (metadata makes no layer), the sizes and the number of layers left.
    """
    counts = list(layer_counts or [None] * len(history_oldest_first))
    result: list[bool] = []
    start, before = 0, 0
    for index, count in enumerate(counts):
        if count is not None:
            result += _resolve(history_oldest_first[start : index + 1], count - before)
            start, before = index + 1, count
    if start < len(history_oldest_first):
        result += _resolve(history_oldest_first[start:], layers - before)
    elif before != layers:
        raise ValueError(f"the history accounts for {before} layers, the image has {layers}")
    return result


def _timestamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize(
    inspect: Mapping[str, Any],
    history_newest_first: Sequence[Mapping[str, Any]],
    *,
    epoch: int,
    repo_tag: str,
    layer_counts: Sequence[int | None] | None = None,
) -> NormalizedImage:
    """The canonical config of an image from its `inspect` and `history`, loadable as `repo_tag`.

    `layer_counts` (oldest first, None where unknown) is passed on to `history_layers`.
    """
    diff_ids = list(inspect["RootFS"]["Layers"])
    history = list(reversed(history_newest_first))
    made_layer = history_layers(history, len(diff_ids), layer_counts)
    created = _timestamp(epoch)
    entries: list[dict[str, Any]] = []
    for entry, layer in zip(history, made_layer, strict=True):
        item: dict[str, Any] = {"created": created}
        if entry.get("CreatedBy"):
            item["created_by"] = entry["CreatedBy"]
        if entry.get("Comment"):
            item["comment"] = entry["Comment"]
        if not layer:
            item["empty_layer"] = True
        entries.append(item)
    runtime = {k: v for k, v in dict(inspect.get("Config") or {}).items() if k != "Image"}
    config: dict[str, Any] = {
        "architecture": inspect.get("Architecture", "amd64"),
        "os": inspect.get("Os", "linux"),
        "created": created,
        "config": runtime,
        "history": entries,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if inspect.get("Variant"):
        config["variant"] = inspect["Variant"]
    raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(raw).hexdigest()
    manifest = [
        {
            "Config": f"{digest}.json",
            "RepoTags": [repo_tag],
            "Layers": [f"{i:03d}/layer.tar" for i in range(len(diff_ids))],
        }
    ]
    archive = _tar(
        {f"{digest}.json": raw, "manifest.json": json.dumps(manifest, sort_keys=True).encode()}
    )
    return NormalizedImage(image_id=f"sha256:{digest}", config=raw, archive=archive)


def _tar(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()
