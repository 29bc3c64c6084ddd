"""A resolved FunctionConfig as Pulsar's FunctionDetails message, for `Context.function_details`.

The reverse of `formats.details_values`: what a Pulsar worker would hand its instance for the
same function, so code written against Pulsar's FunctionDetails reads the same fields here.
Values FunctionDetails has no field for (batching delay, concurrency, ...) stay on the
FunctionConfig (`Context.function_config`).
"""

from __future__ import annotations

import json
from typing import Any, cast

from pulsarfunc.protos import Function_pb2 as pb
from pulsarfunc.runtime.config import FunctionConfig, SubscriptionType
from pulsarfunc.runtime.function_config_yaml import WINDOW_CONFIG_KEY

_SUBSCRIPTIONS = {
    SubscriptionType.SHARED: pb.SHARED,
    SubscriptionType.FAILOVER: pb.FAILOVER,
    SubscriptionType.KEY_SHARED: pb.KEY_SHARED,
    SubscriptionType.EXCLUSIVE: pb.FAILOVER,  # Function.proto has no EXCLUSIVE: one consumer
}


_WINDOW_KEYS = {
    "window_length_count": "windowLengthCount",
    "window_length_duration_ms": "windowLengthDurationMs",
    "sliding_interval_count": "slidingIntervalCount",
    "sliding_interval_duration_ms": "slidingIntervalDurationMs",
    "late_data_topic": "lateDataTopic",
    "max_lag_ms": "maxLagMs",
    "watermark_emit_interval_ms": "watermarkEmitIntervalMs",
    "timestamp_extractor_class_name": "timestampExtractorClassName",
    "use_event_time": "useEventTime",
    "max_window_messages": "maxWindowMessages",
}


def _user_config(config: FunctionConfig) -> dict[str, Any]:
    """The user config, with the window where Pulsar's worker keeps it."""
    user = dict(config.user_config)
    if config.window.enabled:
        user[WINDOW_CONFIG_KEY] = {
            key: value
            for name, key in _WINDOW_KEYS.items()
            if (value := getattr(config.window, name)) not in (None, "", False)
        }
    return user


def function_details(config: FunctionConfig) -> pb.FunctionDetails:
    """FunctionDetails for `config` (a new message each call)."""
    details = pb.FunctionDetails(
        tenant=config.tenant,
        namespace=config.namespace,
        name=config.name,
        className=config.class_name,
        logTopic=config.log_topic,
        processingGuarantees=cast(
            pb.ProcessingGuarantees, pb.ProcessingGuarantees.Value(config.processing_guarantee.name)
        ),
        userConfig=json.dumps(_user_config(config)),
        secretsMap=json.dumps(dict(config.secrets)),
        runtime=pb.FunctionDetails.PYTHON,
        parallelism=1,
        componentType=pb.FunctionDetails.FUNCTION,
        retainOrdering=config.retain_ordering,
        retainKeyOrdering=config.retain_key_ordering,
    )
    source = details.source
    source.subscriptionType = _SUBSCRIPTIONS[config.subscription_type]
    source.subscriptionName = config.subscription_name
    source.subscriptionPosition = cast(
        pb.SubscriptionPosition, pb.SubscriptionPosition.Value(config.subscription_position.name)
    )
    source.negativeAckRedeliveryDelayMs = config.redelivery_delay_ms
    if config.timeout_ms is not None:
        source.timeoutMs = config.timeout_ms
    for spec in config.inputs:
        consumer = source.inputSpecs[spec.topic]
        consumer.isRegexPattern = spec.is_regex
        consumer.schemaType = spec.schema_type
        consumer.serdeClassName = spec.serde_class_name
        consumer.schemaProperties.update(spec.schema_properties)
        consumer.receiverQueueSize.value = (
            config.receiver_queue_size
            if spec.receiver_queue_size is None
            else spec.receiver_queue_size
        )
    source.typeClassName = config.input_type_class_name
    sink = details.sink
    sink.topic = config.output
    sink.typeClassName = config.output_type_class_name
    sink.schemaProperties.update(config.output_schema_properties)
    sink.schemaType = config.output_schema_type
    sink.serDeClassName = config.output_serde_class_name
    sink.forwardSourceMessageProperty = config.forward_source_message_property
    sink.producerSpec.maxPendingMessages = config.producer.max_pending_messages
    sink.producerSpec.compressionType = cast(
        pb.CompressionType, pb.CompressionType.Value(config.producer.compression.name)
    )
    sink.producerSpec.batchBuilder = "KEY_BASED" if config.retain_key_ordering else ""
    if config.max_message_retries is not None:
        details.retryDetails.maxMessageRetries = config.max_message_retries
        details.retryDetails.deadLetterTopic = config.dead_letter_topic
    return details
