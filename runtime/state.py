"""Managed state: Pulsar's function state (counters and values) behind one small seam.

What Pulsar's Python instance does (`state_context.py`, `contextimpl.py`, `setup_state` in
`python_instance.py`), and pulsarfunc with it:
- The state lives in BookKeeper's table service (`--state-storage-service-url bk://HOST:4181`,
  Pulsar's `--state_storage_serviceurl`), through `apache-bookkeeper-client`.
- One table per function: namespace `{tenant}_{namespace}` with `-` turned into `_`, table the
  function's name; created when missing, with Pulsar's table configuration. A counter written
  by the same function under Pulsar's own instance is the same counter here.
- `incr_counter(key, amount)`, `get_counter(key)` (None for a missing key), `del_counter(key)`,
  `put_state(key, value)`, `get_state(key)` (bytes, None for a missing key).

Beyond Pulsar's instance: `put_state` takes bytes as well as str (Pulsar's takes str only), the
store is checked at start (an unreachable one fails the start with the reason, not the first
message), and a call that fails raises StateError, so that message fails and is retried: no
count is acknowledged that was not written. Without a state URL the calls raise a clear error.
The client is imported only when a URL is configured: it is the optional `pulsarfunc[state]`.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol

from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.errors import PulsarFuncError, UserError

STATE_EXTRA = (
    "pip install 'pulsarfunc[state]'; in an image, list pulsarfunc[state] in the function's "
    "requirements.txt"
)
_CONNECT_S = 5.0  # the start's reachability check; the client itself retries for 60 s
_TABLE_RANGES = 1  # Pulsar's Python instance creates its tables with one range


class StateError(PulsarFuncError):
    """The state storage failed (at start: exit 1; in a message: that message fails)."""


class NoStateError(UserError):
    """A state call without a configured state storage."""


class StateStore(Protocol):
    """What a Context asks of the function's state table."""

    def incr(self, key: str, amount: int) -> None: ...

    def counter(self, key: str) -> int | None: ...

    def delete(self, key: str) -> None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...


def as_bytes(value: Any) -> bytes:
    """A state value: bytes as they are, str as UTF-8 (what Pulsar's put_state takes)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"put_state takes bytes or str, not {type(value).__qualname__}")


class MemoryState:
    """The state in memory: for `pulsarfunc.testing` (and any test), thread-safe."""

    def __init__(self, initial: Mapping[str, int | bytes | str] | None = None) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.values: dict[str, bytes] = {}
        for key, value in (initial or {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                self.counters[key] = value
            else:
                self.values[key] = as_bytes(value)

    def incr(self, key: str, amount: int) -> None:
        with self._lock:
            self.values.pop(key, None)
            self.counters[key] = self.counters.get(key, 0) + amount

    def counter(self, key: str) -> int | None:
        with self._lock:
            return self.counters.get(key)

    def delete(self, key: str) -> None:
        with self._lock:
            self.counters.pop(key, None)
            self.values.pop(key, None)

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self.counters.pop(key, None)
            self.values[key] = value

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self.values.get(key)

    def snapshot(self) -> dict[str, int | bytes]:
        """Every key: counters as ints, values as bytes."""
        with self._lock:
            return {**self.values, **self.counters}


def table_of(config: FunctionConfig) -> tuple[str, str]:
    """(namespace, table) of the function's state, named as Pulsar's Python instance names it."""
    return f"{config.tenant}_{config.namespace}".replace("-", "_"), config.name


class BookKeeperState:
    """The function's table in BookKeeper's table service (see the module docstring)."""

    def __init__(self, url: str, namespace: str, table: str) -> None:
        try:
            from bookkeeper import admin, kv  # pulsarfunc[state]
            from bookkeeper.common.exceptions import (
                KeyNotFoundError,
                NamespaceNotFoundError,
                StreamNotFoundError,
            )
            from bookkeeper.types import StorageClientSettings
        except ImportError as exc:
            raise StateError(
                f"--state-storage-service-url is set, but the state client is not installed "
                f"({exc})",
                STATE_EXTRA,
            ) from None
        self._missing = KeyNotFoundError
        where = f"state storage {url} (namespace {namespace}, table {table})"
        self._where = where
        _reachable(url, where)
        try:
            settings = StorageClientSettings(service_uri=url)
            admin_client = admin.client.Client(storage_client_settings=settings)
            ns = admin_client.namespace(namespace)
            try:
                ns.get(stream_name=table)
            except NamespaceNotFoundError:
                admin_client.namespaces().create(namespace=namespace)
                ns.create(stream_name=table, stream_config=_table_conf())
            except StreamNotFoundError:
                ns.create(stream_name=table, stream_config=_table_conf())
            self._table = kv.Client(storage_client_settings=settings, namespace=namespace).table(
                table_name=table
            )
        except Exception as exc:
            raise StateError(
                f"cannot open the {where}: {type(exc).__name__}: {exc}",
                "check --state-storage-service-url (bk://HOST:4181) and that Pulsar's stream "
                "storage runs (a standalone broker started without -nss)",
            ) from None

    def _call(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except self._missing:
            return None
        except Exception as exc:
            raise StateError(
                f"{what} in the {self._where} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def incr(self, key: str, amount: int) -> None:
        self._call(f"incr_counter({key!r})", self._table.incr_str, key, amount)

    def counter(self, key: str) -> int | None:
        kv = self._call(f"get_counter({key!r})", self._table.get_str, key)
        return None if kv is None else int(kv.number_value)

    def delete(self, key: str) -> None:
        self._call(f"del_counter({key!r})", self._table.delete_str, key)

    def put(self, key: str, value: bytes) -> None:
        self._call(f"put_state({key!r})", self._table.put, key.encode("utf-8"), value)

    def get(self, key: str) -> bytes | None:
        kv = self._call(f"get_state({key!r})", self._table.get_str, key)
        return None if kv is None else bytes(kv.value)


def _reachable(url: str, where: str) -> None:
    """Fail fast on a storage nobody listens at (the client would retry for a minute)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port
    if parts.scheme != "bk" or not host or not port:
        raise StateError(
            f"invalid state storage URL {url!r}", "give it as bk://HOST:PORT, e.g. bk://pulsar:4181"
        )
    try:
        socket.create_connection((host, port), timeout=_CONNECT_S).close()
    except OSError as exc:
        raise StateError(
            f"cannot reach the {where}: {exc}",
            "check --state-storage-service-url and that Pulsar's stream storage runs (a "
            "standalone broker started without -nss)",
        ) from None


def _table_conf() -> Any:
    """Pulsar's Python instance's table configuration (`new_bk_table_conf`)."""
    from bookkeeper.proto import stream_pb2

    return stream_pb2.StreamConfiguration(
        key_type=stream_pb2.HASH,
        min_num_ranges=_TABLE_RANGES,
        initial_num_ranges=_TABLE_RANGES,
        split_policy=stream_pb2.SplitPolicy(
            type=stream_pb2.SplitPolicyType.values()[0],
            fixed_range_policy=stream_pb2.FixedRangeSplitPolicy(num_ranges=2),
        ),
        rolling_policy=stream_pb2.SegmentRollingPolicy(
            size_policy=stream_pb2.SizeBasedSegmentRollingPolicy(max_segment_size=128 * 1024 * 1024)
        ),
        retention_policy=stream_pb2.RetentionPolicy(
            time_policy=stream_pb2.TimeBasedRetentionPolicy(retention_minutes=-1)
        ),
        storage_type=stream_pb2.TABLE,
    )


def open_state(config: FunctionConfig) -> StateStore | None:
    """The function's state store, or None without a state URL; StateError if unreachable."""
    if not config.state_storage_service_url:
        return None
    namespace, table = table_of(config)
    return BookKeeperState(config.state_storage_service_url, namespace, table)
