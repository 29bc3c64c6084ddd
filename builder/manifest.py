"""`pulsarfunc manifest IMAGE [flags]`: Kubernetes manifests that scale a function image out.

Emits, as one multi-document YAML on stdout:
- a `Deployment`: replicas = --parallelism, the function's flags as container args, the metrics
  port exposed with Prometheus annotations, liveness (/healthz) and readiness (/readyz) probes on
  it, CPU and memory requests/limits, a non-root read-only container;
- a Function Mesh `Function` (compute.functionmesh.io/v1alpha1) with the same settings, and the
  ConfigMap of broker URLs it refers to (`--kind` picks one of the two, default both);
- a ConfigMap holding --function-config, when one is given, mounted where the args point;
- with --autoscale MIN:MAX, a KEDA ScaledObject (and TriggerAuthentication) scaling the
  Deployment on the input's backlog, and Function Mesh's own HPA settings (`autoscale`).

Pure: flags in, documents out, no Docker and no cluster. The runtime's own flag table parses
and checks the function flags (`resolve.resolve_args`), so a manifest never carries a flag the
image would refuse. Credentials are never written into a manifest: --auth-token-secret and
--auth-params-secret name Kubernetes Secrets that the container reads them from.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from pulsarfunc.builder import autoscale
from pulsarfunc.builder.autoscale import Autoscale
from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.errors import ConfigError, PulsarFuncError, UserError
from pulsarfunc.runtime.options import OPTIONS, Option, build_parser
from pulsarfunc.runtime.resolve import resolve_args

__all__ = ["ManifestOptions", "main", "render"]

DEFAULT_METRICS_PORT = 9094  # Pulsar's Kubernetes runtime and Function Mesh use it too
CONFIG_MOUNT = "/etc/pulsarfunc"
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_NOT_CARRIED = {"auth.token": "--auth-token-secret", "auth.params": "--auth-params-secret"}


@dataclass(frozen=True)
class ManifestOptions:
    """What the manifests need beyond the function's own configuration."""

    image: str
    args: tuple[str, ...]  # the function's flags, as the container gets them
    replicas: int = 1
    cpu: str = "1"
    memory: str = "1Gi"
    k8s_namespace: str = ""
    metrics_port: int = DEFAULT_METRICS_PORT
    handler: str = ""  # for Function Mesh's className / python.py
    function_config: str = ""  # contents of --function-config, shipped as a ConfigMap
    auth_token_secret: str = ""
    auth_params_secret: str = ""
    autoscale: Autoscale | None = None  # None: a fixed replica count
    notes: tuple[str, ...] = ()  # warnings found while checking the options


def k8s_name(text: str) -> str:
    """A DNS-1123 label from a function name (lower case, dashes, at most 63 characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not name:
        raise UserError(f"cannot make a Kubernetes name from {text!r}", "pass --name")
    return name


def _labels(config: FunctionConfig) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": k8s_name(config.name),
        "app.kubernetes.io/component": "pulsar-function",
        "app.kubernetes.io/managed-by": "pulsarfunc",
    }


def _metadata(config: FunctionConfig, opts: ManifestOptions, suffix: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": k8s_name(config.name) + suffix, "labels": _labels(config)}
    if opts.k8s_namespace:
        meta["namespace"] = opts.k8s_namespace
    meta["annotations"] = {"pulsarfunc.io/fqfn": config.fqfn}
    return meta


def _resources(opts: ManifestOptions) -> dict[str, Any]:
    amounts = {"cpu": opts.cpu, "memory": opts.memory}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _env(opts: ManifestOptions) -> list[dict[str, Any]]:
    env = []
    for var, secret, key in (
        ("PULSARFUNC_AUTH_TOKEN", opts.auth_token_secret, "token"),
        ("PULSARFUNC_AUTH_PARAMS", opts.auth_params_secret, "params"),
    ):
        if secret:
            ref = {"secretKeyRef": {"name": secret, "key": key}}
            env.append({"name": var, "valueFrom": ref})
    return env


def _grace_seconds(config: FunctionConfig) -> int:
    """Kubernetes' wait before SIGKILL: the runtime's drain deadline and 30 s to close."""
    return -(-config.drain_timeout_ms // 1000) + 30


def deployment(config: FunctionConfig, opts: ManifestOptions) -> dict[str, Any]:
    """The Deployment: one pod per instance, probes and metrics on the metrics port."""
    port = opts.metrics_port
    container: dict[str, Any] = {
        "name": "function",
        "image": opts.image,
        "args": list(opts.args),
        "ports": [{"name": "http-metrics", "containerPort": port, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http-metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http-metrics"},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
        "resources": _resources(opts),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if env := _env(opts):
        container["env"] = env
    pod: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": _grace_seconds(config),
    }
    if opts.function_config:
        name = k8s_name(config.name) + "-config"
        container["volumeMounts"] = [{"name": "function-config", "mountPath": CONFIG_MOUNT}]
        pod["volumes"] = [{"name": "function-config", "configMap": {"name": name}}]
    labels = _labels(config)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(config, opts),
        "spec": {
            **({} if opts.autoscale else {"replicas": opts.replicas}),  # KEDA's HPA owns it
            "selector": {
                "matchLabels": {"app.kubernetes.io/name": labels["app.kubernetes.io/name"]}
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }


def config_map(
    config: FunctionConfig, opts: ManifestOptions, suffix: str, data: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config, opts, suffix),
        "data": dict(data),
    }


def _web_service_url(service_url: str) -> str:
    """Pulsar's admin URL for a broker URL: same host, 8080 (8443 with TLS)."""
    parts = urllib.parse.urlsplit(service_url)
    tls = parts.scheme == "pulsar+ssl"
    return f"{'https' if tls else 'http'}://{parts.hostname or 'localhost'}:{8443 if tls else 8080}"


def function_mesh(config: FunctionConfig, opts: ManifestOptions) -> dict[str, Any]:
    """Function Mesh's Function resource for the same function (see README: what it runs)."""
    topics = [s.topic for s in config.inputs if not s.is_regex]
    patterns = [s.topic for s in config.inputs if s.is_regex]
    source_specs: dict[str, Any] = {}
    for given in config.inputs:
        entry: dict[str, Any] = {}
        if given.is_regex and len(patterns) > 1:
            entry["isRegexPattern"] = True
        if given.serde_class_name:
            entry["serdeClassname"] = given.serde_class_name
        if given.schema_type:
            entry["schemaType"] = given.schema_type
        if given.schema_properties:
            entry["schemaProperties"] = dict(given.schema_properties)
        if given.receiver_queue_size is not None:
            entry["receiverQueueSize"] = given.receiver_queue_size
        if entry:
            source_specs[given.topic] = entry
    inputs: dict[str, Any] = {"topics": topics}
    if len(patterns) == 1:
        inputs["topicPattern"] = patterns[0]
    if source_specs:
        inputs["sourceSpecs"] = source_specs
    if config.input_type_class_name:
        inputs["typeClassName"] = config.input_type_class_name
    spec: dict[str, Any] = {
        "image": opts.image,
        "className": opts.handler or config.class_name or "handler",
        "tenant": config.tenant,
        "namespace": config.namespace,
        "name": config.name,
        "clusterName": config.cluster_name,
        "replicas": opts.replicas,
        "input": inputs,
        "processingGuarantee": config.processing_guarantee.value.lower(),
        "subscriptionName": config.subscription_name,
        "subscriptionPosition": config.subscription_position.value.lower(),
        "retainOrdering": config.retain_ordering,
        "retainKeyOrdering": config.retain_key_ordering,
        "forwardSourceMessageProperty": config.forward_source_message_property,
        "autoAck": config.processing_guarantee is not ProcessingGuarantee.MANUAL,
        "resources": _resources(opts),
        "pulsar": {"pulsarConfig": k8s_name(config.name) + "-pulsar"},
        "python": {"py": opts.handler.partition(":")[0] if opts.handler else "/app"},
    }
    if config.output:
        output: dict[str, Any] = {"topic": config.output}
        if config.output_serde_class_name:
            output["sinkSerdeClassName"] = config.output_serde_class_name
        if config.output_schema_type:
            output["sinkSchemaType"] = config.output_schema_type
        if config.output_type_class_name:
            output["typeClassName"] = config.output_type_class_name
        output["producerConf"] = {
            "compressionType": config.producer.compression.value,
            "maxPendingMessages": config.producer.max_pending_messages,
        }
        spec["output"] = output
    if config.log_topic:
        spec["logTopic"] = config.log_topic
    if config.max_message_retries is not None:
        spec["maxMessageRetry"] = config.max_message_retries
    if config.dead_letter_topic:
        spec["deadLetterTopic"] = config.dead_letter_topic
    if config.user_config:
        spec["funcConfig"] = dict(config.user_config)
    if config.timeout_ms is not None:
        spec["timeout"] = config.timeout_ms
    if opts.autoscale:
        spec["replicas"] = max(opts.autoscale.min_replicas, 1)
        spec.update(autoscale.function_mesh_fields(opts.autoscale))
    return {
        "apiVersion": "compute.functionmesh.io/v1alpha1",
        "kind": "Function",
        "metadata": {
            k: v for k, v in _metadata(config, opts).items() if k in ("name", "namespace")
        },
        "spec": spec,
    }


def render(
    config: FunctionConfig, opts: ManifestOptions, kind: str = "all"
) -> list[dict[str, Any]]:
    """The manifests for `kind`: "deployment", "function-mesh" or "all"."""
    docs: list[dict[str, Any]] = []
    if kind in ("deployment", "all"):
        if opts.function_config:
            data = {"function-config.yaml": opts.function_config}
            docs.append(config_map(config, opts, "-config", data))
        docs.append(deployment(config, opts))
        if opts.autoscale:
            docs += autoscale.keda_documents(
                config,
                opts.autoscale,
                name=k8s_name(config.name),
                metadata=_metadata(config, opts),
                token_secret=opts.auth_token_secret,
            )
    if kind in ("function-mesh", "all"):
        urls = {
            "brokerServiceURL": config.service_url,
            "webServiceURL": _web_service_url(config.service_url),
        }
        docs.append(config_map(config, opts, "-pulsar", urls))
        docs.append(function_mesh(config, opts))
    return docs


# --- the command ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = build_parser("pulsarfunc manifest IMAGE")
    parser.usage = "%(prog)s [manifest flags] [function flags]"
    parser.description = (
        "Print Kubernetes manifests for a function image: a Deployment and a Function Mesh "
        "Function. Function flags (--inputs, --output, ...) become the container's args."
    )
    group = parser.add_argument_group("manifest")
    add = group.add_argument
    add("image", metavar="IMAGE", help="the function image, as the cluster pulls it")
    add("--parallelism", type=int, default=None, help="instances (replicas); default 1")
    add("--cpu", default=None, help="CPU cores per instance, e.g. 0.5 or 500m; default 1")
    add(
        "--ram",
        default=None,
        help="memory per instance: bytes or a quantity like 512Mi; default 1Gi",
    )
    add("--k8s-namespace", default="", help="Kubernetes namespace of the resources")
    add("--kind", choices=("all", "deployment", "function-mesh"), default="all")
    add("--handler", default="", help="the image's handler reference, for Function Mesh")
    add("--auth-token-secret", default="", help="Secret (key `token`) with the broker JWT")
    add("--auth-params-secret", default="", help="Secret (key `params`) with --auth-params")
    scale = parser.add_argument_group("autoscaling (KEDA for a Deployment, HPA for Function Mesh)")
    add = scale.add_argument
    add(
        "--autoscale",
        metavar="MIN:MAX",
        default=None,
        help="scale between MIN and MAX replicas instead of a fixed --parallelism",
    )
    add(
        "--backlog-threshold",
        metavar="N",
        type=int,
        default=None,
        help=f"KEDA: target backlog per replica (default {autoscale.DEFAULT_BACKLOG_THRESHOLD})",
    )
    add(
        "--activation-backlog-threshold",
        metavar="N",
        type=int,
        default=None,
        help="KEDA: backlog above which a function scaled to zero starts (default 0)",
    )
    add(
        "--partitioned-inputs",
        action="store_true",
        default=False,
        help="KEDA: the input topics are partitioned (their backlog is read across partitions)",
    )
    add("--admin-url", default="", help="KEDA: Pulsar's admin URL (default from --service-url)")
    return parser


def _quantity(raw: str, flag: str) -> str:
    text = raw.strip()
    if not _QUANTITY.match(text):
        raise ConfigError(
            f"{flag} {raw!r} is not a Kubernetes quantity", f"{flag} takes e.g. 0.5, 500m, 1Gi"
        )
    return text


def _function_config_defaults(path: str) -> tuple[str, dict[str, Any]]:
    """The YAML's text, and the parallelism/resources pulsar-admin would take from it."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--function-config {path}: {exc}") from exc
    return text, data if isinstance(data, dict) else {}


def _container_args(args: argparse.Namespace, metrics_port: int, config_file: bool) -> list[str]:
    """The function flags given, as the container gets them; @FILE values are inlined."""
    out: list[str] = []
    for option in OPTIONS:
        if not hasattr(args, option.dest) or option.field in _NOT_CARRIED:
            continue
        raw = getattr(args, option.dest)
        if option.field == "function_config":
            out += [option.flag, f"{CONFIG_MOUNT}/function-config.yaml"] if config_file else []
        elif option.kind == "bool":
            out.append(option.flag if raw else f"--no-{option.flag[2:]}")
        else:
            for value in raw if option.kind == "list" else [raw]:
                out += [option.flag, _inline(option, value)]
    if not hasattr(args, "metrics_port"):
        out += ["--metrics-port", str(metrics_port)]
    return out


def _inline(option: Option, value: str) -> str:
    if value.startswith("@") and option.field in ("user_config", "secrets", "function_details"):
        return Path(value[1:]).expanduser().read_text(encoding="utf-8").strip()
    return value


def options_from(args: argparse.Namespace) -> tuple[FunctionConfig, ManifestOptions]:
    """The function's configuration (checked by the runtime's rules) and the manifest's."""
    for field, instead in _NOT_CARRIED.items():
        dest = field.replace(".", "_")  # auth.token -> the flag --auth-token's dest
        if hasattr(args, dest):
            raise UserError(
                f"--{dest.replace('_', '-')} would write a credential into the manifest",
                f"store it in a Kubernetes Secret and pass {instead} NAME",
            )
    config = resolve_args(args, {})
    named = bool(config.name)
    if not config.name:
        config = _named_after(config, args.image)
    function_config, yaml_values = "", dict[str, Any]()
    if getattr(args, "function_config", None):
        function_config, yaml_values = _function_config_defaults(args.function_config)
    resources = yaml_values.get("resources") or {}
    metrics_port = config.metrics_port if config.metrics_port is not None else DEFAULT_METRICS_PORT
    if metrics_port == 0:
        raise ConfigError(
            "--metrics-port 0 picks a random port: the probes need a fixed one",
            f"leave it out (default {DEFAULT_METRICS_PORT}) or name a port",
        )
    scale = _autoscale(args)
    if scale and args.parallelism is not None:
        raise ConfigError(
            "--parallelism and --autoscale both set the replica count",
            "keep one: --autoscale MIN:MAX to scale, --parallelism N for a fixed count",
        )
    replicas = (
        args.parallelism if args.parallelism is not None else yaml_values.get("parallelism", 1)
    )
    if not isinstance(replicas, int) or replicas < 0:
        raise ConfigError(f"--parallelism {replicas!r} is not a whole number >= 0")
    notes = autoscale.check(config, scale, args.kind, named=named) if scale else []
    if scale and args.auth_params_secret and args.kind != "function-mesh":
        notes.append(
            "the ScaledObject carries no credentials: KEDA's Pulsar scaler takes a bearer token "
            "(--auth-token-secret), not --auth-params; add a TriggerAuthentication if the admin "
            "API needs one"
        )
    cpu = args.cpu if args.cpu is not None else str(resources.get("cpu", "1"))
    ram = args.ram if args.ram is not None else str(resources.get("ram", "1Gi"))
    opts = ManifestOptions(
        image=args.image,
        args=tuple(_container_args(args, metrics_port, bool(function_config))),
        replicas=replicas,
        cpu=_quantity(cpu, "--cpu"),
        memory=_quantity(ram, "--ram"),
        k8s_namespace=args.k8s_namespace,
        metrics_port=metrics_port,
        handler=args.handler,
        function_config=function_config,
        auth_token_secret=args.auth_token_secret,
        auth_params_secret=args.auth_params_secret,
        autoscale=scale,
        notes=tuple(notes),
    )
    return config, opts


def _autoscale(args: argparse.Namespace) -> Autoscale | None:
    """The autoscaling flags, or None; a companion flag without --autoscale is an error."""
    if args.autoscale is None:
        given = [
            flag
            for flag, value in (
                ("--backlog-threshold", args.backlog_threshold),
                ("--activation-backlog-threshold", args.activation_backlog_threshold),
                ("--partitioned-inputs", args.partitioned_inputs or None),
                ("--admin-url", args.admin_url or None),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(
                f"{given[0]} only applies with --autoscale MIN:MAX", "add --autoscale"
            )
        return None
    low, high = autoscale.parse_range(args.autoscale)
    return Autoscale(
        min_replicas=low,
        max_replicas=high,
        backlog_threshold=args.backlog_threshold,
        activation_threshold=args.activation_backlog_threshold,
        partitioned=args.partitioned_inputs,
        admin_url=args.admin_url,
    )


def _named_after(config: FunctionConfig, image: str) -> FunctionConfig:
    """No --name: the image's repository name, as the image itself would default it."""
    repository = image.rsplit("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    return dataclasses.replace(config, name=last.split(":", 1)[0])


def _warnings(config: FunctionConfig, opts: ManifestOptions, err: TextIO) -> None:
    for note in opts.notes:
        print(f"pulsarfunc: warning: {note}", file=err)
    if "--service-url" not in opts.args:
        print(
            f"pulsarfunc: warning: no --service-url: the pods will connect to "
            f"{config.service_url} unless PULSARFUNC_SERVICE_URL is set on them",
            file=err,
        )
    if opts.replicas > 1 and config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE:
        print(
            "pulsarfunc: warning: effectively-once names its producers after the instance id, "
            "which every replica of a Deployment shares; run one replica per --instance-id",
            file=err,
        )


def main(argv: Sequence[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`pulsarfunc manifest IMAGE [flags]`; returns the exit code (0, 2 user error)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser().parse_args(list(argv))
        config, opts = options_from(args)
        docs = render(config, opts, args.kind)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except PulsarFuncError as exc:
        print(f"pulsarfunc: error: {exc}", file=err)
        return exc.exit_code
    except OSError as exc:
        print(f"pulsarfunc: error: {exc}", file=err)
        return 2
    _warnings(config, opts, err)
    out.write(yaml.safe_dump_all(docs, sort_keys=False, width=1000))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
