"""Pulsar's formats: the worker's FunctionDetails JSON and pulsar-admin's function-config YAML."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from pulsarfunc.protos import Function_pb2 as pb
from pulsarfunc.runtime.config import (
    CompressionType,
    FunctionConfig,
    InputSpec,
    ProcessingGuarantee,
    ProducerSettings,
    SubscriptionPosition,
    SubscriptionType,
    frozen_map,
)
from pulsarfunc.runtime.errors import ConfigError
from pulsarfunc.runtime.formats import parse_details
from pulsarfunc.runtime.function_config_yaml import details_from_function_config
from pulsarfunc.runtime.resolve import resolve

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
P = "persistent://public/default/"

# The fact sheet's function: its YAML (section 3.3) and its FunctionDetails JSON (section 2).
WORD_COUNT = FunctionConfig(
    tenant="public",
    namespace="default",
    name="word-count",
    class_name="word_count.WordCount",
    inputs=(
        InputSpec(P + "in-a"),
        InputSpec(P + "in-b", schema_type="STRING", receiver_queue_size=500),
    ),
    subscription="word-count-sub",
    output=P + "out",
    log_topic=P + "word-count-logs",
    timeout_ms=30000,
    redelivery_delay_ms=30000,  # convert copies timeoutMs into negativeAckRedeliveryDelayMs
    max_message_retries=3,
    dead_letter_topic=P + "word-count-dlq",
    user_config={"threshold": 10, "mode": "strict"},
)


def details_config(text: str, *argv: str) -> FunctionConfig:
    return resolve(["--function-details", text, *argv], {})


def yaml_config(tmp_path: Path, text: str, *argv: str) -> FunctionConfig:
    path = tmp_path / "function.yaml"
    path.write_text(text)
    return resolve(["--function-config", str(path), *argv], {})


def test_the_fact_sheet_yaml(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        config = resolve(["--function-config", str(FIXTURES / "word-count.yaml")], {})
    assert config == replace(WORD_COUNT, py="/path/to/word_count.py")
    assert caplog.text == ""


def test_the_fact_sheet_json(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        config = resolve(["--function-details", f"@{FIXTURES / 'word-count.json'}"], {})
    assert config == replace(WORD_COUNT, forward_source_message_property=True)
    assert caplog.text == ""


def test_the_worker_s_quoted_one_line_json() -> None:
    text = json.dumps(json.loads((FIXTURES / "word-count.json").read_text()), separators=(",", ":"))
    config = resolve([], {"PULSARFUNC_FUNCTION_DETAILS": f"'{text}'"})
    assert config == replace(WORD_COUNT, forward_source_message_property=True)


def test_both_formats_meet_in_one_function_details_message() -> None:
    yaml_details, extras = details_from_function_config(
        {"name": "f", "inputs": ["a"], "topicsPattern": "b-.*", "output": "o", "subName": "s",
         "processingGuarantees": "ATMOST_ONCE", "maxMessageRetries": 2, "timeoutMs": 9},
        "f.yaml",
    )  # fmt: skip
    json_details = parse_details(
        '{"name": "f", "processingGuarantees": "ATMOST_ONCE", "runtime": "PYTHON",'
        ' "componentType": "FUNCTION", "source": {"inputSpecs": {"a": {}, "b-.*":'
        ' {"isRegexPattern": true}}, "subscriptionName": "s", "timeoutMs": "9",'
        ' "negativeAckRedeliveryDelayMs": "9"}, "sink": {"topic": "o"},'
        ' "retryDetails": {"maxMessageRetries": 2}}',
        "--function-details",
    )
    assert yaml_details == json_details
    assert extras == {}


def test_every_mapped_yaml_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        config = resolve(["--function-config", str(FIXTURES / "everything.yaml")], {})
    assert caplog.text == ""  # the ignored keys (parallelism, resources, ...) pass silently
    acme = "persistent://acme/payments/"
    assert config == FunctionConfig(
        tenant="acme",
        namespace="payments",
        name="enrich",
        class_name="enrich.Enrich",
        py="enrich.py",
        inputs=(
            InputSpec(
                acme + "json-in", schema_type="JSON", schema_properties=frozen_map({"a": "b"})
            ),
            InputSpec(acme + "keyed", serde_class_name="my.Serde", receiver_queue_size=0),
            InputSpec(acme + "legacy", serde_class_name="serde.IdentitySerDe"),
            InputSpec(acme + "str-in", schema_type="STRING"),
            InputSpec(P + "orders"),
            InputSpec(P + "refunds"),
            InputSpec(acme + "audit-.*", is_regex=True),
            InputSpec(acme + "stream-.*", is_regex=True),
        ),
        subscription="enrich-sub",
        subscription_type=SubscriptionType.FAILOVER,
        subscription_position=SubscriptionPosition.EARLIEST,
        output=acme + "enriched",
        output_schema_type="JSON",
        output_serde_class_name="my.OutSerde",
        output_schema_properties=frozen_map({"c": "d"}),
        input_type_class_name="enrich.Order",
        output_type_class_name="enrich.Enriched",
        producer=ProducerSettings(
            batching=False,
            batching_max_publish_delay_ms=5,
            batching_max_messages=50,
            compression=CompressionType.ZSTD,
            max_pending_messages=500,
        ),
        forward_source_message_property=True,
        log_topic=acme + "logs",
        log_level="WARNING",
        processing_guarantee=ProcessingGuarantee.EFFECTIVELY_ONCE,
        retain_ordering=True,
        max_message_retries=0,
        dead_letter_topic=acme + "dlq",
        timeout_ms=1500,
        redelivery_delay_ms=1500,
        user_config={"threshold": 10, "since": "2024-01-31"},  # YAML date -> ISO text, as Jackson
        secrets={"token": {"path": "/run/token"}},
    )


# --- FunctionDetails: Pulsar's consumer-type rules and proto3 presence --------------------------

SUBSCRIPTION_TYPES = [
    ("{}", SubscriptionType.SHARED),
    ('{"source": {"subscriptionType": "FAILOVER"}}', SubscriptionType.FAILOVER),
    ('{"source": {"subscriptionType": "KEY_SHARED"}}', SubscriptionType.KEY_SHARED),
    ('{"retainOrdering": true}', SubscriptionType.FAILOVER),
    ('{"processingGuarantees": "EFFECTIVELY_ONCE"}', SubscriptionType.FAILOVER),
    ('{"retainKeyOrdering": true}', SubscriptionType.KEY_SHARED),
    (
        '{"retainOrdering": true, "source": {"subscriptionType": "SHARED"}}',
        SubscriptionType.FAILOVER,
    ),
]


@pytest.mark.parametrize(("details", "kind"), SUBSCRIPTION_TYPES)
def test_subscription_type_follows_pulsar_s_python_instance(
    details: str, kind: SubscriptionType
) -> None:
    assert details_config(details, "--inputs", "in").subscription_type is kind


def test_unset_proto3_fields_keep_the_defaults_below() -> None:
    defaults = FunctionConfig(
        name="mine",
        redelivery_delay_ms=5,
        max_message_retries=7,
        inputs=(InputSpec(P + "d"),),
        processing_guarantee=ProcessingGuarantee.MANUAL,
        producer=ProducerSettings(compression=CompressionType.NONE),
    )
    zeros = (
        '{"name": "", "processingGuarantees": "ATLEAST_ONCE", "source": {"timeoutMs": "0",'
        ' "negativeAckRedeliveryDelayMs": "0", "subscriptionName": " "}, "sink": {"topic": ""}}'
    )
    config = resolve(["--function-details", zeros], {}, defaults=defaults)
    assert config == replace(defaults, inputs=(InputSpec(P + "d"),))


def test_present_messages_count_even_when_empty() -> None:
    config = details_config(
        '{"retryDetails": {}, "sink": {"producerSpec": {}},'
        ' "source": {"inputSpecs": {"a": {"receiverQueueSize": {}}, "b": {}}}}'
    )
    assert config.max_message_retries == 0
    assert config.producer.compression is CompressionType.LZ4  # Pulsar's 0, not our "unset"
    assert [spec.receiver_queue_size for spec in config.inputs] == [0, None]


def test_legacy_source_fields() -> None:
    config = details_config(
        '{"source": {"topicsToSerDeClassName": {"old": "serde.IdentitySerDe", "b": ""},'
        ' "topicsPattern": "legacy-.*", "inputSpecs": {"b": {"schemaType": "AVRO"}},'
        ' "subscriptionPosition": "EARLIEST"}}'
    )
    assert config.inputs == (
        InputSpec(P + "b", schema_type="AVRO"),
        InputSpec(P + "old", serde_class_name="serde.IdentitySerDe"),
        InputSpec(P + "legacy-.*", is_regex=True),
    )
    assert config.subscription_position is SubscriptionPosition.EARLIEST


def test_function_level_subscription_position_and_secrets() -> None:
    config = details_config(
        '{"subscriptionPosition": "EARLIEST", "secretsMap": "{\\"pw\\": \\"PW\\"}",'
        ' "sink": {"producerSpec": {"compressionType": "SNAPPY", "maxPendingMessages": 64},'
        ' "schemaType": "STRING", "serDeClassName": "my.Serde"}}',
        "--inputs",
        "in",
    )
    assert config.subscription_position is SubscriptionPosition.EARLIEST
    assert dict(config.secrets) == {"pw": "PW"}
    assert (config.producer.compression, config.producer.max_pending_messages) == (
        CompressionType.SNAPPY,
        64,
    )
    assert (config.output_schema_type, config.output_serde_class_name) == ("STRING", "my.Serde")


# --- unknown keys are tolerated, by name ---------------------------------------------------------


def test_unknown_details_fields_are_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    details = (
        '{"name": "f", "transformationConfigs": "x", "source": {"inputSpecs": {"a":'
        ' {"newThing": 1}}, "subscriptionType": "EXCLUSIVE"}}'
    )
    with caplog.at_level(logging.WARNING):
        config = details_config(details)
    assert config.name == "f"
    assert config.input_topics == (P + "a",)
    for name in (
        "transformationConfigs",
        "source.inputSpecs.a.newThing",
        "subscriptionType=EXCLUSIVE",
    ):
        assert name in caplog.text


def test_unknown_yaml_keys_are_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        "inputs: [a]\nname: f\nfancyNewKey: 1\ninputSpecs: {b: {schemaType: STRING, extra: 2,"
        " cryptoConfig: {}}}\nproducerConfig: {batchingConfig: {enabled: true, turbo: 1}}\n"
        "parallelism: 4\nresources: {cpu: 2}\n"
    )
    with caplog.at_level(logging.WARNING):
        config = yaml_config(tmp_path, text)
    assert config.name == "f"
    assert config.input_topics == (P + "a", P + "b")
    messages = [record.getMessage() for record in caplog.records]
    assert any("unknown keys: fancyNewKey" in m for m in messages)
    assert any("unknown keys: inputSpecs.b.extra" in m for m in messages)
    assert any("unknown keys: producerConfig.batchingConfig.turbo" in m for m in messages)
    assert any(
        "not supported by pulsarfunc, ignored: inputSpecs.b.cryptoConfig" in m for m in messages
    )
    assert "parallelism" not in caplog.text
    assert "resources" not in caplog.text


def test_a_dead_letter_topic_without_retries_is_dropped_as_in_pulsar(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        config = yaml_config(tmp_path, "inputs: [a]\ndeadLetterTopic: dlq\nmaxMessageRetries: -1\n")
    assert (config.dead_letter_topic, config.max_message_retries) == ("", None)
    assert "deadLetterTopic is ignored without maxMessageRetries" in caplog.text


# --- malformed files: one ConfigError naming the file, the key and the value ---------------------

BAD_YAML = [
    ("inputs: [a\n", ["not valid YAML"]),
    ("- a\n- b\n", ["expected a mapping of keys, found a list"]),
    ("inputs: 5\n", ["'inputs'", "5", "a list of topic names"]),
    ("inputs: [a]\ntimeoutMs: soon\n", ["'timeoutMs'", "'soon'", "a whole number"]),
    ("inputs: [a]\ntimeoutMs: -1\n", ["'timeoutMs'", ">= 0"]),
    ("inputs: [a]\nretainOrdering: maybe\n", ["'retainOrdering'", "'maybe'", "true or false"]),
    ("inputs: [a]\nname: [x]\n", ["'name'", "a string"]),
    ("inputs: [a]\nprocessingGuarantees: SOMETIMES\n", ["'processingGuarantees'", "ATLEAST_ONCE"]),
    ("inputs: [a]\nsubscriptionPosition: Middle\n", ["'subscriptionPosition'", "LATEST, EARLIEST"]),
    ("inputs: [a]\nproducerConfig: {compressionType: BROTLI}\n",
     ["'producerConfig.compressionType'", "ZSTD"]),
    ("inputs: [a]\nproducerConfig: 3\n", ["'producerConfig'", "a mapping"]),
    ("inputSpecs: {t: {receiverQueueSize: -1}}\n",
     ["'inputSpecs.t.receiverQueueSize'", "-1", ">= 0"]),
    ("inputSpecs: {t: [1]}\n", ["'inputSpecs.t'", "a mapping"]),
    ("inputs: [a]\nuserConfig: [1, 2]\n", ["'userConfig'", "a mapping"]),
    ("inputs: [a]\nuserConfig: {when: !!binary aGk=}\n", ["'userConfig'", "bytes"]),
    ("inputs: [a]\nfqfn: a/b\n", ["'fqfn'", "tenant/namespace/name"]),
    ("inputs: [a]\nwindowConfig: {windowLengthCount: ten}\n",
     ["'windowConfig.windowLengthCount'", "a whole number"]),
    ("customSchemaInputs: {t: '{bad json'}\n", ["'customSchemaInputs.t'", "ConsumerConfig JSON"]),
    ("inputs: [a]\noutput: tenant/topic\n", ["output", "'tenant/topic'"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "fragments"), BAD_YAML, ids=[t for t, _ in BAD_YAML])
def test_malformed_yaml(tmp_path: Path, text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        yaml_config(tmp_path, text)
    message = str(error.value)
    assert str(tmp_path / "function.yaml") in message
    for fragment in fragments:
        assert fragment in message


BAD_JSON = [
    ("{", ["not valid JSON"]),
    ("[1]", ["expected a JSON object, found a list"]),
    ('{"parallelism": "x"}', ["parallelism", "'x'"]),
    ('{"source": {"inputSpecs": {"t": {"receiverQueueSize": 5}}}}', ["receiverQueueSize"]),
    ('{"userConfig": "[1]"}', ["userConfig", "not a JSON object"]),
    ('{"secretsMap": "{oops"}', ["secretsMap", "not valid JSON"]),
    ('{"sink": {"topic": "a/b"}}', ["'a/b'", "invalid topic name"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_JSON, ids=[t for t, _ in BAD_JSON])
def test_malformed_function_details(text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        details_config(text, "--inputs", "in")
    message = str(error.value)
    assert "--function-details" in message
    for fragment in fragments:
        assert fragment in message


def test_an_empty_yaml_file_is_no_configuration(tmp_path: Path) -> None:
    assert yaml_config(tmp_path, "", "--inputs", "a").input_topics == (P + "a",)


def test_yaml_scalars_are_read_like_jackson_does(tmp_path: Path) -> None:
    config = yaml_config(
        tmp_path, "inputs: a, b\nname: 123\nretainOrdering: 'true'\nmaxMessageRetries: '2'\n"
    )
    assert config.input_topics == (P + "a", P + "b")
    assert (config.name, config.retain_ordering, config.max_message_retries) == ("123", True, 2)


def test_function_details_json_names_enums_by_number_too() -> None:
    details = parse_details('{"processingGuarantees": 3, "runtime": 1}', "x")
    assert details.processingGuarantees == pb.MANUAL
    assert details_config('{"processingGuarantees": 3}', "--inputs", "in").processing_guarantee is (
        ProcessingGuarantee.MANUAL
    )
