"""A handler's output as the message to produce, stamped the way Pulsar's instance does.

Every output carries `__pfn_input_topic__` and `__pfn_input_msg_id__` (the input's topic and
base64 message id; not with --no-input-properties), the input's key and event time; with
--forward-source-message-property the input's own properties too. Under effectively-once it also
gets a sequence id derived from the input's position and goes to a producer named after the input
partition (`naming.effectively_once_producer`), so the broker drops a replayed output.

`Outbox` collects the outputs of a group of messages in order, for one `send_batch` per
producer. Its shortcuts (bytes out as bytes, a tuple built without NamedTuple's `__new__`)
give exactly what the plain `build` gives (tests/unit/test_outputs.py).
"""

from __future__ import annotations

import binascii
from typing import Any, TypeVar

from pulsarfunc.runtime.codec import Codec, RawCodec
from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.errors import PayloadError
from pulsarfunc.runtime.handler import Handler
from pulsarfunc.runtime.naming import effectively_once_producer, output_sequence_id
from pulsarfunc.runtime.schemas import Wire, wire_for
from pulsarfunc.runtime.transport import InMessage, OutMessage

_b64 = binascii.b2a_base64  # with newline=False: base64.b64encode's bytes, without its wrapper
TOPIC_PROPERTY = "__pfn_input_topic__"
MSG_ID_PROPERTY = "__pfn_input_msg_id__"
_Owner = TypeVar("_Owner")
_new = tuple.__new__


class Outputs:
    """Builds output messages for one instance (stateless per call: any thread)."""

    def __init__(self, config: FunctionConfig, codec: Codec) -> None:
        self.topic = config.output
        self.codec = codec
        self._encode = codec.encode
        # bytes out as bytes: the codec would only copy them
        self._raw = isinstance(codec, RawCodec) and codec.name == "bytes"
        self.forwards = config.forward_source_message_property
        self.stamps = config.input_properties
        self.effectively_once = config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
        self._fqfn = config.fqfn

    @classmethod
    def for_config(
        cls, config: FunctionConfig, handler: Handler, wire: Wire | None = None
    ) -> Outputs:
        """A schema or serde named in the configuration wins over the handler's annotation,
        as in Pulsar."""
        if wire is None:
            wire = wire_for(config, handler.input_codec, handler.output_codec)
        return cls(config, wire.output or handler.output_codec)

    def encode(self, value: Any) -> bytes:
        """The payload of one output; PayloadError if the codec cannot write it."""
        if self._raw and type(value) is bytes:
            return value
        return self._encode(value)

    def build(
        self, msg: InMessage, value: Any, previous: int, topic: str | None = None
    ) -> OutMessage:
        """The output `value` of `msg`, which already produced `previous` outputs; `topic`:
        the input's topic when its source knows it (`Source.topic`), saving a client call."""
        payload = value if self._raw and type(value) is bytes else self._encode(value)
        if self.effectively_once:
            return self._build_effectively_once(msg, payload, previous)
        props: dict[str, str] | None = None
        if self.stamps:
            props = {
                TOPIC_PROPERTY: topic or msg.topic_name(),
                MSG_ID_PROPERTY: _b64(msg.message_id().serialize(), newline=False).decode(),
            }
            if self.forwards:
                props = {**msg.properties(), **props}
        elif self.forwards:
            props = msg.properties() or None
        # tuple.__new__: a NamedTuple's own __new__ costs more
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

    def _build_effectively_once(self, msg: InMessage, payload: bytes, previous: int) -> OutMessage:
        """An output with the sequence id the broker deduplicates by, for the producer of its
        input's partition."""
        mid = msg.message_id()
        topic = msg.topic_name()
        props: dict[str, str] | None = None
        if self.stamps:
            props = {
                TOPIC_PROPERTY: topic,
                MSG_ID_PROPERTY: _b64(mid.serialize(), newline=False).decode(),
            }
        if self.forwards:
            props = {**msg.properties(), **(props or {})}
        try:
            sequence_id = output_sequence_id(mid.entry_id(), mid.batch_index(), previous)
        except ValueError as exc:
            raise PayloadError(
                f"no effectively-once sequence id for message {mid} of {topic}: {exc}",
                "yield fewer outputs per input, or use ATLEAST_ONCE",
            ) from None
        return OutMessage(
            self.topic,
            payload,
            msg.partition_key() or None,
            props or None,
            msg.event_timestamp() or None,
            sequence_id,
            effectively_once_producer(self._fqfn, topic, mid.ledger_id()),
        )

    def outbox(self, topic: str | None = None) -> Outbox:
        """An empty outbox for one group's outputs; `topic`: the inputs' (`Source.topic`)."""
        return Outbox(self, topic)

    def per_producer(
        self, outs: list[OutMessage], owners: list[_Owner]
    ) -> list[tuple[list[OutMessage], list[_Owner]]]:
        """Outputs with their owners, in order, one batch per producer (what `send_batch`
        takes). Only effectively-once names a producer per input partition: else one batch."""
        if not self.effectively_once:
            return [(outs, owners)]
        split: dict[str | None, tuple[list[OutMessage], list[_Owner]]] = {}
        for out, owner in zip(outs, owners, strict=True):
            batch = split.setdefault(out.producer_name, ([], []))
            batch[0].append(out)
            batch[1].append(owner)
        return list(split.values())


class Outbox:
    """The outputs of one group, in order, each with the index of the message it is of."""

    __slots__ = (
        "_build",
        "_counted",
        "_counts",
        "_input_topic",
        "_topic",
        "outputs",
        "outs",
        "owners",
    )

    def __init__(self, outputs: Outputs, input_topic: str | None = None) -> None:
        self.outputs = outputs
        self.outs: list[OutMessage] = []
        self.owners: list[int] = []
        self._build = outputs.build
        self._topic = outputs.topic
        self._counted = outputs.effectively_once
        self._counts: dict[int, int] = {}  # effectively-once: outputs so far per message
        self._input_topic = input_topic

    def put(self, index: int, msg: InMessage, value: Any) -> None:
        """One output of message `index` (dropped, like Pulsar does, without an output topic)."""
        if not self._topic:
            return
        previous = 0
        if self._counted:
            previous = self._counts.get(index, 0)
            self._counts[index] = previous + 1
        self.outs.append(self._build(msg, value, previous, self._input_topic))
        self.owners.append(index)

    def per_producer(self) -> list[tuple[list[OutMessage], list[int]]]:
        return self.outputs.per_producer(self.outs, self.owners)
