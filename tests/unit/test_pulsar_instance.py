"""Pulsar's python_instance_main.py flags mapped to pulsarfunc's (Function Mesh, Kubernetes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pulsarfunc.runtime.errors import ConfigError
from pulsarfunc.runtime.pulsar_instance import translate
from pulsarfunc.runtime.resolve import resolve

DETAILS = {
    "tenant": "acme",
    "namespace": "orders",
    "name": "enrich",
    "className": "handler.handler",
    "runtime": "PYTHON",
    "source": {"inputSpecs": {"persistent://acme/orders/in": {}}, "subscriptionType": "SHARED"},
    "sink": {"topic": "persistent://acme/orders/out"},
}

# What Function Mesh's controller puts on the command line (values as it renders them).
FUNCTION_MESH_ARGV = [
    "--py", "/pulsar/handler.py",
    "--logging_directory", "logs",
    "--logging_config_file", "/pulsar/conf/python_instance_logging.ini",
    "--instance_id", "2",
    "--function_id", "b1c5",
    "--function_version", "7",
    "--function_details", "'" + json.dumps(DETAILS) + "'",
    "--pulsar_serviceurl", "pulsar://broker.pulsar:6650",
    "--max_buffered_tuples", "100",
    "--port", "9093",
    "--metrics_port", "9094",
    "--expected_healthcheck_interval", "-1",
    "--client_auth_plugin", "org.apache.pulsar.client.impl.auth.AuthenticationToken",
    "--client_auth_params", "file:///etc/token",
    "--tls_allow_insecure_connection", "false",
    "--hostname_verification_enabled", "true",
    "--cluster_name", "prod",
]  # fmt: skip


def test_function_mesh_command_line_resolves_to_the_function_it_describes() -> None:
    config = resolve(translate(FUNCTION_MESH_ARGV), {"PULSARFUNC_NAME": "image-default"})
    assert (config.tenant, config.namespace, config.name) == ("acme", "orders", "enrich")
    assert config.input_topics == ("persistent://acme/orders/in",)
    assert config.output == "persistent://acme/orders/out"
    assert (config.instance_id, config.function_id, config.function_version) == (2, "b1c5", "7")
    assert config.service_url == "pulsar://broker.pulsar:6650"
    assert config.metrics_port == 9094
    assert config.cluster_name == "prod"
    assert config.auth.plugin == "org.apache.pulsar.client.impl.auth.AuthenticationToken"
    assert config.auth.params == "file:///etc/token"
    assert config.auth.tls_hostname_verification is True
    assert config.auth.tls_allow_insecure is False


def test_ignored_flags_leave_no_trace() -> None:
    args = translate(["--py", "x.py", "--port", "9093", "--logging_directory", "logs"])
    assert args == []


def test_the_state_storage_url_maps_to_pulsarfunc_s_flag() -> None:
    args = translate(["--state_storage_serviceurl", "bk://pulsar:4181"])
    assert args == ["--state-storage-service-url", "bk://pulsar:4181"]


def test_config_file_fills_what_the_command_line_leaves_out(tmp_path: Path) -> None:
    ini = tmp_path / "instance.conf"
    ini.write_text("[DEFAULT]\ninstance_id = 5\npulsar_serviceurl = pulsar://from-file:6650\n")
    args = translate(["--config_file", str(ini), "--pulsar_serviceurl", "pulsar://flag:6650"])
    assert args == ["--instance-id", "5", "--service-url", "pulsar://flag:6650"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--no_such_flag", "1"], "--no_such_flag"),
        (["--function_details", "{not json"], "--function_details"),
        (["--function_details", "[1, 2]"], "--function_details"),
    ],
)
def test_bad_flags_are_user_errors_naming_them(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        translate(argv)
    assert named in str(caught.value)
    assert caught.value.exit_code == 2
