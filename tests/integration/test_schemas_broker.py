"""Schemas and serdes on the real broker: registration, interop with pulsar-client, failures."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Any

import pulsar
import pytest
from pulsar.schema import AvroSchema, Integer, JsonSchema, Record, String
from pulsar_helpers import PulsarBroker, client, produce, subscribe_first, unique_topic
from runtime_harness import admin, config_for, running, wait_backlog

from pulsarfunc.runtime.discovery import load
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.resolve import resolve

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "pulsar_examples"
PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))
AVRO_CLASS = "avro_schema_test_function.AvroTestObject"


class Reading(Record):  # type: ignore[misc]  # pulsar-client ships no type hints
    sensor = String()
    value = Integer()


def _registered(pulsar_broker: PulsarBroker, topic: str) -> dict[str, Any]:
    """The broker's schema of `topic`: GET /admin/v2/schemas/{tenant}/{ns}/{topic}/schema."""
    path = topic.replace("persistent://", "/admin/v2/schemas/") + "/schema"
    answer: dict[str, Any] = admin(pulsar_broker.admin_url, "GET", path)
    return answer


def _example(name: str) -> Any:
    loaded = load(str(EXAMPLES / f"{name}.py"))
    return inspect_handler(loaded.obj, where=loaded.where)


def test_pulsar_s_avro_example_reads_and_writes_avro_records_with_pulsar_client(
    pulsar: PulsarBroker,
) -> None:
    src, out = unique_topic("avro-in"), unique_topic("avro-out")
    details = {
        "tenant": "public",
        "namespace": "default",
        "name": "avro-" + out.rsplit("-", 1)[-1],
        "className": "avro_schema_test_function.AvroSchemaTestFunction",
        "runtime": "PYTHON",
        "source": {
            "inputSpecs": {src: {"schemaType": "AVRO"}},
            "typeClassName": AVRO_CLASS,
            "subscriptionPosition": "EARLIEST",
        },
        "sink": {"topic": out, "schemaType": "AVRO", "typeClassName": AVRO_CLASS},
    }
    handler = _example("avro_schema_test_function")
    record = importlib.import_module("avro_schema_test_function").AvroTestObject
    config = resolve(
        ["--function-details", json.dumps(details), "--service-url", pulsar.service_url], {}
    )
    with (
        client(pulsar.service_url) as c,
        subscribe_first(pulsar.service_url, out, schema=AvroSchema(record)) as sink,
    ):
        producer = c.create_producer(src, schema=AvroSchema(record))
        with running(handler, config):
            for i in range(5):
                producer.send(record(baseValue=i, objectValue=f"v{i}"))
            got = sink.collect(5, timeout_s=60)
    read = [AvroSchema(record).decode(r.data) for r in got]  # as an AvroSchema consumer reads
    values = sorted((v.baseValue, v.objectValue) for v in read)
    assert values == [(i + 10, f"v{i}") for i in range(5)]
    for topic in (src, out):  # both registered with the broker, as AVRO of that record
        schema = _registered(pulsar, topic)
        assert schema["type"] == "AVRO"
        assert json.loads(schema["data"])["name"] == "AvroTestObject"


def test_a_java_producer_s_avro_records_reach_the_function(pulsar: PulsarBroker) -> None:
    """Pulsar's own Java CLI (`bin/pulsar-client produce -vs avro:...`, in the broker's
    container) produces AVRO records that the unchanged Pulsar example reads."""
    if pulsar.container is None:
        pytest.skip("an external broker: no Pulsar CLI at hand")
    src, out = unique_topic("java-in"), unique_topic("java-out")
    handler = _example("avro_schema_test_function")
    record = importlib.import_module("avro_schema_test_function").AvroTestObject
    config = resolve(
        ["--service-url", pulsar.service_url, "--subscription-position", "EARLIEST",
         "--custom-schema-inputs", json.dumps({src: "AVRO"}), "--input-type-class-name",
         AVRO_CLASS, "--output", out, "--schema-type", "AVRO", "--output-type-class-name",
         AVRO_CLASS],
        {},
    )  # fmt: skip
    value = '{"baseValue": {"int": 32}, "objectValue": {"string": "from java"}}'  # Avro JSON
    command = [
        "bin/pulsar-client", "produce", src, "-s", "#",
        "-vs", "avro:" + json.dumps(record.schema()), "-m", value,
    ]  # fmt: skip
    with (
        subscribe_first(pulsar.service_url, out) as sink,
        running(handler, config),
    ):
        code, output = pulsar.container.exec_run(command)
        assert code == 0, output
        (got,) = sink.collect(1, timeout_s=60)
    read = AvroSchema(record).decode(got.data)
    assert (read.baseValue, read.objectValue) == (42, "from java")


def test_a_record_annotation_registers_a_json_schema_and_interoperates(
    pulsar: PulsarBroker,
) -> None:
    src, out = unique_topic("json-in"), unique_topic("json-out")

    def handler(reading: Reading) -> Reading:
        return Reading(sensor=reading.sensor.upper(), value=reading.value * 2)

    with (
        client(pulsar.service_url) as c,
        subscribe_first(pulsar.service_url, out, schema=JsonSchema(Reading)) as sink,
    ):
        producer = c.create_producer(src, schema=JsonSchema(Reading))
        with running(handler, config_for(pulsar.service_url, src, output=out)):
            producer.send(Reading(sensor="t1", value=21))
            (got,) = sink.collect(1, timeout_s=60)
    value = JsonSchema(Reading).decode(got.data)
    assert (value.sensor, value.value) == ("T1", 42)
    assert _registered(pulsar, src)["type"] == "JSON"
    assert _registered(pulsar, out)["type"] == "JSON"


def test_a_payload_that_does_not_decode_is_dead_lettered_with_the_reason(
    pulsar: PulsarBroker,
) -> None:
    src, out, dlq = unique_topic("bad-in"), unique_topic("bad-out"), unique_topic("bad-dlq")

    def handler(reading: Reading) -> str:
        return f"{reading.sensor}={reading.value}"

    config = dataclasses.replace(
        config_for(pulsar.service_url, src, output=out),
        max_message_retries=1,
        dead_letter_topic=dlq,
        redelivery_delay_ms=100,
    )
    good = json.dumps({"sensor": "a", "value": 1}).encode()
    with (
        subscribe_first(pulsar.service_url, out) as outputs,
        subscribe_first(pulsar.service_url, dlq) as dead,
        running(handler, config),
    ):
        produce(pulsar.service_url, src, [b"\x00not json", good])
        (output,) = outputs.collect(1, timeout_s=60)
        (letter,) = dead.collect(1, timeout_s=60)
        assert wait_backlog(pulsar.admin_url, src, config.subscription_name, 0) == 0
    assert output.data == b"a=1"
    assert letter.data == b"\x00not json"
    assert letter.properties["pulsarfunc.error.type"] == "PayloadError"
    assert (
        "does not decode under the schema JSON Reading"
        in letter.properties["pulsarfunc.error.message"]
    )


def test_custom_serde_flags_run_pulsar_s_example_unchanged(
    pulsar: PulsarBroker, tmp_path: Path
) -> None:
    src, out = unique_topic("serde-in"), unique_topic("serde-out")
    serde = "custom_object_function.CustomSerDe"
    args = [
        "--service-url", pulsar.service_url, "--subscription-position", "EARLIEST",
        "--custom-serde-inputs", json.dumps({src: serde}),
        "--output", out, "--output-serde-classname", serde,
    ]  # fmt: skip
    with subscribe_first(pulsar.service_url, out) as sink:
        proc = subprocess.Popen(
            [PULSARFUNC, "run", str(EXAMPLES / "custom_object_function.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            produce(pulsar.service_url, src, [b"1,2", b"3,4"])
            got = sink.collect(2, timeout_s=60)
        finally:
            proc.terminate()
            log = proc.communicate(timeout=60)[0].decode()
    assert sorted(r.data for r in got) == [b"12,26", b"14,28"], log
    assert proc.returncode == 0, log


def test_a_schema_the_broker_refuses_fails_the_start_naming_both_types(
    pulsar: PulsarBroker, tmp_path: Path
) -> None:
    src, out = unique_topic("clash-in"), unique_topic("clash-out")
    with client(pulsar.service_url) as c:  # the output topic already holds a JSON schema
        c.create_producer(out, schema=JsonSchema(Reading)).close()
    fn = tmp_path / "fn.py"
    fn.write_text("def handler(text: str) -> str:\n    return text\n")
    proc = subprocess.run(
        [PULSARFUNC, "run", str(fn), "--service-url", pulsar.service_url,
         "--inputs", src, "--output", out, "--output-schema-type", "STRING"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    error = [line for line in proc.stderr.splitlines() if "error" in line]
    assert error, proc.stderr
    assert out in error[0]
    assert "STRING" in error[0]
    assert "JSON" in error[0]
    assert "Traceback" not in proc.stderr


def test_a_schema_on_a_topic_holding_schema_less_data_fails_the_start_saying_so(
    pulsar: PulsarBroker, tmp_path: Path
) -> None:
    src = unique_topic("bytes-in")
    produce(pulsar.service_url, src, [b"raw"])  # data, and no schema
    fn = tmp_path / "fn.py"
    fn.write_text("def handler(text: str) -> str:\n    return text\n")
    proc = subprocess.run(
        [PULSARFUNC, "run", str(fn), "--service-url", pulsar.service_url,
         "--custom-schema-inputs", json.dumps({src: "STRING"})],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"cannot consume {src} (the function's STRING, the topic's no schema" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_string_schema_input_is_registered_and_decoded(pulsar: PulsarBroker) -> None:
    src, out = unique_topic("str-in"), unique_topic("str-out")
    config = resolve(
        ["--service-url", pulsar.service_url, "--subscription-position", "EARLIEST",
         "--custom-schema-inputs", json.dumps({src: "STRING"}), "--output", out],
        {},
    )  # fmt: skip
    with (
        client(pulsar.service_url) as c,
        subscribe_first(pulsar.service_url, out) as sink,
        running(lambda text: text + "!", config),
    ):
        c.create_producer(src, schema=pulsar_string()).send("héllo")
        (got,) = sink.collect(1, timeout_s=60)
    assert got.data == "héllo!".encode()
    assert _registered(pulsar, src)["type"] == "STRING"
    with pytest.raises(urllib.error.HTTPError):  # no schema on the output: bytes, as configured
        _registered(pulsar, out)


def pulsar_string() -> Any:
    return pulsar.schema.StringSchema()
