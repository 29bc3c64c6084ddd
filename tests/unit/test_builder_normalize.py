"""Image config normalisation: a reproducible id from layers, config and commands only."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pytest

from pulsarfunc.builder.normalize import history_layers, normalize

LAYERS = ["sha256:" + c * 64 for c in "abc"]


def _inspect(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Id": "sha256:" + "9" * 64,
        "Architecture": "amd64",
        "Os": "linux",
        "Created": "2026-11-28T16:06:41.628362764Z",
        "Container": "1e84ed69552b",
        "Config": {
            "Env": ["PATH=/usr/bin"],
            "Entrypoint": ["python3", "/opt/pulsarfunc/entrypoint.py"],
            "User": "10001:10001",
            "Image": "sha256:" + "7" * 64,
            "Labels": {"io.pulsarfunc.handler": "/app/handler.py:handler"},
        },
        "RootFS": {"Type": "layers", "Layers": LAYERS},
    }
    base.update(overrides)
    return base


def _history(created: int) -> list[dict[str, Any]]:
    """Newest first, as the engine returns it."""
    oldest_first = [
        {"CreatedBy": "", "Comment": "Imported from -", "Size": 212_000_000},
        {"CreatedBy": "/bin/sh -c #(nop)  ENV PYTHONDONTWRITEBYTECODE=1", "Size": 0},
        {"CreatedBy": "/bin/sh -c #(nop) COPY dir:1 in / ", "Size": 2_000_000},
        {"CreatedBy": "/bin/sh -c #(nop) COPY dir:2 in / ", "Size": 1_900},
        {"CreatedBy": '/bin/sh -c ["python3", "/opt/pulsarfunc/check.py"]', "Size": 0},
        {"CreatedBy": "/bin/sh -c #(nop)  USER 10001:10001", "Size": 0},
    ]
    return [{**e, "Created": created + i} for i, e in enumerate(oldest_first)][::-1]


def test_build_times_do_not_change_the_id() -> None:
    first = normalize(_inspect(), _history(1_000), epoch=0, repo_tag="fn:dev")
    later = normalize(
        _inspect(Created="2027-01-01T00:00:00Z", Container="ffff"),
        _history(99_999),
        epoch=0,
        repo_tag="other:tag",
    )
    assert first.image_id == later.image_id
    assert first.image_id.startswith("sha256:")


def test_epoch_and_layers_do_change_the_id() -> None:
    first = normalize(_inspect(), _history(0), epoch=0, repo_tag="fn:dev")
    epoch = normalize(_inspect(), _history(0), epoch=1_700_000_000, repo_tag="fn:dev")
    code = normalize(
        _inspect(RootFS={"Layers": [*LAYERS[:2], "sha256:" + "d" * 64]}),
        _history(0),
        epoch=0,
        repo_tag="fn:dev",
    )
    assert len({first.image_id, epoch.image_id, code.image_id}) == 3


def test_config_is_canonical_and_archive_loads_it_under_the_tag() -> None:
    image = normalize(_inspect(), _history(0), epoch=0, repo_tag="fn:dev")
    config = json.loads(image.config)
    assert config["created"] == "1970-01-01T00:00:00Z"
    assert "container" not in config
    assert "Image" not in config["config"]
    assert config["rootfs"]["diff_ids"] == LAYERS
    assert [bool(h.get("empty_layer")) for h in config["history"]] == [
        False,
        True,
        False,
        False,
        True,
        True,
    ]
    with tarfile.open(fileobj=io.BytesIO(image.archive)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        stored = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["fn:dev"]
    assert len(manifest[0]["Layers"]) == 3
    assert stored == image.config


def test_undecided_entries_resolve_by_layer_count() -> None:
    entries = [
        {"CreatedBy": "", "Comment": "Imported from -", "Size": 5},
        {"CreatedBy": "/bin/sh -c mkdir /x", "Size": 0},  # a RUN that made an empty-size layer
    ]
    assert history_layers(entries, 2) == [True, True]
    assert history_layers(entries, 1) == [True, False]
    with pytest.raises(ValueError, match="cannot match"):
        history_layers(entries, 3)


def test_buildkit_style_history_is_understood() -> None:
    entries = [
        {"CreatedBy": "# debian.sh", "Comment": "debuerreotype", "Size": 74_000_000},
        {"CreatedBy": "ENV PATH=/usr/local/bin", "Comment": "buildkit.dockerfile.v0", "Size": 0},
        {"CreatedBy": "RUN /bin/sh -c set -eux; apt-get", "Size": 3_000_000},
        {"CreatedBy": 'CMD ["python3"]', "Size": 0},
    ]
    assert history_layers(entries, 2) == [True, False, True, False]


def test_known_layer_counts_settle_what_commands_cannot() -> None:
    # A pulled base (older entries unknown), then local classic steps whose images the engine
    # still has: WORKDIR made a layer here (it created /app), the RUN made none.
    entries = [
        {"CreatedBy": "# debian.sh", "Comment": "debuerreotype", "Size": 74_000_000},
        {"CreatedBy": 'CMD ["python3"]', "Size": 0},
        {"CreatedBy": "/bin/sh -c #(nop) WORKDIR /app", "Size": 0},
        {"CreatedBy": "/bin/sh -c python3 -c 'print(1)'", "Size": 0},
        {"CreatedBy": "/bin/sh -c #(nop) COPY dir:1 in / ", "Size": 10},
    ]
    counts = [None, 1, 2, 2, 3]
    assert history_layers(entries, 3, counts) == [True, False, True, False, True]
    with pytest.raises(ValueError, match="accounts for 3 layers"):
        history_layers(entries, 4, counts)
