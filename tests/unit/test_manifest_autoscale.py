"""`pulsarfunc manifest --autoscale`: KEDA ScaledObject and Function Mesh HPA, validated offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from test_manifest import FIXTURES, FUNCTION_SCHEMA, IMAGE, K8S_VERSION, closed, kinds, manifest

KEDA = FIXTURES / "keda"
SCALED_OBJECT_SCHEMA = closed(
    yaml.safe_load((KEDA / "keda.sh_scaledobjects.schema.yaml").read_text())
)
TRIGGER_AUTH_SCHEMA = closed(
    yaml.safe_load((KEDA / "keda.sh_triggerauthentications.schema.yaml").read_text())
)
BASE = [
    "--service-url",
    "pulsar://pulsar.messaging.svc:6650",
    "--tenant",
    "acme",
    "--namespace",
    "orders",
    "--name",
    "word-count",
    "--inputs",
    "persistent://acme/orders/in",
]


def validate(doc: dict[str, Any]) -> None:
    """Each document against its own schema: KEDA's CRDs, Function Mesh's, or Kubernetes'."""
    schemas = {
        "ScaledObject": SCALED_OBJECT_SCHEMA,
        "TriggerAuthentication": TRIGGER_AUTH_SCHEMA,
        "Function": FUNCTION_SCHEMA,
    }
    if doc["kind"] in schemas:
        jsonschema.validate(doc, schemas[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_deployment_gets_a_scaled_object_on_the_input_backlog() -> None:
    code, docs, err = manifest(
        IMAGE, *BASE, "--kind", "deployment", "--autoscale", "0:8", "--backlog-threshold", "500"
    )
    assert code == 0, err
    assert [d["kind"] for d in docs] == ["Deployment", "ScaledObject"]
    for doc in docs:
        validate(doc)
    deployment, scaled = docs
    assert "replicas" not in deployment["spec"]  # KEDA's HPA owns the count
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 8)
    assert spec["triggers"] == [
        {
            "type": "apache-pulsar",
            "metadata": {
                "adminURL": "http://pulsar.messaging.svc:8080",
                "topic": "persistent://acme/orders/in",
                "subscription": "acme/orders/word-count",  # Pulsar's default subscription
                "msgBacklogThreshold": "500",
                "isPartitionedTopic": "false",
            },
        }
    ]


def test_the_scaled_object_watches_the_subscription_the_pods_use() -> None:
    _, docs, _ = manifest(
        IMAGE, *BASE, "--subscription", "wc-sub", "--kind", "deployment", "--autoscale", "1:3"
    )
    trigger = kinds(docs)["ScaledObject/word-count"]["spec"]["triggers"][0]["metadata"]
    assert trigger["subscription"] == "wc-sub"
    assert trigger["msgBacklogThreshold"] == "10"  # KEDA's default, written out
    container = kinds(docs)["Deployment/word-count"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--subscription") + 1] == "wc-sub"


def test_one_trigger_per_input_topic_short_names_made_full() -> None:
    code, docs, err = manifest(
        IMAGE,
        *BASE,
        "--inputs",
        "second",
        "--kind",
        "deployment",
        "--autoscale",
        "1:4",
        "--partitioned-inputs",
        "--activation-backlog-threshold",
        "5",
        "--admin-url",
        "https://admin.example:8443/",
    )
    assert code == 0, err
    triggers = kinds(docs)["ScaledObject/word-count"]["spec"]["triggers"]
    assert [t["metadata"]["topic"] for t in triggers] == [
        "persistent://acme/orders/in",
        "persistent://public/default/second",
    ]
    for trigger in triggers:
        assert trigger["metadata"]["isPartitionedTopic"] == "true"
        assert trigger["metadata"]["activationMsgBacklogThreshold"] == "5"
        assert trigger["metadata"]["adminURL"] == "https://admin.example:8443"
    validate(kinds(docs)["ScaledObject/word-count"])


def test_tls_broker_gets_the_https_admin_port() -> None:
    _, docs, _ = manifest(
        IMAGE, *BASE, "--service-url", "pulsar+ssl://broker:6651", "--autoscale", "1:2"
    )
    trigger = kinds(docs)["ScaledObject/word-count"]["spec"]["triggers"][0]
    assert trigger["metadata"]["adminURL"] == "https://broker:8443"
    code, _, err = manifest(
        IMAGE, *BASE, "--service-url", "pulsar+ssl://broker:6651", "--autoscale", "1:2"
    )
    assert code == 0
    assert "warning: the scaler reads the backlog over HTTPS: KEDA must trust" in err
    assert "over HTTPS" not in manifest(IMAGE, *BASE, "--autoscale", "1:2")[2]


def test_the_token_secret_of_the_deployment_authenticates_the_scaler() -> None:
    code, docs, err = manifest(
        IMAGE, *BASE, "--kind", "deployment", "--autoscale", "1:3", "--auth-token-secret", "jwt"
    )
    assert code == 0, err
    assert [d["kind"] for d in docs] == ["Deployment", "TriggerAuthentication", "ScaledObject"]
    for doc in docs:
        validate(doc)
    auth = kinds(docs)["TriggerAuthentication/word-count-pulsar-auth"]
    assert auth["spec"] == {
        "secretTargetRef": [{"parameter": "bearerToken", "name": "jwt", "key": "token"}]
    }
    container = kinds(docs)["Deployment/word-count"]["spec"]["template"]["spec"]["containers"][0]
    assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "jwt", "key": "token"}
    trigger = kinds(docs)["ScaledObject/word-count"]["spec"]["triggers"][0]
    assert trigger["authenticationRef"] == {"name": "word-count-pulsar-auth"}
    assert trigger["metadata"]["authModes"] == "bearer"


def test_function_mesh_gets_min_max_and_its_hpa_settings() -> None:
    code, docs, err = manifest(IMAGE, *BASE, "--kind", "function-mesh", "--autoscale", "2:6")
    assert code == 0, err
    function = kinds(docs)["Function/word-count"]
    validate(function)
    spec = function["spec"]
    assert (spec["replicas"], spec["minReplicas"], spec["maxReplicas"]) == (2, 2, 6)
    assert spec["pod"]["builtinAutoscaler"] == ["AverageUtilizationCPUPercent80"]
    assert spec["pod"]["autoScalingBehavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_all_kinds_with_a_backlog_threshold_warn_that_function_mesh_scales_on_cpu() -> None:
    code, docs, err = manifest(IMAGE, *BASE, "--autoscale", "1:6", "--backlog-threshold", "50")
    assert code == 0, err
    assert [d["kind"] for d in docs] == ["Deployment", "ScaledObject", "ConfigMap", "Function"]
    for doc in docs:
        validate(doc)
    assert "warning: the Function Mesh Function scales on CPU" in err


def test_the_schemas_catch_a_wrong_field_and_a_number_where_keda_wants_a_string() -> None:
    _, docs, _ = manifest(IMAGE, *BASE, "--kind", "deployment", "--autoscale", "1:3")
    scaled = kinds(docs)["ScaledObject/word-count"]
    scaled["spec"]["triggers"][0]["metadata"]["msgBacklogThreshold"] = 10
    with pytest.raises(jsonschema.ValidationError, match="10 is not of type 'string'"):
        validate(scaled)
    scaled["spec"]["triggers"][0]["metadata"]["msgBacklogThreshold"] = "10"
    scaled["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        validate(scaled)
    _, docs, _ = manifest(IMAGE, *BASE, "--kind", "function-mesh", "--autoscale", "1:3")
    function = kinds(docs)["Function/word-count"]
    function["spec"]["pod"]["autoScalingBehaviour"] = {}
    with pytest.raises(jsonschema.ValidationError, match="autoScalingBehaviour"):
        validate(function)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--autoscale", "5:2"], "MIN 5 is greater than MAX 2"),
        (["--autoscale", "3"], "'3' is not MIN:MAX"),
        (["--autoscale", "one:two"], "is not MIN:MAX"),
        (["--autoscale=-1:3"], "MIN -1 is below 0"),
        (["--autoscale", "0:0"], "MAX 0 is below 1"),
        (["--autoscale", "1:3", "--processing-guarantees", "EFFECTIVELY_ONCE"], "EFFECTIVELY_ONCE"),
        (["--autoscale", "1:3", "--subscription-type", "EXCLUSIVE"], "EXCLUSIVE"),
        (["--autoscale", "1:3", "--parallelism", "2"], "both set the replica count"),
        (["--backlog-threshold", "5"], "only applies with --autoscale"),
        (["--autoscale", "1:3", "--backlog-threshold", "0"], "--backlog-threshold 0 is too small"),
        (["--autoscale", "1:3", "--backlog-threshold", "many"], "invalid int value: 'many'"),
        (
            ["--autoscale", "1:3", "--topics-pattern", "persistent://acme/orders/a-.*"],
            "cannot follow a pattern",
        ),
        (
            ["--autoscale", "1:3", "--inputs", "non-persistent://acme/orders/t"],
            "keeps no backlog",
        ),
        (["--autoscale", "0:3", "--kind", "function-mesh"], "cannot scale to zero"),
        (["--autoscale", "0:3"], "cannot scale to zero"),  # --kind all includes Function Mesh
        (
            ["--autoscale", "1:3", "--kind", "function-mesh", "--backlog-threshold", "9"],
            "cannot read a subscription's backlog",
        ),
    ],
)
def test_bad_combinations_exit_2_with_one_error_and_a_hint(argv: list[str], says: str) -> None:
    code, docs, err = manifest(IMAGE, *BASE, *argv)
    assert code == 2
    assert docs == []
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("pulsarfunc: error:")
    assert says in lines[0]
    assert lines[1].startswith("  hint: ")


def test_no_name_means_no_known_subscription() -> None:
    code, _, err = manifest(IMAGE, "--inputs", "in", "--kind", "deployment", "--autoscale", "1:3")
    assert code == 2
    assert "cannot tell the subscription" in err
    assert "--name NAME, or --subscription NAME" in err
    code, docs, _ = manifest(
        IMAGE, "--inputs", "in", "--subscription", "s", "--kind", "deployment", "--autoscale", "1:3"
    )
    assert code == 0
    assert (
        kinds(docs)["ScaledObject/word-count"]["spec"]["triggers"][0]["metadata"]["subscription"]
        == "s"
    )


def test_a_function_config_names_the_function_and_its_parallelism_yields(tmp_path: Path) -> None:
    config_file = tmp_path / "wc.yaml"
    config_file.write_text(
        "tenant: acme\nnamespace: orders\nname: wc\ninputs: [persistent://acme/orders/in]\n"
        "parallelism: 4\n"
    )
    code, docs, err = manifest(
        IMAGE, "--function-config", str(config_file), "--kind", "deployment", "--autoscale", "1:9"
    )
    assert code == 0, err
    assert "replicas" not in kinds(docs)["Deployment/wc"]["spec"]
    trigger = kinds(docs)["ScaledObject/wc"]["spec"]["triggers"][0]["metadata"]
    assert trigger["subscription"] == "acme/orders/wc"


def test_failover_scales_with_a_warning() -> None:
    code, _, err = manifest(
        IMAGE,
        *BASE,
        "--autoscale",
        "1:3",
        "--subscription-type",
        "FAILOVER",
        "--kind",
        "deployment",
    )
    assert code == 0
    assert "warning: a FAILOVER subscription has one active consumer per partition" in err


def test_plugin_params_cannot_authenticate_the_scaler_and_it_says_so() -> None:
    code, docs, err = manifest(
        IMAGE, *BASE, "--kind", "deployment", "--autoscale", "1:3", "--auth-params-secret", "oauth"
    )
    assert code == 0, err
    assert [d["kind"] for d in docs] == ["Deployment", "ScaledObject"]  # no TriggerAuthentication
    assert "warning: the ScaledObject carries no credentials" in err
