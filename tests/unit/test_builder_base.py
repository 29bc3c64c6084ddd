"""The runtime base: what goes into it, its key, and superseded dev bases untagged."""

from __future__ import annotations

from typing import Any, cast

from pulsarfunc.builder.base import _untag_older, base_key, runtime_files
from pulsarfunc.builder.docker_engine import Engine
from pulsarfunc.builder.wheels import Target

TARGET = Target("3.11", "manylinux_2_28_x86_64")


def test_runtime_files_exclude_the_builder_and_templates() -> None:
    names = [name for name, _ in runtime_files()]
    assert "__init__.py" in names
    assert "_version.py" in names
    assert any(name.startswith("runtime/") for name in names)
    assert not any(name.startswith(("builder/", "templates/", "tests/")) for name in names)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_key_depends_on_base_image_target_and_pins() -> None:
    key = base_key("sha256:a", TARGET, ("pulsar-client==3.13.0",))
    assert key == base_key("sha256:a", TARGET, ("pulsar-client==3.13.0",))
    assert key != base_key("sha256:b", TARGET, ("pulsar-client==3.13.0",))
    assert key != base_key("sha256:a", Target("3.12", TARGET.platform), ("pulsar-client==3.13.0",))
    assert key != base_key("sha256:a", TARGET, ("pulsar-client==3.12.0",))


class _Engine:
    def __init__(self, tags: list[str]) -> None:
        self._tags = tags
        self.removed: list[str] = []

    def tags(self, repository: str) -> list[str]:
        return [t for t in self._tags if t.startswith(repository + ":")]

    def remove(self, ref: str) -> bool:
        self.removed.append(ref)
        return True


def test_superseded_bases_of_the_same_release_and_python_are_untagged() -> None:
    engine = _Engine(
        [
            "pulsarfunc/runtime:0.1.0-py3.11",
            "pulsarfunc/runtime:0.1.0-py3.11-aaaa",
            "pulsarfunc/runtime:0.1.0-py3.11-bbbb",
            "pulsarfunc/runtime:0.1.0-py3.12-cccc",
            "pulsarfunc/runtime:0.0.9-py3.11-dddd",
        ]
    )
    fake: Any = engine
    _untag_older(
        cast(Engine, fake),
        "pulsarfunc/runtime:0.1.0-py3.11-bbbb",
        "pulsarfunc/runtime:0.1.0-py3.11-",
    )
    assert engine.removed == ["pulsarfunc/runtime:0.1.0-py3.11-aaaa"]
