"""Pulsar's own Python-instance command line, run by pulsarfunc: for Function Mesh and Kubernetes.

Function Mesh and Pulsar's Kubernetes runtime start a Python function as

    python /pulsar/instances/python-instance/python_instance_main.py --function_details JSON
        --instance_id N --function_id ID --pulsar_serviceurl URL --metrics_port 9094 ...

Every pulsarfunc image has a file at that path that calls `main()`: the flags are translated
to pulsarfunc's own and the image's entrypoint runs with them, the handler built into the
image. So a pulsarfunc image drops into those runtimes unchanged. Flags that concern Pulsar's
process model (`--py`, the gRPC `--port`, log files, dependency installs) have no meaning here
and are accepted and ignored.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from pulsarfunc.runtime.errors import ConfigError
from pulsarfunc.runtime.options import parse_bool
from pulsarfunc.runtime.resolve import ENTRYPOINT, launch

__all__ = ["ENTRYPOINT", "main", "translate"]

# Pulsar flag -> pulsarfunc flag, for flags that take a value.
_VALUES = {
    "instance_id": "--instance-id",
    "function_id": "--function-id",
    "function_version": "--function-version",
    "pulsar_serviceurl": "--service-url",
    "client_auth_plugin": "--auth-plugin",
    "client_auth_params": "--auth-params",
    "tls_trust_cert_path": "--tls-trust-certs-file",
    "metrics_port": "--metrics-port",
    "logging_level": "--log-level",
    "cluster_name": "--cluster-name",
    "state_storage_serviceurl": "--state-storage-service-url",
}
# Pulsar's "true"/"false" flags -> pulsarfunc switches (read with every boolean's words).
_SWITCHES = {
    "tls_allow_insecure_connection": "--tls-allow-insecure",
    "hostname_verification_enabled": "--tls-hostname-verification",
}
# Accepted and ignored: Pulsar's process model, not a function's behaviour.
_IGNORED = (
    "py",
    "use_tls",  # the service URL's scheme (pulsar+ssl://) decides
    "port",
    "max_buffered_tuples",
    "logging_directory",
    "logging_file",
    "logging_config_file",
    "expected_healthcheck_interval",
    "secrets_provider",  # secrets come from env vars of the same name, as with Pulsar's default
    "secrets_provider_config",
    "install_usercode_dependencies",
    "dependency_repository",
    "extra_dependency_repository",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python_instance_main.py", add_help=False)
    for name in ("function_details", "config_file", *_VALUES, *_SWITCHES, *_IGNORED):
        parser.add_argument(f"--{name}", dest=name, default=None)
    return parser


def _with_config_file(values: dict[str, str | None]) -> dict[str, str | None]:
    """Merge Pulsar's `--config_file` ([DEFAULT] section); command-line flags win."""
    path = values.get("config_file")
    if not path:
        return values
    config = configparser.ConfigParser()
    if not config.read(path):
        raise ConfigError(f"--config_file {path}: cannot read it", "check the path")
    defaults = config["DEFAULT"]
    return {key: value or defaults.get(key) for key, value in values.items()}


def _strip_quotes(text: str) -> str:
    """Pulsar's instance strips one pair of single quotes around the JSON; so do we."""
    if text.startswith("'"):
        text = text[1:]
    if text.endswith("'"):
        text = text[:-1]
    return text


def translate(argv: Sequence[str]) -> list[str]:
    """Pulsar instance flags -> pulsarfunc flags (unknown flags: ConfigError naming them)."""
    known, unknown = _parser().parse_known_args(list(argv))
    if unknown:
        raise ConfigError(
            f"unknown Pulsar instance flag(s): {' '.join(unknown)}",
            "python_instance_main.py takes --function_details, --instance_id, --function_id, "
            "--function_version, --pulsar_serviceurl, --metrics_port, --cluster_name, ...",
        )
    values = _with_config_file(vars(known))
    out: list[str] = []
    details = values.get("function_details")
    if details:
        details = _strip_quotes(details)
        out += ["--function-details", details]
        out += _identity_flags(details)
    for name, flag in _VALUES.items():
        value = values.get(name)
        if value:
            out += [flag, value]
    for name, flag in _SWITCHES.items():
        if _switch(name, values.get(name)):
            out.append(flag)
    return out


def _switch(name: str, raw: str | None) -> bool:
    """A Pulsar "true"/"false" flag's value; unset or empty is false."""
    if not raw or not raw.strip():
        return False
    try:
        return parse_bool(raw)
    except ValueError:
        raise ConfigError(
            f"--{name} {raw!r}: not a boolean", f"--{name} takes true or false"
        ) from None


def _identity_flags(details: str) -> list[str]:
    """Tenant, namespace and name as flags: the FunctionDetails outrank the image's defaults."""
    try:
        doc = json.loads(details)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--function_details is not JSON: {exc}", "pass the FunctionDetails JSON text"
        ) from exc
    if not isinstance(doc, Mapping):
        raise ConfigError("--function_details must be a JSON object (FunctionDetails)")
    flags: list[str] = []
    for key in ("tenant", "namespace", "name"):
        if isinstance(doc.get(key), str) and doc[key]:
            flags += [f"--{key}", doc[key]]
    return flags


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Translate the flags, then become the image's entrypoint (same process, same PID)."""
    try:
        args = translate(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"pulsarfunc: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    entrypoint = launch(args, os.environ).entrypoint
    os.execv(sys.executable, [sys.executable, entrypoint, *args])
