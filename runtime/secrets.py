"""Secrets for `context.get_secret`: from the configured secrets map, env vars or files.

A secrets-map entry is one of
    "literal"                         the value itself (Pulsar's ClearTextSecretsProvider)
    {"env": "VAR"}                    an environment variable
    {"file": "/run/secrets/x"}        a file's content (trailing newline dropped)
    {"path": "/etc/s", "key": "k"}    a file `path/key`, as Kubernetes mounts a Secret
A name missing from the map is looked up as an environment variable of the same name
(Pulsar's EnvironmentBasedSecretsProvider).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class SecretsMap:
    """A SecretsProvider over the resolved secrets map and the process environment."""

    def __init__(self, secrets: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self._secrets = dict(secrets)
        self._env = dict(env)

    def __call__(self, name: str) -> str | None:
        spec = self._secrets.get(name)
        if spec is None:
            return self._env.get(name)
        if isinstance(spec, str):
            return spec
        if isinstance(spec, Mapping):
            if "env" in spec:
                return self._env.get(str(spec["env"]))
            if "file" in spec:
                return _read(Path(str(spec["file"])))
            if "path" in spec:
                return _read(Path(str(spec["path"])) / str(spec.get("key", name)))
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except OSError:
        return None
