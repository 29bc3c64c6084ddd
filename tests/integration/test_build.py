"""`pulsarfunc build` end to end: real Docker builds, images run against the real broker.

The Python base comes from PULSARFUNC_BASE_IMAGE (the bootstrap's local image here; the
default python:3.11-slim where a registry is reachable).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from images import build, built
from pulsar.schema import AvroSchema
from pulsar_helpers import PulsarBroker, client, produce, subscribe_first

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def run_function(
    docker_client: docker.DockerClient, docker_labels: dict[str, str], pulsar: PulsarBroker
) -> Iterator[Callable[..., Container]]:
    """Start a function image on the broker's network, read-only, as the image's own user."""
    started: list[Container] = []

    def start(image: str, *args: str) -> Container:
        container = docker_client.containers.run(
            image,
            ["--service-url", pulsar.internal_service_url, *args],
            detach=True,
            network=pulsar.network,
            read_only=True,
            labels=docker_labels,
        )
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove(force=True)


def _roundtrip(
    pulsar: PulsarBroker,
    run_function: Callable[..., Container],
    topic: Callable[..., str],
    image: str,
    payloads: list[bytes],
) -> tuple[list[bytes], Container]:
    source, sink = topic("in"), topic("out")
    with subscribe_first(pulsar.service_url, sink) as outputs:
        container = run_function(
            image, "--inputs", source, "--output", sink, "--subscription-position", "EARLIEST"
        )
        produce(pulsar.service_url, source, payloads)
        got = outputs.collect(len(payloads), timeout_s=60)
    return [r.data for r in got], container


@pytest.mark.docker
@pytest.mark.integration
def test_exclaim_image_runs_against_the_broker(
    pulsar: PulsarBroker,
    run_function: Callable[..., Container],
    topic: Callable[..., str],
    image_tag: Callable[[str], str],
    docker_client: docker.DockerClient,
) -> None:
    tag = image_tag("exclaim")
    summary = built([str(EXAMPLES / "exclaim"), "-t", tag])
    assert summary["tag"] == tag
    assert summary["handler"] == "/app/handler.py:handler"
    assert [layer["role"] for layer in summary["layers"]] == ["code"]

    outputs, container = _roundtrip(
        pulsar, run_function, topic, tag, [b"hello", b"pulsar", b"functions"]
    )
    assert sorted(outputs) == [b"functions!", b"hello!", b"pulsar!"]

    container.stop(timeout=20)  # SIGTERM: drain and exit 0
    assert container.wait(timeout=30)["StatusCode"] == 0

    config = docker_client.images.get(tag).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert "PULSARFUNC_NAME=exclaim" in config["Env"]  # subscription public/default/exclaim
    assert config["Entrypoint"] == ["python3", "/opt/pulsarfunc/entrypoint.py"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "exclaim"
    assert labels["io.pulsarfunc.handler"] == "/app/handler.py:handler"
    assert labels["io.pulsarfunc.runtime.version"]
    assert "org.opencontainers.image.revision" in labels  # examples/ is in a git work tree


@pytest.mark.docker
def test_image_help_lists_the_runtime_flags(
    docker_client: docker.DockerClient, image_tag: Callable[[str], str]
) -> None:
    tag = image_tag("exclaim-help")
    built([str(EXAMPLES / "exclaim"), "-t", tag])
    output = docker_client.containers.run(tag, ["--help"], remove=True, read_only=True)
    text = output.decode()
    for flag in ("--inputs", "--output", "--service-url", "PULSARFUNC_"):
        assert flag in text


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.parametrize(
    ("example", "extra", "payload", "check"),
    [
        pytest.param(
            "slugify",
            [],
            b"Hello, Pulsar World!",
            lambda out: out == b"hello-pulsar-world",
            id="pure-python-dependency",
        ),
        pytest.param(
            "msgsize",
            [],
            b'{"a": 1, "b": [1, 2]}',
            lambda out: (
                json.loads(out)
                == {"json_keys": 2, "msgpack_bytes": 9, "native": "msgpack._cmsgpack"}
            ),
            id="binary-wheel-dependency",
        ),
        pytest.param(
            "wordstats",
            ["--handler", "wordstats:handler"],
            b"The cat and the hat of the cat",
            lambda out: json.loads(out) == {"cat": 2, "hat": 1},
            id="package-relative-imports-data-file",
        ),
    ],
)
def test_example_images_run_against_the_broker(
    pulsar: PulsarBroker,
    run_function: Callable[..., Container],
    topic: Callable[..., str],
    image_tag: Callable[[str], str],
    example: str,
    extra: list[str],
    payload: bytes,
    check: Callable[[bytes], bool],
) -> None:
    tag = image_tag(example)
    built([str(EXAMPLES / example), "-t", tag, *extra])
    outputs, _ = _roundtrip(pulsar, run_function, topic, tag, [payload])
    assert check(outputs[0]), outputs


@pytest.mark.docker
def test_code_only_change_rebuilds_only_the_code_layer(
    tmp_path: Path, image_tag: Callable[[str], str], docker_client: docker.DockerClient
) -> None:
    function = tmp_path / "slugify"
    shutil.copytree(EXAMPLES / "slugify", function)
    first_tag, second_tag = image_tag("slug-a"), image_tag("slug-b")
    first = built([str(function), "-t", first_tag])
    handler = function / "handler.py"
    # a change no earlier run made, so the engine cannot have this code layer cached
    suffix = uuid.uuid4().hex[:8]
    edited = handler.read_text().replace("slugify(title)", f"slugify(title) + '-{suffix}'")
    handler.write_text(edited)
    second = built([str(function), "-t", second_tag])

    deps_a, code_a = first["layers"]
    deps_b, code_b = second["layers"]
    assert (deps_a["role"], code_a["role"]) == ("dependencies", "code")
    assert deps_b["diff_id"] == deps_a["diff_id"]
    assert deps_b["reused"] is True  # the engine's cache served the dependency step
    assert second["deps_staged_from_cache"] is True  # and no pip run on the host either
    assert code_b["diff_id"] != code_a["diff_id"]
    assert code_b["reused"] is False

    layers_a = docker_client.images.get(first_tag).attrs["RootFS"]["Layers"]
    layers_b = docker_client.images.get(second_tag).attrs["RootFS"]["Layers"]
    assert len(layers_a) == len(layers_b)
    assert layers_a[:-1] == layers_b[:-1]  # base + dependencies: the very same layers
    assert layers_a[-1] != layers_b[-1]


@pytest.mark.docker
def test_two_builds_give_the_same_image_id(
    tmp_path: Path, image_tag: Callable[[str], str], docker_client: docker.DockerClient
) -> None:
    function = tmp_path / "msgsize"
    shutil.copytree(EXAMPLES / "msgsize", function)
    first = built([str(function), "-t", image_tag("repro-a")])
    # --no-cache: every function layer is built again, new containers, new timestamps
    second = built([str(function), "-t", image_tag("repro-b"), "--no-cache"])
    assert second["layers"][0]["reused"] is False
    assert [layer["diff_id"] for layer in second["layers"]] == [
        layer["diff_id"] for layer in first["layers"]
    ]
    assert first["reproducible_id"] is True
    assert second["image_id"] == first["image_id"]

    epoch = built([str(function), "-t", image_tag("repro-c")], SOURCE_DATE_EPOCH="1700000000")
    assert epoch["image_id"] != first["image_id"]  # the config carries the epoch
    assert [layer["diff_id"] for layer in epoch["layers"]] != [
        layer["diff_id"] for layer in first["layers"]
    ]  # file mtimes in the layers are the epoch too
    created = docker_client.images.get(epoch["image_id"]).attrs["Created"]
    assert created.startswith("2023-11-14T22:13:20")


@pytest.mark.docker
def test_missing_native_library_fails_the_build_in_the_image(
    tmp_path: Path, image_tag: Callable[[str], str]
) -> None:
    # python-magic is a pure-Python wheel that loads the system's libmagic with ctypes: the
    # base image has no libmagic, so the import fails inside the image, not on the host
    # (where the package is not installed and the check is deferred to the image).
    (tmp_path / "handler.py").write_text(
        "import magic\n\n\ndef handler(data: bytes) -> str:\n    return magic.from_buffer(data)\n"
    )
    (tmp_path / "requirements.txt").write_text("python-magic==0.4.27\n")
    code, summary, err = build([str(tmp_path), "-t", image_tag("nomagic")])
    assert code == 1, err
    assert "build log (last lines)" in err
    assert "libmagic" in err  # the failing import's own message, from inside the build
    assert "check.py" in err
    assert summary["exit_code"] == 1


def test_sdist_only_dependency_is_a_user_error_naming_it(tmp_path: Path) -> None:
    # docopt 0.6.2 is published as a source distribution only. --platform and an unreachable
    # DOCKER_HOST show the failure comes from host-side staging, before any Docker work.
    (tmp_path / "handler.py").write_text("def handler(x: str) -> str:\n    return x\n")
    (tmp_path / "requirements.txt").write_text("docopt==0.6.2\n")
    code, summary, err = build(
        [str(tmp_path), "-t", "never:built", "--platform", "manylinux_2_28_x86_64"],
        DOCKER_HOST="tcp://127.0.0.1:1",
        PULSARFUNC_CACHE=str(tmp_path / "cache"),
    )
    assert code == 2, err
    assert summary["package"] == "docopt"
    assert "no wheel of 'docopt'" in err


@pytest.mark.docker
@pytest.mark.integration
def test_an_avro_function_s_image_gets_fastavro_and_a_plain_one_does_not(
    pulsar: PulsarBroker,
    run_function: Callable[..., Container],
    topic: Callable[..., str],
    image_tag: Callable[[str], str],
    docker_client: docker.DockerClient,
) -> None:
    """examples/readings names AVRO: its image can run it under AVRO schemas, on both topics,
    read and written by pulsar-client AvroSchema peers; exclaim's image has no fastavro."""
    plain, avro = image_tag("no-avro"), image_tag("readings")
    built([str(EXAMPLES / "exclaim"), "-t", plain])
    built([str(EXAMPLES / "readings"), "-t", avro])
    probe = ["-c", "import fastavro"]
    with pytest.raises(docker.errors.ContainerError):
        docker_client.containers.run(plain, probe, entrypoint=["python3"], remove=True)
    docker_client.containers.run(avro, probe, entrypoint=["python3"], remove=True)

    spec = importlib.util.spec_from_file_location("readings", EXAMPLES / "readings" / "handler.py")
    assert spec is not None
    assert spec.loader is not None
    readings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readings)

    source, sink = topic("in"), topic("out")
    with (
        client(pulsar.service_url) as c,
        subscribe_first(pulsar.service_url, sink) as outputs,
    ):
        run_function(
            avro, "--inputs", source, "--output", sink, "--subscription-position", "EARLIEST",
            "--custom-schema-inputs", json.dumps({source: "AVRO"}), "--output-schema-type", "AVRO",
        )  # fmt: skip
        c.create_producer(source, schema=AvroSchema(readings.Reading)).send(
            readings.Reading(sensor="s1", celsius=100.0)
        )
        (got,) = outputs.collect(1, timeout_s=60)
    converted = AvroSchema(readings.Converted).decode(got.data)
    assert (converted.sensor, converted.fahrenheit) == ("s1", 212.0)
