"""What one instance remembers about messages the broker may send it again.

Pulsar redelivers a nacked message, and unless the broker acknowledges at batch-index level
(`acknowledgmentAtBatchIndexLevelEnabled`, off by default) it redelivers the whole producer
batch the message came in, siblings already processed and acknowledged included; after a lost
connection it redelivers what was unacknowledged, and acknowledgements that were in flight may
be lost. Remembering what was settled lets the instance acknowledge such copies on arrival
instead of running the handler (and producing outputs) again. Failover and exclusive
subscriptions keep no redelivery count in the broker, so attempts are counted here as well.

Everything is keyed by the serialized message id, which names the topic partition, ledger,
entry and batch index. A non-persistent topic's ids are not unique (every message is ledger 0,
entry 0), so its messages are never remembered, matched or counted by id.

Copies can come back only for a while after a failure or a lost connection: from then until
`QUIET_S` passed without another, the instance is *watching* and remembers settled messages by
id (at most LIMIT). Otherwise settled messages are only kept by reference, the last RECENT of
them (where the siblings of a message that fails next are), so the hot path pays nothing.
Attempts of a message that does not come back within QUIET_S are forgotten with it.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from pulsarfunc.runtime.transport import InMessage

LIMIT = 100_000  # ids remembered per kind: several redelivery delays' worth of messages
RECENT = 4_096  # settled messages kept by reference while not watching: 4 producer batches
QUIET_S = 60.0  # watching ends this long after the last failure or lost connection
_NON_PERSISTENT = "non-persistent://"


class Seen(enum.Enum):
    """What a received message is to this instance."""

    FRESH = "fresh"  # process it
    COPY = "copy"  # settled or dead-lettered here already: acknowledge it, do not process it
    PENDING = "pending"  # its dead-letter send is in flight: neither process nor acknowledge


class _Bounded:
    """An insertion-ordered map of keys that forgets its oldest beyond `limit`."""

    def __init__(self, limit: int) -> None:
        self._keys: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self._limit = limit

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def put(self, key: bytes, value: int = 0, at: float = 0.0) -> None:
        self._keys[key] = (value, at)
        self._keys.move_to_end(key)
        if len(self._keys) > self._limit:
            self._keys.popitem(last=False)

    def get(self, key: bytes) -> int:
        return self._keys.get(key, (0, 0.0))[0]

    def discard(self, key: bytes) -> None:
        self._keys.pop(key, None)

    def expire(self, before: float) -> None:
        """Forget the entries last put before `before` (the oldest come first)."""
        while self._keys:
            key, (_, at) = next(iter(self._keys.items()))
            if at >= before:
                return
            del self._keys[key]


def non_persistent(msg: InMessage) -> bool:
    """From a non-persistent topic: its id is not unique, and the broker keeps nothing of it."""
    return msg.topic_name().startswith(_NON_PERSISTENT)


def key_of(msg: InMessage) -> bytes | None:
    """The message's identity, or None where ids are not unique (non-persistent topics)."""
    if non_persistent(msg):
        return None
    return msg.message_id().serialize()


class Redeliveries:
    """Attempts, dead letters and settled messages of one instance (thread-safe)."""

    def __init__(
        self,
        limit: int = LIMIT,
        *,
        quiet_s: float = QUIET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._quiet_s = quiet_s
        self._attempts = _Bounded(limit)
        self._dead_lettered = _Bounded(limit)
        self._dead_lettering: set[bytes] = set()
        self._settled = _Bounded(limit)
        self._recent: deque[Sequence[InMessage]] = deque()
        self._recent_count = 0
        self._watch_until = 0.0

    @property
    def watching(self) -> bool:
        """Copies may come back: a failure or a lost connection was less than QUIET_S ago."""
        return self._clock() < self._watch_until

    @property
    def failing(self) -> bool:
        """Some message failed here recently and was not settled since."""
        if not self._attempts:
            return False
        with self._lock:
            self._attempts.expire(self._clock() - self._quiet_s)
            return bool(self._attempts)

    def watch(self) -> None:
        """From now on (for QUIET_S) copies can come back: a reconnect redelivers what was in
        flight, and partly acknowledged batches."""
        with self._lock:
            self._watch()

    def _watch(self) -> None:
        now = self._clock()
        if now >= self._watch_until:  # settled just before: they may come back
            for group in self._recent:
                for msg in group:
                    if (key := key_of(msg)) is not None:
                        self._settled.put(key)
            self._recent.clear()
            self._recent_count = 0
        self._watch_until = now + self._quiet_s

    def attempt(self, msg: InMessage) -> int:
        """Count one more failed attempt, to be retried by the broker; the total, never below
        the broker's own count."""
        key = key_of(msg)
        with self._lock:
            self._watch()
            if key is None:
                return msg.redelivery_count() + 1
            local = self._attempts.get(key) + 1
            self._attempts.put(key, local, self._clock())
        return max(local, msg.redelivery_count() + 1)

    def settled(self, msgs: Sequence[InMessage]) -> None:
        """These messages are done (acked): copies of them are duplicates."""
        with self._lock:
            if not self.watching:
                self._recent.append(msgs)
                self._recent_count += len(msgs)
                while len(self._recent) > 1 and self._recent_count - len(self._recent[0]) >= RECENT:
                    self._recent_count -= len(self._recent.popleft())
                return
        keys = [key for msg in msgs if (key := key_of(msg)) is not None]
        with self._lock:
            for key in keys:
                self._settled.put(key)
                self._attempts.discard(key)

    def dead_lettering(self, msg: InMessage) -> None:
        """`msg` is being sent to the dead-letter topic: its copies wait for the outcome."""
        key = key_of(msg)
        if key is not None:
            with self._lock:
                self._dead_lettering.add(key)
                self._attempts.discard(key)

    def dead_lettered(self, msg: InMessage, *, persisted: bool) -> None:
        """The dead-letter send of `msg` is persisted (its copies are acknowledged from now
        on), or failed (`persisted=False`: it will be processed again)."""
        key = key_of(msg)
        if key is None:
            return
        with self._lock:
            self._dead_lettering.discard(key)
            if persisted:
                self._dead_lettered.put(key)

    def seen(self, msg: InMessage) -> Seen:
        """Whether `msg` is new here, a copy of what was settled, or waits for a dead letter."""
        key = key_of(msg)
        if key is None:
            return Seen.FRESH
        with self._lock:
            if key in self._settled or key in self._dead_lettered:
                return Seen.COPY
            if key in self._dead_lettering:
                return Seen.PENDING
            return Seen.FRESH
