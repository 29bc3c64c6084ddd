"""What one instance remembers of messages the broker may send again (issue 12: a, e, h)."""

from __future__ import annotations

import pytest
from fake_broker import FakeId, FakeMessage

from pulsarfunc.runtime.redelivery import RECENT, Redeliveries, Seen, key_of

NON_PERSISTENT = "non-persistent://public/default/in"
QUIET_S = 10.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_redeliveries(limit: int = 100_000) -> tuple[Redeliveries, Clock]:
    clock = Clock()
    return Redeliveries(limit, quiet_s=QUIET_S, clock=clock), clock


def copy_of(msg: FakeMessage, redeliveries: int = 1) -> FakeMessage:
    """The same message as the broker sends it again (same id, one more redelivery)."""
    return FakeMessage(msg.payload, topic=msg.topic, redeliveries=redeliveries, mid=msg.mid)


def non_persistent(payload: bytes = b"np", redeliveries: int = 0) -> FakeMessage:
    """A message of a non-persistent topic: the broker gives every one ledger 0, entry 0."""
    return FakeMessage(
        payload, topic=NON_PERSISTENT, redeliveries=redeliveries, mid=FakeId(0, 0, -1)
    )


class Unreadable(FakeMessage):
    """A message whose id must not be computed."""

    def message_id(self) -> FakeId:
        raise AssertionError("message_id() called on the hot path")


# -- a: non-persistent topics ----------------------------------------------------------------------


def test_key_of_is_none_for_non_persistent_messages_and_the_serialized_id_otherwise() -> None:
    persistent = FakeMessage(b"p", mid=FakeId(3, 4, 5))
    assert key_of(non_persistent()) is None
    assert key_of(persistent) == FakeId(3, 4, 5).serialize()


def test_a_settled_non_persistent_message_never_makes_another_one_a_copy() -> None:
    tracked, _ = new_redeliveries()
    tracked.settled([non_persistent(b"before")])  # kept by reference, then watched
    tracked.watch()
    tracked.settled([non_persistent(b"while watching")])
    assert tracked.watching
    assert tracked.seen(non_persistent(b"another")) is Seen.FRESH


def test_attempts_of_non_persistent_messages_come_only_from_the_brokers_count() -> None:
    tracked, _ = new_redeliveries()
    assert tracked.attempt(non_persistent(b"a")) == 1
    assert tracked.attempt(non_persistent(b"b")) == 1  # same id, another message: not added
    assert tracked.attempt(non_persistent(b"c", redeliveries=4)) == 5
    assert not tracked.failing


def test_dead_lettering_a_non_persistent_message_changes_nothing() -> None:
    tracked, _ = new_redeliveries()
    letter = non_persistent(b"poison")
    tracked.dead_lettering(letter)
    assert tracked.seen(non_persistent(b"next")) is Seen.FRESH
    tracked.dead_lettered(letter, persisted=True)
    assert tracked.seen(non_persistent(b"next")) is Seen.FRESH


# -- e: dead letters in flight ---------------------------------------------------------------------


def test_a_copy_of_a_message_being_dead_lettered_is_pending() -> None:
    tracked, _ = new_redeliveries()
    msg = FakeMessage(b"poison")
    tracked.dead_lettering(msg)
    assert tracked.seen(copy_of(msg)) is Seen.PENDING
    assert tracked.seen(FakeMessage(b"other")) is Seen.FRESH


def test_a_copy_of_a_persisted_dead_letter_is_a_copy() -> None:
    tracked, _ = new_redeliveries()
    msg = FakeMessage(b"poison")
    tracked.dead_lettering(msg)
    tracked.dead_lettered(msg, persisted=True)
    assert tracked.seen(copy_of(msg)) is Seen.COPY


def test_a_copy_of_a_failed_dead_letter_is_fresh_again() -> None:
    tracked, _ = new_redeliveries()
    msg = FakeMessage(b"poison")
    tracked.dead_lettering(msg)
    tracked.dead_lettered(msg, persisted=False)
    assert tracked.seen(copy_of(msg)) is Seen.FRESH


def test_dead_lettering_forgets_the_messages_attempts() -> None:
    tracked, _ = new_redeliveries()
    msg = FakeMessage(b"poison")
    tracked.attempt(msg)
    assert tracked.failing
    tracked.dead_lettering(msg)
    assert not tracked.failing


# -- h: settled messages before any failure --------------------------------------------------------


def test_the_last_recent_settled_single_messages_become_copies_once_watching() -> None:
    tracked, _ = new_redeliveries()
    msgs = [FakeMessage(b"x", mid=FakeId(2, entry)) for entry in range(RECENT + 50)]
    for msg in msgs:
        tracked.settled([msg])
    assert tracked.seen(copy_of(msgs[-1])) is Seen.FRESH  # only by reference so far
    watching = [tracked.watching]
    tracked.attempt(FakeMessage(b"failed"))
    watching.append(tracked.watching)
    assert watching == [False, True]
    remembered = [tracked.seen(copy_of(msg)) is Seen.COPY for msg in msgs]
    assert remembered == [False] * 50 + [True] * RECENT


def test_the_last_recent_settled_messages_of_large_groups_become_copies_once_watching() -> None:
    tracked, _ = new_redeliveries()
    size = 1000
    groups = [
        [FakeMessage(b"x", mid=FakeId(3, entry, index)) for index in range(size)]
        for entry in range(10)
    ]
    for group in groups:
        tracked.settled(group)
    tracked.watch()
    flat = [msg for group in groups for msg in group]
    remembered = [tracked.seen(copy_of(msg)) is Seen.COPY for msg in flat]
    assert all(remembered[-RECENT:])
    oldest_kept = (len(flat) - RECENT) // size  # whole groups are kept: siblings stay together
    assert remembered[: oldest_kept * size] == [False] * (oldest_kept * size)
    assert oldest_kept > 0


def test_settled_messages_of_mixed_group_sizes_keep_the_last_recent() -> None:
    tracked, _ = new_redeliveries()
    big = [FakeMessage(b"b", mid=FakeId(4, 0, index)) for index in range(RECENT + 10)]
    singles = [FakeMessage(b"s", mid=FakeId(4, 1 + entry)) for entry in range(RECENT)]
    tracked.settled(big)
    for msg in singles:
        tracked.settled([msg])
    tracked.watch()
    assert all(tracked.seen(copy_of(msg)) is Seen.COPY for msg in singles)
    assert not any(tracked.seen(copy_of(msg)) is Seen.COPY for msg in big)


# -- watching and failing --------------------------------------------------------------------------


def test_watching_lasts_quiet_s_after_an_attempt() -> None:
    tracked, clock = new_redeliveries()
    watching = [tracked.watching]
    tracked.attempt(FakeMessage(b"x"))
    watching.append(tracked.watching)
    clock.now += QUIET_S - 0.1
    watching.append(tracked.watching)
    clock.now += 0.1
    watching.append(tracked.watching)
    assert watching == [False, True, True, False]


def test_watching_lasts_quiet_s_after_the_last_watch() -> None:
    tracked, clock = new_redeliveries()
    tracked.watch()
    clock.now += QUIET_S / 2
    tracked.watch()  # a second reconnect extends it
    clock.now += QUIET_S / 2 + 1.0
    watching = [tracked.watching]
    clock.now += QUIET_S / 2
    watching.append(tracked.watching)
    assert watching == [True, False]


def test_failing_after_a_failed_attempt_ends_once_quiet_s_passed() -> None:
    tracked, clock = new_redeliveries()
    failing = [tracked.failing]
    tracked.attempt(FakeMessage(b"x"))
    failing.append(tracked.failing)
    clock.now += QUIET_S
    failing.append(tracked.failing)
    clock.now += 0.1
    failing.append(tracked.failing)
    assert failing == [False, True, True, False]


def test_forgotten_attempts_start_counting_again() -> None:
    tracked, clock = new_redeliveries()
    msg = FakeMessage(b"x")
    assert tracked.attempt(msg) == 1
    assert tracked.attempt(msg) == 2
    clock.now += QUIET_S + 1.0
    assert not tracked.failing
    assert tracked.attempt(msg) == 1


def test_failing_ends_as_soon_as_the_failed_message_is_settled() -> None:
    tracked, _ = new_redeliveries()
    msg = FakeMessage(b"x")
    tracked.attempt(msg)
    assert tracked.failing
    tracked.settled([copy_of(msg)])
    assert not tracked.failing


def test_failing_ends_once_every_failed_message_is_settled() -> None:
    tracked, _ = new_redeliveries()
    first, second = FakeMessage(b"a"), FakeMessage(b"b")
    tracked.attempt(first)
    tracked.attempt(second)
    tracked.settled([copy_of(first)])
    assert tracked.failing
    tracked.settled([copy_of(second)])
    assert not tracked.failing


def test_a_message_settled_while_watching_is_a_copy() -> None:
    tracked, _ = new_redeliveries()
    tracked.watch()
    msg = FakeMessage(b"x")
    tracked.settled([msg])
    assert tracked.seen(copy_of(msg)) is Seen.COPY
    assert tracked.seen(FakeMessage(b"y")) is Seen.FRESH


def test_settled_before_any_failure_does_not_compute_message_ids() -> None:
    tracked, _ = new_redeliveries()
    tracked.settled([Unreadable(b"x"), Unreadable(b"y")])
    assert not tracked.watching


def test_settled_after_watching_ended_does_not_compute_message_ids() -> None:
    tracked, clock = new_redeliveries()
    tracked.watch()
    clock.now += QUIET_S
    assert not tracked.watching
    tracked.settled([Unreadable(b"z")])


def test_settled_while_watching_computes_message_ids() -> None:
    tracked, _ = new_redeliveries()
    tracked.watch()
    with pytest.raises(AssertionError, match="message_id"):
        tracked.settled([Unreadable(b"x")])


def test_a_message_settled_after_watching_ended_is_remembered_at_the_next_failure() -> None:
    tracked, clock = new_redeliveries()
    tracked.watch()
    clock.now += QUIET_S + 1.0
    msg = FakeMessage(b"x")
    tracked.settled([msg])
    assert tracked.seen(copy_of(msg)) is Seen.FRESH
    tracked.attempt(FakeMessage(b"failed"))
    assert tracked.seen(copy_of(msg)) is Seen.COPY


# -- attempts and limits ---------------------------------------------------------------------------


def test_attempt_is_the_local_count_when_the_broker_counts_less() -> None:
    tracked, _ = new_redeliveries()
    msg = FakeMessage(b"x")
    assert [tracked.attempt(copy_of(msg, redeliveries=0)) for _ in range(3)] == [1, 2, 3]


def test_attempt_is_the_brokers_count_plus_one_when_it_counts_more() -> None:
    tracked, _ = new_redeliveries()
    msg = FakeMessage(b"x")
    tracked.attempt(msg)
    assert tracked.attempt(copy_of(msg, redeliveries=5)) == 6
    assert tracked.attempt(copy_of(msg, redeliveries=0)) == 3  # local: 3 attempts here


def test_settled_ids_beyond_the_limit_forget_the_oldest() -> None:
    tracked, _ = new_redeliveries(limit=3)
    tracked.watch()
    msgs = [FakeMessage(b"x") for _ in range(5)]
    tracked.settled(msgs)
    assert [tracked.seen(copy_of(msg)) for msg in msgs] == [Seen.FRESH] * 2 + [Seen.COPY] * 3


def test_dead_letter_ids_beyond_the_limit_forget_the_oldest() -> None:
    tracked, _ = new_redeliveries(limit=2)
    msgs = [FakeMessage(b"x") for _ in range(3)]
    for msg in msgs:
        tracked.dead_lettering(msg)
        tracked.dead_lettered(msg, persisted=True)
    assert [tracked.seen(copy_of(msg)) for msg in msgs] == [Seen.FRESH, Seen.COPY, Seen.COPY]


def test_attempt_counts_beyond_the_limit_forget_the_oldest() -> None:
    tracked, _ = new_redeliveries(limit=2)
    first, second, third = (FakeMessage(b"x") for _ in range(3))
    for msg in (first, first, second, third):
        tracked.attempt(msg)
    assert tracked.attempt(first) == 1  # forgotten: counted from the broker's count again
    assert tracked.attempt(third) == 2
