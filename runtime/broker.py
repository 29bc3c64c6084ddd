"""The Broker seam implemented with pulsar-client: the only module that talks to Pulsar.

Inputs share one subscription: one consumer takes the plain topics of one receiver queue size
(per input `receiverQueueSize`, else --receiver-queue-size), and each regex pattern has a
consumer of its own (pulsar-client subscribes to either a list or one pattern). Producers are
one per (topic, producer name), with sends that never time out (as Pulsar's own instance does)
so a broker restart delays output instead of failing it: the output's and the dead-letter
topic's are opened at start (`open_producer`), others on first use, never from a callback.
Named (effectively-once) producers are closed once idle.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import _pulsar
import pulsar

from pulsarfunc.runtime.config import (
    CompressionType,
    FunctionConfig,
    ProcessingGuarantee,
    SubscriptionPosition,
    SubscriptionType,
)
from pulsarfunc.runtime.errors import BrokerError, ConfigError
from pulsarfunc.runtime.schemas import Wire
from pulsarfunc.runtime.transport import (
    BatchCallback,
    InMessage,
    OutMessage,
    SendCallback,
    Source,
)

_log = logging.getLogger("pulsarfunc.broker")

_CONSUMER_TYPES = {
    SubscriptionType.SHARED: pulsar.ConsumerType.Shared,
    SubscriptionType.FAILOVER: pulsar.ConsumerType.Failover,
    SubscriptionType.KEY_SHARED: pulsar.ConsumerType.KeyShared,
    SubscriptionType.EXCLUSIVE: pulsar.ConsumerType.Exclusive,
}
_COMPRESSION = {
    CompressionType.NONE: pulsar.CompressionType.NONE,
    CompressionType.LZ4: pulsar.CompressionType.LZ4,
    CompressionType.ZLIB: pulsar.CompressionType.ZLib,
    CompressionType.ZSTD: pulsar.CompressionType.ZSTD,
    CompressionType.SNAPPY: pulsar.CompressionType.SNAPPY,
}
_OK = pulsar.Result.Ok
_UNTRACKED_MAX_BYTES = 64 * 1024  # larger messages get a receipt each in send_batch
_RECEIVE_TIMEOUT_MS = 100  # how long a receive waits before the loop checks for shutdown
_IDLE_PRODUCER_S = 120.0  # a named (effectively-once) producer unused this long is closed


def consumer_type(config: FunctionConfig) -> SubscriptionType:
    """The subscription type actually used, by the rules of Pulsar's own instance."""
    if (
        config.retain_ordering
        or config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
    ):
        if config.subscription_type is SubscriptionType.EXCLUSIVE:
            return SubscriptionType.EXCLUSIVE
        return SubscriptionType.FAILOVER
    if config.retain_key_ordering:
        return SubscriptionType.KEY_SHARED
    return config.subscription_type


class _Consumer:
    """One pulsar-client consumer seen through the Source protocol.

    The hot path uses the client's native objects (`Consumer._consumer`): its messages have the
    very methods the runtime reads, and skipping the Python wrappers halves the cost per message.
    """

    def __init__(self, consumer: Any, *, one_topic: bool = False) -> None:
        self.consumer = consumer
        self.native = getattr(consumer, "_consumer", None) or consumer
        self._one_topic = one_topic  # one non-partitioned topic: `topic` is its first message's
        self.topic: str | None = None

    def ack(self, message: InMessage) -> None:
        self.native.acknowledge(message)

    def ack_all(self, messages: Sequence[InMessage]) -> None:
        ack = self.native.acknowledge
        for message in messages:
            ack(message)

    def nack(self, message: InMessage) -> None:
        self.native.negative_acknowledge(message)

    def receive(
        self, max_messages: int, timeout_ms: int, idle: Callable[[], None]
    ) -> Sequence[InMessage]:
        """What the receiver queue holds (up to max_messages), else wait for the first.

        `idle` runs before waiting: outputs still in a producer's batch go out now, instead of
        after the batching delay (latency at low rates).
        """
        receive = self.native.receive
        try:
            first = receive(0)
        except pulsar.Timeout:
            idle()
            try:
                first = receive(timeout_ms)
            except pulsar.Timeout:
                return ()
        batch: list[InMessage] = [first]
        if self._one_topic and self.topic is None:
            self.topic = first.topic_name()
        # Drain what is already in the receiver queue without waiting again.
        while len(batch) < max_messages:
            try:
                batch.append(receive(0))
            except pulsar.Timeout:
                break
        return batch


class ConsumerPlan(NamedTuple):
    """One consumer of the function's subscription: a list of topics, or one pattern."""

    topics: tuple[str, ...]
    pattern: str | None
    receiver_queue_size: int
    schema: Any = None  # the pulsar-client schema the consumer registers; None: bytes


def consumer_plan(
    config: FunctionConfig, schemas: Mapping[str, Any] | None = None
) -> list[ConsumerPlan]:
    """The consumers to create: one per receiver queue size and schema for plain topics (each
    input's `receiverQueueSize`, else --receiver-queue-size; `schemas` per topic or pattern),
    and one per regex pattern (the client takes one pattern per consumer)."""
    schemas = schemas or {}
    by_kind: dict[tuple[int, int], list[str]] = {}
    kinds: dict[tuple[int, int], Any] = {}
    plans: list[ConsumerPlan] = []
    for spec in config.inputs:
        size = spec.receiver_queue_size
        size = config.receiver_queue_size if size is None else size
        schema = schemas.get(spec.topic)
        if spec.is_regex:
            plans.append(ConsumerPlan((), spec.topic, size, schema))
        else:
            kind = (size, id(schema))
            kinds[kind] = schema
            by_kind.setdefault(kind, []).append(spec.topic)
    return [ConsumerPlan(tuple(t), None, k[0], kinds[k]) for k, t in by_kind.items()] + plans


def _client_kwargs(config: FunctionConfig) -> dict[str, Any]:
    auth = config.auth
    kwargs: dict[str, Any] = {
        # The C++ client asks a Python logger about every DEBUG line it might write, taking the
        # GIL from its IO thread for each (a third of the throughput, measured). Its own console
        # logger filters natively; only --debug routes the client's log through Python logging.
        "logger": (
            logging.getLogger("pulsar.client")
            if config.debug
            else pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
        ),
        "operation_timeout_seconds": 30,
    }
    if auth.token:
        kwargs["authentication"] = pulsar.AuthenticationToken(auth.token)
    elif auth.plugin:
        kwargs["authentication"] = pulsar.Authentication(auth.plugin, auth.params or "")
    if auth.tls_trust_certs_file:
        kwargs["tls_trust_certs_file_path"] = auth.tls_trust_certs_file
    if auth.tls_allow_insecure:
        kwargs["tls_allow_insecure_connection"] = True
    if auth.tls_hostname_verification:
        kwargs["tls_validate_hostname"] = True
    return kwargs


def _subscribe_error(config: FunctionConfig, exc: Exception) -> BrokerError:
    """Why subscribing failed, as far as the client lets us tell, and what to check.

    A broker that refuses our credentials closes each connection without the client reporting
    why: subscribing then times out (after `operation_timeout_seconds`), as for a broker that is
    down. A TLS handshake failure is a ConnectError; the client logs its reason just before.
    """
    auth = config.auth
    url = config.service_url
    problem = f"cannot subscribe to {', '.join(config.input_topics)} at {url}: {exc}"
    tls = url.startswith("pulsar+ssl://")
    if isinstance(exc, pulsar.Timeout):
        if auth.token or auth.plugin:
            hint = (
                f"the broker at {url} did not accept us in time: check that it accepts these "
                "credentials (Authentication: a token signed with the broker's key, not "
                "expired), that --service-url is right and the broker is up"
            )
        else:
            hint = (
                f"the broker at {url} did not accept us in time: if it requires Authentication, "
                "pass --auth-token TOKEN (or --auth-plugin/--auth-params); also check "
                "--service-url and that the broker is up"
            )
    elif isinstance(exc, pulsar.ConnectError) and tls:
        hint = (
            "TLS connection failed (see the client's log line above): trust the broker's CA "
            "with --tls-trust-certs-file CA.pem, and check --service-url and the TLS port"
        )
    else:
        hint = "check --service-url, that the broker is up, and the credentials"
    return BrokerError(problem, hint)


def _schema_name(schema: Any) -> str:
    if schema is None:
        return "no schema (bytes)"
    return str(schema.schema_info().schema_type()).rpartition(".")[2]


def _size(message: OutMessage) -> int:
    """Payload and property bytes: roughly what a broker's maxMessageSize counts."""
    props = message.properties or {}
    return len(message.payload) + sum(len(k) + len(v) for k, v in props.items())


class _BatchReceipt:
    """The one callback of a `send_batch`, once its tracked sends are all in.

    Tracked: the last message (its failure stands for every message of the batch) and large
    ones (each for itself). Receipts arrive on the client's IO thread; refusals at the call on
    the sender's.
    """

    def __init__(self, topic: str, size: int, callback: BatchCallback) -> None:
        self._topic = topic
        self._size = size
        self._callback = callback
        self._errors: dict[int, Exception] = {}
        self._left = 1  # the tail; `tracking` adds the others
        self._lock = threading.Lock()

    def tracking(self, count: int) -> None:
        with self._lock:
            self._left += count

    def refused(self, positions: Iterable[int], exc: Exception) -> None:
        """These were not accepted at the call: failed, and no receipt will come for them."""
        error = BrokerError(f"cannot send to {self._topic}: {exc}")
        with self._lock:
            for position in positions:
                self._errors.setdefault(position, error)

    def one(self, position: int, result: Any, _msg_id: Any) -> None:
        self._record(result, (position,))

    def tail(self, result: Any, _msg_id: Any) -> None:
        self._record(result, range(self._size))

    def _record(self, result: Any, positions: Iterable[int]) -> None:
        try:
            with self._lock:
                if result != _OK:
                    error = (
                        result
                        if isinstance(result, Exception)
                        else BrokerError(f"send to {self._topic} failed: {result}")
                    )
                    for position in positions:
                        self._errors.setdefault(position, error)
                self._left -= 1
                finished = self._left == 0
            if finished:
                self._finish()
        except Exception:  # pragma: no cover - never raise into the client
            _log.exception("send receipt failed")

    def _finish(self) -> None:
        self._callback(self._errors)


class PulsarBroker:
    """A connected client with the function's consumers; producers on first use."""

    def __init__(self, config: FunctionConfig, wire: Wire | None = None) -> None:
        self._config = config
        self._wire = wire or Wire()
        # the output topic's producers register the output schema (named ones too)
        self._schemas = {config.output: self._wire.output_schema} if config.output else {}
        self._producers: dict[tuple[str, str | None], Any] = {}
        self._natives: dict[tuple[str, str | None], Any] = {}  # what send uses: no wrapper
        self._used: dict[tuple[str, str | None], float] = {}  # named producers: last send
        self._producers_lock = threading.Lock()
        self._push_wanted = threading.Event()
        self._closing = False
        threading.Thread(target=self._pusher, name="pf-push", daemon=True).start()
        try:
            self._client = pulsar.Client(config.service_url, **_client_kwargs(config))
            self._sources = self._subscribe()
        except pulsar.PulsarException as exc:
            if isinstance(exc, pulsar.IncompatibleSchema):  # asks the broker: before close
                error = self._incompatible(exc, "consume", config.input_topics)
            else:
                error = _subscribe_error(config, exc)
            self.close()
            raise error from exc

    @property
    def sources(self) -> Sequence[_Consumer]:
        return self._sources

    def _subscribe(self) -> list[_Consumer]:
        config = self._config
        common: dict[str, Any] = {
            "subscription_name": config.subscription_name,
            "consumer_type": _CONSUMER_TYPES[consumer_type(config)],
            "negative_ack_redelivery_delay_ms": config.redelivery_delay_ms,
            "initial_position": (
                pulsar.InitialPosition.Earliest
                if config.subscription_position is SubscriptionPosition.EARLIEST
                else pulsar.InitialPosition.Latest
            ),
            "properties": {"fqfn": config.fqfn, "instance_id": str(config.instance_id)},
            "pattern_auto_discovery_period": 1,
            # Off, as in Pulsar's own instance: with it on, every ack carries a batch-index
            # ack set, which cost the broker twice the CPU per message (measured), for nothing
            # on a broker with batch-index acks off (its default). Acked siblings of a nacked
            # message that come back are acknowledged on arrival instead (redelivery.py).
            "batch_index_ack_enabled": False,
        }
        consumers = []
        for plan in consumer_plan(config, self._wire.input_schemas):
            if plan.schema is not None:
                common["schema"] = plan.schema
            else:
                common.pop("schema", None)
            if plan.pattern is None:
                subscribed = self._client.subscribe(
                    list(plan.topics), **common, receiver_queue_size=plan.receiver_queue_size
                )
                consumers.append(_Consumer(subscribed, one_topic=self._non_partitioned(plan)))
                continue
            try:
                regex = re.compile(plan.pattern)
            except re.error as exc:
                raise ConfigError(f"invalid topics pattern {plan.pattern!r}: {exc}") from exc
            subscribed = self._client.subscribe(
                regex, **common, receiver_queue_size=plan.receiver_queue_size
            )
            consumers.append(_Consumer(subscribed))
        return consumers

    def _non_partitioned(self, plan: ConsumerPlan) -> bool:
        """Whether a plan is one topic without partitions (which it can never gain: Pulsar
        refuses partitioned metadata over an existing topic); asked after subscribing, which
        created the topic if it was not there."""
        if len(plan.topics) != 1:
            return False
        try:
            return bool(self._client.get_topic_partitions(plan.topics[0]) == [plan.topics[0]])
        except pulsar.PulsarException:
            return False

    def receive(self, source: Source, max_messages: int, timeout_ms: int) -> Sequence[InMessage]:
        assert isinstance(source, _Consumer)
        return source.receive(max_messages, min(timeout_ms, _RECEIVE_TIMEOUT_MS), self._push)

    def _push(self) -> None:
        """Have what the producers hold sent now, without waiting here for the broker.

        The flush runs on a thread of its own: the client's flush_async keeps the GIL while
        it takes the producer's lock, which the IO thread may hold while it waits for the GIL
        to run a send callback (a deadlock, seen).
        """
        if self._producers and not self._push_wanted.is_set():
            self._push_wanted.set()

    def _pusher(self) -> None:
        while True:
            wanted = self._push_wanted.wait(_IDLE_PRODUCER_S / 4)
            if self._closing:
                return
            if wanted:
                self._push_wanted.clear()
                self.flush()
            self._close_idle_named()

    def _close_idle_named(self) -> None:
        """Close named (effectively-once) producers unused for _IDLE_PRODUCER_S: one exists per
        input partition and ledger, and closing frees its name for the instance that takes
        the partition over after a failover."""
        cutoff = time.monotonic() - _IDLE_PRODUCER_S
        with self._producers_lock:
            idle = [key for key, used in self._used.items() if used < cutoff]
            closing = [(key, self._producers.pop(key)) for key in idle]
            for key in idle:
                del self._used[key], self._natives[key]
        for key, producer in closing:
            try:
                producer.close()  # waits for its pending sends
            except pulsar.PulsarException as exc:
                _log.debug("closing idle producer %s: %s", key[1], exc)

    def open_producer(self, topic: str) -> None:
        """See `Broker.open_producer`: the start fails here, not at the first output."""
        try:
            self._producer(topic, None)
        except pulsar.IncompatibleSchema as exc:
            raise self._incompatible(exc, "produce to", (topic,)) from exc
        except pulsar.PulsarException as exc:
            raise BrokerError(
                f"cannot produce to {topic}: the broker refused: {type(exc).__name__}: {exc}",
                "create the topic (or allow auto-creation in its namespace), and check that "
                "these credentials may produce to it",
            ) from exc

    def _producer(self, topic: str, name: str | None) -> Any:
        """The client's native producer for (topic, name), created on first use."""
        key = (topic, name)
        with self._producers_lock:
            native = self._natives.get(key)
            if native is None:
                settings = self._config.producer
                producer = self._client.create_producer(
                    topic,
                    producer_name=name,
                    block_if_queue_full=True,
                    send_timeout_millis=0,
                    batching_enabled=settings.batching and name is None,
                    batching_max_publish_delay_ms=settings.batching_max_publish_delay_ms,
                    batching_max_messages=settings.batching_max_messages,
                    batching_type=(
                        pulsar.BatchingType.KeyBased
                        if self._config.retain_key_ordering
                        else pulsar.BatchingType.Default
                    ),
                    compression_type=_COMPRESSION[settings.compression],
                    max_pending_messages=settings.max_pending_messages,
                    properties={"fqfn": self._config.fqfn},
                    **({"schema": schema} if (schema := self._schemas.get(topic)) else {}),
                )
                self._producers[key] = producer
                native = self._natives[key] = getattr(producer, "_producer", producer)
        return native

    def _incompatible(self, exc: Exception, doing: str, topics: Sequence[str]) -> BrokerError:
        """The broker refused our schema: name the topic, our schema and the one it has."""
        ours = {self._config.output: self._wire.output_schema, **self._wire.input_schemas}
        found = []
        for topic in topics:
            mine = ours.get(topic)
            theirs = self._registered(topic)
            found.append(f"{topic} (the function's {_schema_name(mine)}, the topic's {theirs})")
        return BrokerError(
            f"cannot {doing} {', '.join(found)}: the broker refused the schema as incompatible "
            f"({exc})",
            "use the topic's schema; or change the topic's schema compatibility policy "
            "(pulsar-admin namespaces set-schema-compatibility-strategy); a topic that holds "
            "schema-less data takes no schema until that data is gone",
        )

    def _registered(self, topic: str) -> str:
        """The type of the latest schema the broker holds for `topic`, as far as it tells."""
        client = getattr(self, "_client", None)
        try:
            info = client._client.get_schema_info(topic, -1)  # type: ignore[union-attr]
            return str(info.schema_type()).rpartition(".")[2]
        except pulsar.TopicNotFound:  # what the broker answers for a topic without a schema
            return "no schema (it holds schema-less data)"
        except Exception as exc:  # best effort: the error names what it can
            _log.debug("schema of %s: %s", topic, exc)
            return "schema (type unknown)"

    def send(self, message: OutMessage, callback: SendCallback) -> None:
        def done(result: Any, _msg_id: Any) -> None:
            # An exception escaping a pulsar-client callback kills the process: never raise.
            try:
                if result == _OK:
                    callback(None)
                else:
                    callback(BrokerError(f"send to {message.topic} failed: {result}"))
            except Exception:  # pragma: no cover - defensive
                _log.exception("send callback failed")

        try:
            self._send_native(self._native_producer(message), message, done)
        except Exception as exc:
            callback(BrokerError(f"cannot send to {message.topic}: {exc}"))

    def send_batch(self, messages: Sequence[OutMessage], callback: BatchCallback) -> None:
        """See `Broker.send_batch`. Large messages (over _UNTRACKED_MAX_BYTES) get receipts of
        their own: a broker's maxMessageSize refuses them at the call, which only a receipt
        reports."""
        if not messages:
            callback({})
            return
        receipt = _BatchReceipt(messages[0].topic, len(messages), callback)
        try:
            producer = self._native_producer(messages[0])
        except Exception as exc:
            receipt.refused(range(len(messages)), exc)
            receipt.tail(_OK, None)  # nothing was sent: done, every message failed
            return
        send = self._send_native
        sized = self._config.forward_source_message_property
        tail = len(messages) - 1
        for position, message in enumerate(messages):
            try:
                if position == tail:
                    send(producer, message, receipt.tail)
                elif len(message.payload) > _UNTRACKED_MAX_BYTES or (
                    sized and _size(message) > _UNTRACKED_MAX_BYTES
                ):
                    receipt.tracking(1)  # before the call: its receipt may come within it
                    try:
                        send(producer, message, functools.partial(receipt.one, position))
                    except Exception:
                        receipt.tracking(-1)  # refused at the call: no receipt will come
                        raise
                else:
                    send(producer, message, None)
            except Exception as exc:
                if messages[0].producer_name is not None and position < tail:
                    # effectively-once: nothing after a refused output may reach the broker
                    # before it (its sequence id would make the broker drop the refused one
                    # when it is sent again); the rest fail with it
                    receipt.refused(range(position, len(messages)), exc)
                    receipt.tail(self._flushed(producer), None)
                    return
                receipt.refused((position,), exc)
                if position == tail:  # no receipt covers the ones before: wait for them
                    receipt.tail(self._flushed(producer), None)

    def _flushed(self, producer: Any) -> Any:
        """Ok once every pending send of `producer` is persisted, else the error."""
        try:
            producer.flush()
        except Exception as exc:
            return BrokerError(f"flush failed: {exc}")
        return _OK

    @staticmethod
    def _send_native(producer: Any, message: OutMessage, done: Any) -> None:
        builder = _pulsar.MessageBuilder()
        builder.content(message.payload)
        properties = message.properties
        if properties:  # one call for all (the client takes a dict)
            builder.properties(properties if type(properties) is dict else dict(properties))
        if message.key:
            builder.partition_key(message.key)
        if message.sequence_id is not None:
            builder.sequence_id(message.sequence_id)
        if message.event_timestamp:
            builder.event_timestamp(message.event_timestamp)
        producer.send_async(builder.build(), done)

    def _native_producer(self, message: OutMessage) -> Any:
        key = (message.topic, message.producer_name)
        producer = self._natives.get(key)
        if producer is None:
            producer = self._producer(message.topic, message.producer_name)
        if message.producer_name is not None:
            self._used[key] = time.monotonic()
        return producer

    def connected(self) -> bool:
        try:
            return all(source.native.is_connected() for source in self._sources) and all(
                producer.is_connected() for producer in list(self._natives.values())
            )
        except pulsar.PulsarException:
            return False

    def flush(self) -> None:
        for producer in list(self._producers.values()):
            try:
                producer.flush()
            except pulsar.PulsarException as exc:
                _log.warning("flush of %s failed: %s", producer.topic(), exc)

    def close(self) -> None:
        self._closing = True
        self._push_wanted.set()
        for source in getattr(self, "_sources", []):
            try:
                source.consumer.close()
            except pulsar.PulsarException as exc:
                _log.debug("consumer close: %s", exc)
        for producer in list(self._producers.values()):
            try:
                producer.close()
            except pulsar.PulsarException as exc:
                _log.debug("producer close: %s", exc)
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
