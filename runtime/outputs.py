"""A handler's return value as the message to produce, stamped the way Pulsar's instance does.

Every output carries `__pfn_input_topic__` and `__pfn_input_msg_id__` (the input's topic and
base64 message id), the input's key and event time; with --forward-source-message-property the
input's own properties too; under effectively-once a sequence id derived from the input's id
and a producer named after the input topic, so the broker drops a replayed output.
"""

from __future__ import annotations

import base64
from typing import Any, TypeVar

from pulsarfunc.runtime.codec import Codec, RawCodec
from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.errors import PayloadError
from pulsarfunc.runtime.naming import (
    MAX_OUTPUTS_PER_INPUT,
    effectively_once_producer,
    output_sequence_id,
)
from pulsarfunc.runtime.transport import InMessage, OutMessage

_b64 = base64.b64encode
_Owner = TypeVar("_Owner")
_new = tuple.__new__


class Outputs:
    """Builds output messages for one instance (stateless per call: any thread)."""

    def __init__(self, config: FunctionConfig, codec: Codec) -> None:
        self.topic = config.output
        self._encode = codec.encode
        # bytes out as bytes: the codec would only copy them
        self._raw = isinstance(codec, RawCodec) and codec.name == "bytes"
        self.forwards = config.forward_source_message_property
        self.effectively_once = config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
        self._fqfn = config.fqfn
        self._instance_id = config.instance_id

    def build(self, msg: InMessage, value: Any, previous: int) -> OutMessage:
        """The output `value` of `msg`, which already produced `previous` outputs."""
        payload = value if self._raw and type(value) is bytes else self._encode(value)
        mid = msg.message_id()
        topic = msg.topic_name()
        props: dict[str, str] = {
            "__pfn_input_topic__": topic,
            "__pfn_input_msg_id__": _b64(mid.serialize()).decode("ascii"),
        }
        if self.forwards:
            props = {**msg.properties(), **props}
        if not self.effectively_once:  # tuple.__new__: a NamedTuple's own __new__ costs more
            return _new(
                OutMessage,
                (
                    self.topic,
                    payload,
                    msg.partition_key() or None,
                    props,
                    msg.event_timestamp() or None,
                    None,
                    None,
                ),
            )
        if previous >= MAX_OUTPUTS_PER_INPUT:
            raise PayloadError(
                f"effectively-once allows {MAX_OUTPUTS_PER_INPUT} outputs per input",
                "yield fewer outputs, or use ATLEAST_ONCE",
            )
        return OutMessage(
            self.topic,
            payload,
            msg.partition_key() or None,
            props,
            msg.event_timestamp() or None,
            output_sequence_id(mid.ledger_id(), mid.entry_id(), mid.batch_index(), previous),
            effectively_once_producer(self._fqfn, self._instance_id, topic),
        )

    def per_producer(
        self, outs: list[OutMessage], owners: list[_Owner]
    ) -> list[tuple[list[OutMessage], list[_Owner]]]:
        """Outputs with their owners, in order, one batch per producer (what `send_batch`
        takes). Only effectively-once names a producer per input topic: else one batch."""
        if not self.effectively_once:
            return [(outs, owners)]
        split: dict[str | None, tuple[list[OutMessage], list[_Owner]]] = {}
        for out, owner in zip(outs, owners, strict=True):
            batch = split.setdefault(out.producer_name, ([], []))
            batch[0].append(out)
            batch[1].append(owner)
        return list(split.values())

    @staticmethod
    def size(out: OutMessage) -> int:
        """Bytes of payload and properties: what the broker's size limit counts, roughly."""
        extra = sum(len(k) + len(v) for k, v in out.properties.items()) if out.properties else 0
        return len(out.payload) + extra
