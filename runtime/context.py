"""The Context a function sees: identity, the current message, publish, ack, logger, metrics.

One Context per message, so concurrent invocations never see each other's message.
`current_context()` returns the active one from anywhere in the call (a contextvar), like
PIP-32's `FromContext`. Pulsar's Python method names (`get_function_name`, ...) all work, and
the class is a `pulsar.Context`, so code typed against Pulsar's API accepts it.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pulsarfunc.runtime.compat import PulsarContext
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.errors import PulsarFuncError
from pulsarfunc.runtime.naming import pulsar_sequence_id
from pulsarfunc.runtime.state import NoStateError, StateStore, as_bytes
from pulsarfunc.runtime.transport import InMessage, MessageId, OutMessage

if TYPE_CHECKING:
    from pulsarfunc.protos.Function_pb2 import FunctionDetails
    from pulsarfunc.runtime.tracker import Ticket


class Services(Protocol):
    """What a Context needs from the running instance (or from `pulsarfunc.testing`)."""

    def publish(
        self,
        ticket: Ticket | None,
        message: OutMessage,
        callback: Callable[[Exception | None], None] | None = None,
    ) -> concurrent.futures.Future[None]: ...

    def ack(self, ticket: Ticket | None) -> None: ...

    def record_metric(self, name: str, value: float) -> None: ...


class SecretsProvider(Protocol):
    """Looks up a secret by name; None when there is no such secret."""

    def __call__(self, name: str) -> str | None: ...


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class FunctionEnv:
    """What every Context of one instance shares."""

    config: FunctionConfig
    services: Services
    logger: logging.Logger
    secrets: SecretsProvider
    started: datetime.datetime = field(default_factory=_now)  # when the instance started
    state: StateStore | None = None  # managed state (--state-storage-service-url)


class Cursor:
    """Where a batch engine's thread is: its current message, with a Context made on first use.

    Bound once per thread instead of a Context per message, so a handler that takes no
    Context pays nothing for one; `current_context()` still returns the message's Context.
    The engine points it at a group (`enter`), the invocation core moves `index` along.
    """

    __slots__ = ("ctx", "env", "index", "msgs", "ticket_of")

    def __init__(self, env: FunctionEnv) -> None:
        self.env = env
        self.msgs: Sequence[InMessage] = ()
        self.ticket_of: Callable[[int], Ticket] | None = None  # None: not inside a group
        self.index = 0
        self.ctx: Context | None = None

    def enter(self, msgs: Sequence[InMessage], ticket_of: Callable[[int], Ticket]) -> None:
        self.msgs, self.ticket_of, self.index, self.ctx = msgs, ticket_of, 0, None

    def leave(self) -> None:
        self.msgs, self.ticket_of, self.ctx = (), None, None

    def context(self) -> Context:
        if self.ctx is None:
            if self.ticket_of is None:
                raise _outside()
            self.ctx = Context(self.env, self.msgs[self.index], self.ticket_of(self.index))
        return self.ctx


_current: ContextVar[Context | Cursor | None] = ContextVar("pulsarfunc_context", default=None)


def _outside() -> PulsarFuncError:
    return PulsarFuncError(
        "current_context() was called outside a function invocation",
        "call it from the handler or from code the handler calls",
    )


def current_context() -> Context:
    """The Context of the message being processed in this call chain."""
    ctx = _current.get()
    if ctx is None:
        raise _outside()
    return ctx if isinstance(ctx, Context) else ctx.context()


class Context(PulsarContext):  # type: ignore[misc]  # pulsar-client ships no type hints
    """The function's view of itself and of the message it is processing."""

    __slots__ = ("_env", "_message", "_ticket")

    def __init__(
        self, env: FunctionEnv, message: InMessage | None, ticket: Ticket | None = None
    ) -> None:
        self._env = env
        self._message = message
        self._ticket = ticket

    # -- identity (PIP-32) -------------------------------------------------------------
    @property
    def tenant(self) -> str:
        return self._env.config.tenant

    @property
    def namespace(self) -> str:
        return self._env.config.namespace

    @property
    def function_name(self) -> str:
        return self._env.config.name

    @property
    def function_id(self) -> str:
        return self._env.config.function_id

    @property
    def function_version(self) -> str:
        return self._env.config.function_version

    @property
    def instance_id(self) -> int:
        return self._env.config.instance_id

    @property
    def cluster_name(self) -> str:
        return self._env.config.cluster_name

    @property
    def input_topics(self) -> list[str]:
        return list(self._env.config.input_topics)

    @property
    def output_topic(self) -> str:
        return self._env.config.output

    @property
    def user_config(self) -> Mapping[str, Any]:
        return self._env.config.user_config

    def user_config_value(self, key: str, default: Any = None) -> Any:
        return self._env.config.user_config.get(key, default)

    @property
    def logger(self) -> logging.Logger:
        return self._env.logger

    @property
    def start_time(self) -> datetime.datetime:
        """When this function instance started (UTC), as PIP-32's `GetStartTime`."""
        return self._env.started

    @property
    def function_config(self) -> FunctionConfig:
        """The resolved configuration of this instance (frozen: read-only)."""
        return self._env.config

    @property
    def function_details(self) -> FunctionDetails:
        """The resolved configuration as Pulsar's FunctionDetails message (a copy: changing
        it changes nothing)."""
        from pulsarfunc.runtime.details import function_details

        return function_details(self._env.config)

    # -- the current message -------------------------------------------------------------
    @property
    def message(self) -> InMessage:
        """The message being processed (pulsar-client's Message interface)."""
        if self._message is None:
            raise PulsarFuncError("this Context has no current message")
        return self._message

    @property
    def message_id(self) -> MessageId:
        return self.message.message_id()

    @property
    def message_key(self) -> str | None:
        return self.message.partition_key() or None

    @property
    def message_properties(self) -> dict[str, str]:
        return dict(self.message.properties())

    @property
    def message_event_time(self) -> int | None:
        """Event time in epoch ms, None when the producer set none."""
        return self.message.event_timestamp() or None

    @property
    def message_topic(self) -> str:
        return self.message.topic_name()

    @property
    def redelivery_count(self) -> int:
        """Times the message was delivered before, by the broker or tried again here."""
        local = self._ticket.attempts if self._ticket is not None else 0
        return max(self.message.redelivery_count(), local)

    # -- actions ---------------------------------------------------------------------------
    def publish(
        self,
        topic_name: str,
        message: Any,
        serde_class_name: str | None = None,
        properties: Mapping[str, str] | None = None,
        compression_type: Any = None,
        callback: Any = None,
        message_conf: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> concurrent.futures.Future[None]:
        """Publish `message` to `topic_name`; under at-least-once the input waits for it.

        The value is encoded by its type (bytes, str, JSON) unless a Pulsar serde class is
        named. Returns a future that completes when the broker has persisted the message;
        `callback(error, None)` is called then (error None: persisted), on a thread of the
        instance's own: never the handler's, never the Pulsar client's.
        """
        from pulsarfunc.runtime import codec

        del compression_type  # the producer's compression applies to every message
        conf = dict(message_conf or {})
        enc = codec.pulsar_serde(serde_class_name) if serde_class_name else codec.AUTO
        props = dict(conf.get("properties") or {})
        props.update(properties or {})
        out = OutMessage(
            topic_name,
            enc.encode(message),
            key if key is not None else conf.get("partition_key"),
            props or None,
            conf.get("event_timestamp"),
        )
        done = None if callback is None else (lambda error: callback(error, None))
        return self._env.services.publish(self._ticket, out, done)

    def ack(self, msgid: Any = None, topic: Any = None) -> None:
        """Acknowledge the current message (MANUAL processing guarantee)."""
        del msgid, topic  # Pulsar's signature; the current message is the one acknowledged
        self._env.services.ack(self._ticket)

    def record_metric(self, metric_name: str, metric_value: float) -> None:
        self._env.services.record_metric(metric_name, float(metric_value))

    def secret(self, name: str) -> str | None:
        """A secret by name (from the configured secrets map, env vars or files)."""
        return self._env.secrets(name)

    # -- Pulsar's Python Context names ----------------------------------------------------
    def get_function_tenant(self) -> str:
        return self.tenant

    def get_function_namespace(self) -> str:
        return self.namespace

    def get_function_name(self) -> str:
        return self.function_name

    def get_function_id(self) -> str:
        return self.function_id

    def get_function_version(self) -> str:
        return self.function_version

    def get_instance_id(self) -> int:
        return self.instance_id

    def get_cluster_name(self) -> str:
        return self.cluster_name

    def get_input_topics(self) -> list[str]:
        return self.input_topics

    def get_output_topic(self) -> str:
        return self.output_topic

    def get_output_serde_class_name(self) -> str:
        return self._env.config.output_serde_class_name

    def get_user_config_value(self, key: str) -> Any:
        return self.user_config_value(key)

    def get_user_config_map(self) -> dict[str, Any]:
        return dict(self.user_config)

    def get_logger(self) -> logging.Logger:
        return self.logger

    def get_start_time(self) -> datetime.datetime:
        return self.start_time

    def get_function_config(self) -> FunctionConfig:
        return self.function_config

    def get_function_details(self) -> FunctionDetails:
        return self.function_details

    def get_secret(self, secret_name: str) -> str | None:
        return self.secret(secret_name)

    def get_message_id(self) -> MessageId:
        return self.message_id

    def get_message_key(self) -> str | None:
        return self.message_key

    def get_message_eventtime(self) -> int | None:
        return self.message_event_time

    def get_message_properties(self) -> dict[str, str]:
        return self.message_properties

    def get_current_message_topic_name(self) -> str:
        return self.message_topic

    def get_partition_key(self) -> str | None:
        return self.message_key

    def get_ordering_key(self) -> str | None:
        return self.message.ordering_key() or None

    def get_message_sequence_id(self) -> int:
        mid = self.message_id
        return pulsar_sequence_id(mid.ledger_id(), mid.entry_id())

    def get_message_partition_index(self) -> int:
        return self.message_id.partition()

    def get_redelivery_count(self) -> int:
        return self.redelivery_count

    # -- managed state (state.py): Pulsar's Python Context's calls -----------------------------
    def _state(self) -> StateStore:
        store = self._env.state
        if store is None:
            raise NoStateError(
                "function state (counters, put_state/get_state) needs a state storage, and "
                "none is configured",
                "pass --state-storage-service-url bk://HOST:4181 (Pulsar's stream storage; "
                "pip install 'pulsarfunc[state]')",
            )
        return store

    def incr_counter(self, key: str, amount: int) -> None:
        """Add `amount` to the counter `key` (created at 0)."""
        self._state().incr(key, int(amount))

    def get_counter(self, key: str) -> int | None:
        """The counter `key`; None if it does not exist (as Pulsar's Python Context)."""
        return self._state().counter(key)

    def del_counter(self, key: str) -> None:
        """Delete the counter (or value) `key`."""
        self._state().delete(key)

    def put_state(self, key: str, value: bytes | str) -> None:
        """Store `value` (bytes, or str as UTF-8) under `key`."""
        self._state().put(key, as_bytes(value))

    def get_state(self, key: str) -> bytes | None:
        """The value stored under `key`, as bytes; None if there is none."""
        return self._state().get(key)


def bind(ctx: Context | Cursor) -> Any:
    """Make `ctx` the current context; returns the token to `unbind` it."""
    return _current.set(ctx)


def unbind(token: Any) -> None:
    """Restore the context that was current before `bind` (nothing to restore when a call is
    finalised in another context: a coroutine closed with its event loop)."""
    try:  # noqa: SIM105  # per message on the async path: try costs nothing, suppress does
        _current.reset(token)
    except ValueError:
        pass
