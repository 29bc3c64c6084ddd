"""`pulsarfunc manifest --autoscale MIN:MAX`: scaling on backlog (KEDA) or on CPU (Function Mesh).

- A Deployment is scaled by a KEDA `ScaledObject` (keda.sh/v1alpha1) with one `apache-pulsar`
  trigger per input topic, on the function's subscription, and a `TriggerAuthentication` that
  reads the broker token from the same Secret as the Deployment. The Deployment then carries
  no replica count: KEDA's HPA owns it.
- A Function Mesh `Function` gets `minReplicas`/`maxReplicas`, which turn on Function Mesh's
  HPA, with its built-in CPU rule and a scale-down behaviour. Function Mesh's HPA cannot read a
  subscription's backlog (streamnative/function-mesh#457), so a backlog threshold needs KEDA.

Pure: the function's configuration and the settings in, documents out. Every combination that
cannot scale as asked is a `ConfigError` (exit 2) naming the flag and what to do.
"""

from __future__ import annotations

import copy
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee, SubscriptionType
from pulsarfunc.runtime.errors import ConfigError

__all__ = [
    "Autoscale",
    "check",
    "function_mesh_fields",
    "keda_documents",
    "parse_range",
]

DEFAULT_BACKLOG_THRESHOLD = 10  # KEDA's own default for msgBacklogThreshold
FUNCTION_MESH_CPU_RULE = "AverageUtilizationCPUPercent80"
_RANGE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*$")
# Remove at most one pod a minute, after 5 minutes of lower load: each removal makes the broker
# rebalance the subscription's consumers, and a shrinking group redelivers what was in flight.
SCALE_DOWN: dict[str, Any] = {
    "stabilizationWindowSeconds": 300,
    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
}


@dataclass(frozen=True)
class Autoscale:
    """What `--autoscale`, `--backlog-threshold` and their companions asked for."""

    min_replicas: int
    max_replicas: int
    backlog_threshold: int | None = None  # None: not given (KEDA's default for KEDA)
    activation_threshold: int | None = None
    partitioned: bool = False
    admin_url: str = ""  # "" = derived from --service-url


def parse_range(raw: str) -> tuple[int, int]:
    """`MIN:MAX` as two whole numbers, 0 <= MIN <= MAX, MAX >= 1."""
    match = _RANGE.match(raw)
    if not match:
        raise ConfigError(
            f"--autoscale {raw!r} is not MIN:MAX",
            "give two whole numbers of replicas, e.g. --autoscale 1:10 (0:10 scales to zero)",
        )
    low, high = int(match[1]), int(match[2])
    if low < 0:
        raise ConfigError(f"--autoscale {raw!r}: MIN {low} is below 0", "MIN is 0 or more")
    if high < 1:
        raise ConfigError(f"--autoscale {raw!r}: MAX {high} is below 1", "MAX is 1 or more")
    if low > high:
        raise ConfigError(
            f"--autoscale {raw!r}: MIN {low} is greater than MAX {high}",
            f"swap them: --autoscale {high}:{low}",
        )
    return low, high


def check(config: FunctionConfig, scale: Autoscale, kind: str, *, named: bool) -> list[str]:
    """Refuse what cannot scale as asked; return warnings for what scales with a caveat.

    `named`: the function's name (or subscription) was given, so the subscription the pods use
    is known here rather than taken from the image's label at run time.
    """
    if config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE:
        raise ConfigError(
            "--autoscale with EFFECTIVELY_ONCE: its outputs' producer names and sequence ids "
            "follow one consumer per input partition, which replicas coming and going break",
            "use ATLEAST_ONCE to autoscale, or run EFFECTIVELY_ONCE with a fixed --parallelism",
        )
    if config.subscription_type is SubscriptionType.EXCLUSIVE:
        raise ConfigError(
            "--autoscale with --subscription-type EXCLUSIVE: the broker refuses every consumer "
            "but the first, so added replicas would fail to start",
            "use SHARED or KEY_SHARED to autoscale",
        )
    if not config.inputs:
        raise ConfigError(
            "--autoscale needs input topics to scale on",
            "pass --inputs TOPIC (or a function config)",
        )
    warnings: list[str] = []
    if config.subscription_type is SubscriptionType.FAILOVER:
        warnings.append(
            "a FAILOVER subscription has one active consumer per partition: replicas beyond "
            "the partition count stand by"
        )
    keda = kind in ("deployment", "all")
    mesh = kind in ("function-mesh", "all")
    if mesh and scale.min_replicas < 1:
        raise ConfigError(
            f"--autoscale {scale.min_replicas}:{scale.max_replicas}: Function Mesh's HPA cannot "
            "scale to zero",
            "use --kind deployment (KEDA scales to zero) or MIN 1 or more",
        )
    if kind == "function-mesh" and (
        scale.backlog_threshold is not None or scale.activation_threshold is not None
    ):
        raise ConfigError(
            "--backlog-threshold with --kind function-mesh: Function Mesh's HPA cannot read a "
            "subscription's backlog (it scales on CPU)",
            "use --kind deployment to scale on backlog with KEDA, or leave the threshold out",
        )
    if kind == "all" and scale.backlog_threshold is not None:
        warnings.append(
            "the Function Mesh Function scales on CPU (80%): Function Mesh's HPA cannot read a "
            "backlog; the Deployment's ScaledObject scales on it"
        )
    if keda:
        _check_keda(config, scale, named=named)
        if admin_url(config, scale).startswith("https://"):
            warnings.append(
                "the scaler reads the backlog over HTTPS: KEDA must trust the broker's "
                "certificate (add its CA as `ca` to a TriggerAuthentication)"
            )
    return warnings


def _check_keda(config: FunctionConfig, scale: Autoscale, *, named: bool) -> None:
    patterns = [s.topic for s in config.inputs if s.is_regex]
    if patterns:
        raise ConfigError(
            f"--autoscale with a topics pattern ({patterns[0]}): KEDA's Pulsar scaler reads one "
            "topic's backlog and cannot follow a pattern",
            "list the topics with --inputs, or use --kind function-mesh to scale on CPU",
        )
    transient = [s.topic for s in config.inputs if s.topic.startswith("non-persistent://")]
    if transient:
        raise ConfigError(
            f"--autoscale on {transient[0]}: a non-persistent topic keeps no backlog to scale on",
            "use persistent topics, or --kind function-mesh to scale on CPU",
        )
    if not named and not config.subscription:
        raise ConfigError(
            "--autoscale cannot tell the subscription to watch: without --name the pods name "
            "the function (and so the subscription tenant/namespace/name) after the image's label",
            "pass --name NAME, or --subscription NAME",
        )
    for flag, value in (
        ("--backlog-threshold", scale.backlog_threshold),
        ("--activation-backlog-threshold", scale.activation_threshold),
    ):
        if value is not None and value < (1 if flag == "--backlog-threshold" else 0):
            raise ConfigError(
                f"{flag} {value} is too small",
                "the backlog per replica is 1 or more; the activation threshold 0 or more",
            )


def admin_url(config: FunctionConfig, scale: Autoscale) -> str:
    """Pulsar's admin (web service) URL: --admin-url, else the broker's host on 8080/8443."""
    if scale.admin_url:
        return scale.admin_url.rstrip("/")
    parts = urllib.parse.urlsplit(config.service_url)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    tls = parts.scheme == "pulsar+ssl"
    return f"{'https' if tls else 'http'}://{parts.hostname or 'localhost'}:{8443 if tls else 8080}"


def keda_documents(
    config: FunctionConfig,
    scale: Autoscale,
    *,
    name: str,
    metadata: dict[str, Any],
    token_secret: str = "",
) -> list[dict[str, Any]]:
    """The TriggerAuthentication (when the broker needs a token) and the ScaledObject."""
    docs: list[dict[str, Any]] = []
    auth_name = name + "-pulsar-auth"
    if token_secret:
        docs.append(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "TriggerAuthentication",
                "metadata": {**metadata, "name": auth_name},
                "spec": {
                    "secretTargetRef": [
                        {"parameter": "bearerToken", "name": token_secret, "key": "token"}
                    ]
                },
            }
        )
    triggers = []
    for spec in config.inputs:
        trigger_meta = {
            "adminURL": admin_url(config, scale),
            "topic": spec.topic,
            "subscription": config.subscription_name,
            "msgBacklogThreshold": str(
                scale.backlog_threshold
                if scale.backlog_threshold is not None
                else DEFAULT_BACKLOG_THRESHOLD
            ),
            "isPartitionedTopic": "true" if scale.partitioned else "false",
        }
        if scale.activation_threshold is not None:
            trigger_meta["activationMsgBacklogThreshold"] = str(scale.activation_threshold)
        trigger: dict[str, Any] = {"type": "apache-pulsar", "metadata": trigger_meta}
        if token_secret:
            trigger_meta["authModes"] = "bearer"
            trigger["authenticationRef"] = {"name": auth_name}
        triggers.append(trigger)
    docs.append(
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": metadata,
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicaCount": scale.min_replicas,
                "maxReplicaCount": scale.max_replicas,
                "advanced": {
                    "horizontalPodAutoscalerConfig": {
                        "behavior": {"scaleDown": copy.deepcopy(SCALE_DOWN)}
                    }
                },
                "triggers": triggers,
            },
        }
    )
    return docs


def function_mesh_fields(scale: Autoscale) -> dict[str, Any]:
    """The Function's spec fields that turn on Function Mesh's HPA."""
    return {
        "minReplicas": scale.min_replicas,
        "maxReplicas": scale.max_replicas,
        "pod": {
            "builtinAutoscaler": [FUNCTION_MESH_CPU_RULE],
            "autoScalingBehavior": {"scaleDown": copy.deepcopy(SCALE_DOWN)},
        },
    }
