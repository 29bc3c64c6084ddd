"""Names pulsarfunc derives when the configuration leaves them out."""

from __future__ import annotations

import re
import uuid

_PARTITION_SUFFIX = re.compile(r"-partition-\d+$")


def dead_letter_topic(input_topic: str, subscription: str) -> str:
    """Pulsar's default dead-letter topic, `<topic>-<subscription>-DLQ`.

    A function's default subscription is `tenant/namespace/name`, whose slashes would make an
    invalid topic name, so they become dashes. Partitions share their topic's DLQ.
    """
    base = _PARTITION_SUFFIX.sub("", input_topic)
    return f"{base}-{subscription.replace('/', '-')}-DLQ"


def function_id(fqfn: str) -> str:
    """A stable id for a function that was given none: a UUID derived from its name."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pulsar-function:{fqfn}"))


def effectively_once_producer(fqfn: str, instance_id: int, input_topic: str) -> str:
    """One named producer per input topic, so its sequence ids only ever increase."""
    raw = f"{fqfn}-{instance_id}-{input_topic}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)
