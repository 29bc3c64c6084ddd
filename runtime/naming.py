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


def effectively_once_producer(fqfn: str, input_topic: str, ledger_id: int) -> str:
    """The producer of one function's outputs of one input topic partition's ledger.

    Named after the input partition, as Pulsar's Java instance names its effectively-once
    producers (`<partition>-0` there), so the broker's deduplication state follows the
    partition from instance to instance on a failover; unlike Pulsar's, with the function's
    name, so two functions never share that state, and with the ledger, so that a sequence id
    only needs to count within one ledger (`output_sequence_id`) and fits 63 bits whatever the
    ledger id. (So the state does not carry over from Pulsar's own runtime.) Injective: the
    function's name has no "@" and the ledger is digits, so both separators are found again.
    """
    return f"{fqfn}@{input_topic}@{ledger_id}"


def pulsar_sequence_id(ledger_id: int, entry_id: int) -> int:
    """Pulsar's sequence id for a message: (ledger id << 28) | entry id."""
    return (ledger_id << 28) | entry_id


MAX_OUTPUTS_PER_INPUT = 16  # effectively-once: outputs one input may produce
_OUTPUT_BITS = 4  # MAX_OUTPUTS_PER_INPUT
_BATCH_BITS = 19  # messages of one producer batch: up to 524,287
_ENTRY_BITS = 63 - _BATCH_BITS - _OUTPUT_BITS  # entries of one ledger: up to 2**40


def output_sequence_id(entry_id: int, batch_index: int, output_index: int) -> int:
    """The dedup sequence id of the n-th output of one input, within its ledger's producer.

    Increases in input order (entry, then batch index, then output), so a replayed output gets
    the id it had before and the broker drops it. The batch index is part of it: Pulsar's own
    `(ledger << 28) | entry` gives every message of a producer batch the same id, so the broker
    would drop all outputs of a batch but the first. ValueError when a part is out of range:
    never a wrong id.
    """
    batch = batch_index + 1  # -1 (not batched) is 0
    if not 0 <= output_index < MAX_OUTPUTS_PER_INPUT:
        raise ValueError(
            f"output {output_index + 1} of one input: effectively-once numbers at most "
            f"{MAX_OUTPUTS_PER_INPUT}"
        )
    if not 0 <= batch < 1 << _BATCH_BITS:
        raise ValueError(f"batch index {batch_index} is beyond {(1 << _BATCH_BITS) - 2}")
    if not 0 <= entry_id < 1 << _ENTRY_BITS:
        raise ValueError(f"entry id {entry_id} is beyond {(1 << _ENTRY_BITS) - 1}")
    return (((entry_id << _BATCH_BITS) | batch) << _OUTPUT_BITS) | output_index
