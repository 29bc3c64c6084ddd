"""`pulsarfunc manifest`: a valid Deployment and Function Mesh Function for a function image."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pulsarfunc.builder.manifest import k8s_name, main
from pulsarfunc.runtime.resolve import resolve

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
K8S_VERSION = "1.30.0"
IMAGE = "registry.example/acme/word-count:1.2"
FLAGS = [
    "--service-url",
    "pulsar://pulsar.messaging.svc:6650",
    "--inputs",
    "persistent://acme/orders/in",
    "--topics-pattern",
    "persistent://acme/orders/audit-.*",
    "--output",
    "persistent://acme/orders/out",
    "--tenant",
    "acme",
    "--namespace",
    "orders",
    "--name",
    "word-count",
    "--log-topic",
    "persistent://acme/orders/logs",
    "--user-config",
    '{"mode": "strict"}',
    "--max-message-retries",
    "3",
    "--retain-key-ordering",
]


def manifest(*argv: str) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    docs = [d for d in yaml.safe_load_all(out.getvalue()) if d] if code == 0 else []
    return code, docs, err.getvalue()


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def closed(schema: Any) -> Any:
    """The schema with unknown fields refused where Kubernetes would silently prune them."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


FUNCTION_SCHEMA = closed(
    yaml.safe_load(
        (FIXTURES / "function-mesh" / "functions.compute.functionmesh.io.schema.yaml").read_text()
    )
)


def test_all_documents_validate_against_their_schemas() -> None:
    code, docs, err = manifest(IMAGE, *FLAGS, "--parallelism", "3", "--k8s-namespace", "fns")
    assert code == 0, err
    assert [d["kind"] for d in docs] == ["Deployment", "ConfigMap", "Function"]
    for doc in docs:
        if doc["kind"] == "Function":
            jsonschema.validate(doc, FUNCTION_SCHEMA)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validation_can_fail_on_a_misspelled_field() -> None:
    _, docs, _ = manifest(IMAGE, *FLAGS)
    by_kind = {d["kind"]: d for d in docs}
    by_kind["Function"]["spec"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate(by_kind["Function"], FUNCTION_SCHEMA)
    by_kind["Deployment"]["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(by_kind["Deployment"], K8S_VERSION, strict=True)


def test_deployment_replicas_probes_port_resources_and_args() -> None:
    code, docs, _ = manifest(IMAGE, *FLAGS, "--parallelism", "3", "--cpu", "0.5", "--ram", "512Mi")
    assert code == 0
    deployment = kinds(docs)["Deployment/word-count"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9094"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == IMAGE
    assert container["ports"] == [
        {"name": "http-metrics", "containerPort": 9094, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert container["resources"] == {
        "requests": {"cpu": "0.5", "memory": "512Mi"},
        "limits": {"cpu": "0.5", "memory": "512Mi"},
    }
    # the function flags, in the runtime's flag-table order, and the metrics port the probes use
    assert sorted(container["args"]) == sorted([*FLAGS, "--metrics-port", "9094"])


def test_the_container_args_mean_to_the_runtime_what_they_meant_to_manifest() -> None:
    _, docs, _ = manifest(IMAGE, *FLAGS)
    args = kinds(docs)["Deployment/word-count"]["spec"]["template"]["spec"]["containers"][0]
    config = resolve(args["args"], {})
    assert config.fqfn == "acme/orders/word-count"
    assert config.metrics_port == 9094
    assert config.retain_key_ordering
    assert config.user_config == {"mode": "strict"}


def test_function_mesh_function_carries_the_same_function() -> None:
    _, docs, _ = manifest(IMAGE, *FLAGS, "--parallelism", "2", "--handler", "/app/wc.py:count")
    function = kinds(docs)["Function/word-count"]
    spec = function["spec"]
    assert function["apiVersion"] == "compute.functionmesh.io/v1alpha1"
    assert spec["replicas"] == 2
    assert (spec["tenant"], spec["namespace"], spec["name"]) == ("acme", "orders", "word-count")
    assert spec["input"] == {
        "topics": ["persistent://acme/orders/in"],
        "topicPattern": "persistent://acme/orders/audit-.*",
    }
    assert spec["output"]["topic"] == "persistent://acme/orders/out"
    assert spec["logTopic"] == "persistent://acme/orders/logs"
    assert spec["funcConfig"] == {"mode": "strict"}
    assert spec["maxMessageRetry"] == 3
    assert spec["retainKeyOrdering"] is True
    assert spec["processingGuarantee"] == "atleast_once"
    assert spec["python"] == {"py": "/app/wc.py"}
    assert spec["className"] == "/app/wc.py:count"
    pulsar_config = kinds(docs)["ConfigMap/word-count-pulsar"]["data"]
    assert spec["pulsar"] == {"pulsarConfig": "word-count-pulsar"}
    assert pulsar_config == {
        "brokerServiceURL": "pulsar://pulsar.messaging.svc:6650",
        "webServiceURL": "http://pulsar.messaging.svc:8080",
    }


def test_kind_selects_the_documents() -> None:
    assert [d["kind"] for d in manifest(IMAGE, *FLAGS, "--kind", "deployment")[1]] == ["Deployment"]
    assert [d["kind"] for d in manifest(IMAGE, *FLAGS, "--kind", "function-mesh")[1]] == [
        "ConfigMap",
        "Function",
    ]


def test_credentials_are_never_written_only_secret_references() -> None:
    code, docs, err = manifest(IMAGE, *FLAGS, "--auth-token", "eyJhbGciOi")
    assert code == 2
    assert "--auth-token-secret" in err
    assert docs == []

    code, docs, _ = manifest(IMAGE, *FLAGS, "--auth-token-secret", "pulsar-jwt")
    assert code == 0
    container = kinds(docs)["Deployment/word-count"]["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [
        {
            "name": "PULSARFUNC_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "pulsar-jwt", "key": "token"}},
        }
    ]
    kubernetes_validate.validate(kinds(docs)["Deployment/word-count"], K8S_VERSION, strict=True)


def test_function_config_yaml_ships_as_a_config_map_with_its_parallelism(tmp_path: Path) -> None:
    config_file = tmp_path / "word-count.yaml"
    config_file.write_text(
        "tenant: acme\nnamespace: orders\nname: word-count\n"
        "inputs: [persistent://acme/orders/in]\nparallelism: 4\n"
        "resources: {cpu: 0.25, ram: 268435456}\n"
    )
    code, docs, err = manifest(IMAGE, "--function-config", str(config_file), "--kind", "deployment")
    assert code == 0, err
    config_map = kinds(docs)["ConfigMap/word-count-config"]
    assert config_map["data"]["function-config.yaml"] == config_file.read_text()
    deployment = kinds(docs)["Deployment/word-count"]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 4
    assert pod["containers"][0]["args"][:2] == [
        "--function-config",
        "/etc/pulsarfunc/function-config.yaml",
    ]
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "0.25", "memory": "268435456"}
    assert pod["volumes"] == [
        {"name": "function-config", "configMap": {"name": "word-count-config"}}
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_at_file_values_are_inlined(tmp_path: Path) -> None:
    user_config = tmp_path / "user.json"
    user_config.write_text(json.dumps({"threshold": 10}) + "\n")
    _, docs, _ = manifest(IMAGE, "--inputs", "in", "--user-config", f"@{user_config}")
    args = kinds(docs)["Deployment/word-count"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--user-config") + 1] == '{"threshold": 10}'


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--cpu", "lots"], "--cpu 'lots' is not a Kubernetes quantity"),
        (["--metrics-port", "0"], "--metrics-port 0"),
        (["--processing-guarantees", "sometimes"], "sometimes"),
        (["--inputz", "x"], "did you mean --inputs"),
    ],
)
def test_bad_flags_are_user_errors(argv: list[str], says: str) -> None:
    code, _, err = manifest(IMAGE, "--inputs", "in", *argv)
    assert code == 2
    assert says in err


def test_effectively_once_with_replicas_warns() -> None:
    code, _, err = manifest(
        IMAGE, "--inputs", "in", "--processing-guarantees", "EFFECTIVELY_ONCE", "--parallelism", "2"
    )
    assert code == 0
    assert "warning: effectively-once" in err


def test_names_become_kubernetes_names() -> None:
    assert k8s_name("Word_Count.v2") == "word-count-v2"
    assert len(k8s_name("x" * 100)) == 63


def test_a_missing_service_url_is_warned_about() -> None:
    assert "no --service-url" in manifest(IMAGE, "--inputs", "in")[2]
    assert "no --service-url" not in manifest(IMAGE, *FLAGS)[2]


def test_schemas_and_record_classes_reach_function_mesh_and_validate() -> None:
    schema_inputs = json.dumps(
        {"persistent://acme/orders/in": '{"schemaType": "AVRO", "schemaProperties": {"a": "b"}}'}
    )
    _, docs, _ = manifest(
        IMAGE, *FLAGS, "--custom-schema-inputs", schema_inputs,
        "--input-type-class-name", "fn.Order", "--output-schema-type", "AVRO",
        "--output-type-class-name", "fn.Shipped",
    )  # fmt: skip
    function = kinds(docs)["Function/word-count"]
    jsonschema.validate(function, FUNCTION_SCHEMA)
    spec = function["spec"]
    assert spec["input"]["sourceSpecs"]["persistent://acme/orders/in"] == {
        "schemaType": "AVRO",
        "schemaProperties": {"a": "b"},
    }
    assert spec["input"]["typeClassName"] == "fn.Order"
    assert (spec["output"]["sinkSchemaType"], spec["output"]["typeClassName"]) == (
        "AVRO",
        "fn.Shipped",
    )
