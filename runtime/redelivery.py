"""What one instance remembers about messages the broker may send it again.

Pulsar redelivers a nacked message, and unless the broker acknowledges at batch-index level
(`acknowledgmentAtBatchIndexLevelEnabled`, off by default) it redelivers the whole producer
batch the message came in, siblings already processed and acknowledged included. Remembering
what was settled lets the instance acknowledge such copies on arrival instead of running the
handler (and producing outputs) again. Failover and exclusive subscriptions keep no
redelivery count in the broker, so attempts are counted here as well.

Everything is bounded (oldest forgotten first) and keyed by the serialized message id, which
names the topic partition, ledger, entry and batch index. Until the first failure or the first
lost connection nothing can come back, so settled messages are only kept by reference (the last
RECENT_GROUPS groups they were settled in, RECENT messages at most: what a few hundred ms of
processing settles, where the siblings of a message are), and by id from then on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence

from pulsarfunc.runtime.transport import InMessage

LIMIT = 100_000  # ids remembered per kind: several redelivery delays' worth of messages
RECENT_GROUPS = 64  # settled groups kept by reference before the first failure
RECENT = 16_000  # and messages in them at most


class _Bounded:
    """An insertion-ordered set of keys that forgets its oldest beyond `limit`."""

    def __init__(self, limit: int) -> None:
        self._keys: OrderedDict[bytes, int] = OrderedDict()
        self._limit = limit

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def put(self, key: bytes, value: int = 0) -> None:
        self._keys[key] = value
        self._keys.move_to_end(key)
        if len(self._keys) > self._limit:
            self._keys.popitem(last=False)

    def get(self, key: bytes) -> int:
        return self._keys.get(key, 0)

    def discard(self, key: bytes) -> None:
        self._keys.pop(key, None)


def _key(msg: InMessage) -> bytes:
    return msg.message_id().serialize()


class Redeliveries:
    """Attempts, dead letters and settled messages of one instance (thread-safe)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._lock = threading.Lock()
        self._attempts = _Bounded(limit)
        self._dead_lettered = _Bounded(limit)
        self._settled = _Bounded(limit)
        self._recent: deque[Sequence[InMessage]] = deque()
        self._recent_count = 0
        self.watching = False  # set by the first failure or reconnect: copies can come back

    @property
    def failing(self) -> bool:
        """Some message failed and was not yet settled (its attempts are being counted)."""
        return bool(self._attempts)

    def attempt(self, msg: InMessage) -> int:
        """Count one more failed attempt; the total, never below the broker's own count."""
        key = _key(msg)
        with self._lock:
            local = self._attempts.get(key) + 1
            self._attempts.put(key, local)
            self._watch()
        return max(local, msg.redelivery_count() + 1)

    def watch(self) -> None:
        """From now on copies can come back (a reconnect: what was in flight, and partly
        acknowledged batches, are delivered again): remember settled messages by id."""
        with self._lock:
            self._watch()

    def _watch(self) -> None:
        if not self.watching:
            self.watching = True
            for group in self._recent:  # settled just before: they may come back
                for settled in group:
                    self._settled.put(_key(settled))
            self._recent.clear()
            self._recent_count = 0

    def settled(self, msgs: Sequence[InMessage]) -> None:
        """These messages are done (acked): copies of them are duplicates."""
        with self._lock:
            if not self.watching:
                self._recent.append(msgs)
                self._recent_count += len(msgs)
                while len(self._recent) > 1 and (
                    len(self._recent) > RECENT_GROUPS or self._recent_count > RECENT
                ):
                    self._recent_count -= len(self._recent.popleft())
                return
        keys = [_key(msg) for msg in msgs]
        with self._lock:
            for key in keys:
                self._settled.put(key)
                if self._attempts:
                    self._attempts.discard(key)

    def dead_lettered(self, msg: InMessage, done: bool = True) -> None:
        """`msg` is (being) dead-lettered; `done=False` takes that back after a failed send."""
        key = _key(msg)
        with self._lock:
            if done:
                self._dead_lettered.put(key)
                self._attempts.discard(key)
            else:
                self._dead_lettered.discard(key)

    def is_dead_lettered(self, msg: InMessage) -> bool:
        key = _key(msg)
        with self._lock:
            return key in self._dead_lettered

    def is_copy(self, msg: InMessage) -> bool:
        """`msg` was already settled or dead-lettered here: acknowledge it, do not process it."""
        key = _key(msg)
        with self._lock:
            return key in self._settled or key in self._dead_lettered
