"""Names pulsarfunc derives when the configuration leaves them out."""

from __future__ import annotations

import re
import uuid

_PARTITION_SUFFIX = re.compile(r"-partition-\d+$")


def strip_partition(topic: str) -> str:
    """The partitioned topic a partition belongs to (`t-partition-3` -> `t`)."""
    return _PARTITION_SUFFIX.sub("", topic)


def dead_letter_topic(input_topic: str, subscription: str) -> str:
    """Pulsar's default dead-letter topic, `<topic>-<subscription>-DLQ`.

    A function's default subscription is `tenant/namespace/name`, whose slashes would make an
    invalid topic name, so they become dashes. Partitions share their topic's DLQ.
    """
    base = strip_partition(input_topic)
    return f"{base}-{subscription.replace('/', '-')}-DLQ"


def function_id(fqfn: str) -> str:
    """A stable id for a function that was given none: a UUID derived from its name."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pulsar-function:{fqfn}"))


def effectively_once_producer(fqfn: str, instance_id: int, input_topic: str) -> str:
    """One named producer per input topic, so its sequence ids only ever increase."""
    raw = f"{fqfn}-{instance_id}-{input_topic}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


def pulsar_sequence_id(ledger_id: int, entry_id: int) -> int:
    """Pulsar's sequence id for a message: (ledger id << 28) | entry id."""
    return (ledger_id << 28) | entry_id


MAX_OUTPUTS_PER_INPUT = 16  # effectively-once: outputs one input may produce


def output_sequence_id(ledger_id: int, entry_id: int, batch_index: int, output_index: int) -> int:
    """A dedup sequence id for the n-th output of one input, increasing in input order.

    Pulsar's own id (ledger << 28 | entry) is the same for every message of a producer batch,
    so the broker would drop all but the first; the batch index (10 bits) and the output index
    (4 bits) are appended. Fits 63 bits while ledger ids stay below 2**21.
    """
    if not 0 <= output_index < MAX_OUTPUTS_PER_INPUT:
        raise ValueError(f"output index {output_index} out of range")
    return (pulsar_sequence_id(ledger_id, entry_id) << 14) | ((batch_index + 1) << 4) | output_index
