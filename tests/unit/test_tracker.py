"""The one settlement tracker: tickets, groups, parked retries and in-flight counts."""

from __future__ import annotations

import threading
import time

from fake_broker import FakeMessage, FakeSource
from waiting import wait_for

from pulsarfunc.runtime.tracker import Parked, Ticket, Tracker


def tracker_with_ready() -> tuple[Tracker, list[list[Ticket]]]:
    """A tracker whose `on_ready` calls are recorded, one list per call."""
    tracker = Tracker()
    calls: list[list[Ticket]] = []
    tracker.on_ready = lambda tickets: calls.append(list(tickets))
    return tracker, calls


def messages(count: int) -> list[FakeMessage]:
    return [FakeMessage(f"m{i}".encode()) for i in range(count)]


# -- ungrouped tickets -----------------------------------------------------------------------------


def test_the_handlers_release_makes_an_ungrouped_ticket_ready_exactly_once() -> None:
    tracker, calls = tracker_with_ready()
    ticket = tracker.open(FakeSource(), FakeMessage(b"x"))
    assert calls == []
    tracker.release(ticket)
    assert calls == [[ticket]]
    assert ticket.settled
    tracker.release(ticket)  # a stray second release hands nothing on again
    assert calls == [[ticket]]


def test_a_held_send_delays_readiness_until_its_release() -> None:
    tracker, calls = tracker_with_ready()
    ticket = tracker.open(FakeSource(), FakeMessage(b"x"))
    assert tracker.hold(ticket)
    tracker.release(ticket)  # the handler returned; the send is still pending
    assert calls == []
    assert not ticket.settled
    tracker.release(ticket)  # the send's receipt
    assert calls == [[ticket]]


def test_a_release_on_another_thread_hands_the_ticket_on_from_that_thread() -> None:
    tracker = Tracker()
    ready_on: list[str] = []
    tracker.on_ready = lambda tickets: ready_on.append(threading.current_thread().name)
    ticket = tracker.open(FakeSource(), FakeMessage(b"x"))
    tracker.hold(ticket)
    tracker.release(ticket)
    receipt = threading.Thread(target=tracker.release, args=(ticket,), name="client-io")
    receipt.start()
    wait_for(lambda: ready_on != [])
    receipt.join()
    assert ready_on == ["client-io"]


def test_hold_after_the_ticket_is_settled_returns_false_and_changes_nothing() -> None:
    tracker, calls = tracker_with_ready()
    ticket = tracker.open(FakeSource(), FakeMessage(b"x"))
    tracker.release(ticket)
    assert not tracker.hold(ticket)
    assert ticket.pending == 0
    assert calls == [[ticket]]


def test_fail_keeps_the_first_error_and_says_whether_it_was_first() -> None:
    tracker, _ = tracker_with_ready()
    ticket = tracker.open(FakeSource(), FakeMessage(b"x"))
    first, second, third = ValueError("first"), ValueError("second"), ValueError("third")
    assert tracker.fail(ticket, first)
    assert not tracker.fail(ticket, second)
    tracker.release(ticket, third)
    assert ticket.error is first


def test_an_error_given_with_release_counts_as_the_first_error() -> None:
    tracker, _ = tracker_with_ready()
    ticket = tracker.open(FakeSource(), FakeMessage(b"x"))
    tracker.hold(ticket)
    send_error = RuntimeError("send refused")
    tracker.release(ticket, send_error)
    assert not tracker.fail(ticket, ValueError("later"))
    tracker.release(ticket)
    assert ticket.error is send_error


def test_release_all_hands_on_only_the_tickets_reaching_zero_in_one_call() -> None:
    tracker, calls = tracker_with_ready()
    source = FakeSource()
    done, still_held, failed = (tracker.open(source, m) for m in messages(3))
    for ticket in (done, still_held, still_held, failed):
        tracker.hold(ticket)
    for ticket in (done, still_held, failed):
        tracker.release(ticket)  # the handlers returned
    assert calls == []
    errors: dict[int, Exception] = {1: RuntimeError("one"), 3: RuntimeError("three")}
    tracker.release_all([done, still_held, None, failed], errors)
    assert calls == [[done, failed]]
    assert done.error is None
    assert still_held.error is errors[1]  # recorded, though it waits for its other send
    assert failed.error is errors[3]
    tracker.release_all([still_held], {0: RuntimeError("later")})
    assert calls == [[done, failed], [still_held]]
    assert still_held.error is errors[1]


def test_release_all_of_untracked_outputs_only_hands_nothing_on() -> None:
    tracker, calls = tracker_with_ready()
    tracker.release_all([None, None], {0: RuntimeError("lost")})
    assert calls == []


# -- groups ----------------------------------------------------------------------------------------


def test_open_group_counts_every_message_in_flight() -> None:
    tracker = Tracker()
    tracker.open_group(FakeSource(), messages(5))
    assert tracker.in_flight == 5


def test_a_groups_ticket_is_made_once_and_reused() -> None:
    tracker = Tracker()
    msgs = messages(3)
    group = tracker.open_group(FakeSource(), msgs, {1: 2})
    ticket = tracker.ticket(group, 1)
    assert tracker.ticket(group, 1) is ticket
    assert ticket.msg is msgs[1]
    assert ticket.group is group
    assert ticket.source is group.source
    assert ticket.attempts == 2
    assert ticket.started == group.began
    assert group.tickets == {1: ticket}


def test_concurrent_calls_make_one_ticket_per_message() -> None:
    tracker = Tracker()
    group = tracker.open_group(FakeSource(), messages(4))
    threads_count = 16
    start = threading.Barrier(threads_count)
    made: list[list[Ticket]] = [[] for _ in range(threads_count)]

    def take(slot: int) -> None:
        start.wait()
        made[slot].extend(tracker.ticket(group, index) for index in range(4))

    threads = [threading.Thread(target=take, args=(slot,)) for slot in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(4):
        assert {id(tickets[index]) for tickets in made} == {id(group.tickets[index])}
    assert len(group.tickets) == 4


def test_issued_and_receipt_make_the_group_unsent_then_sent() -> None:
    tracker = Tracker()
    group = tracker.open_group(FakeSource(), messages(2))
    sent = [group.sent]  # nothing issued
    tracker.issued(group)
    tracker.issued(group)
    sent.append(group.sent)
    tracker.receipt(group, {})
    sent.append(group.sent)
    tracker.receipt(group, {})
    sent.append(group.sent)
    assert sent == [True, False, False, True]


def test_receipts_record_send_errors_by_message_index_first_wins() -> None:
    tracker = Tracker()
    group = tracker.open_group(FakeSource(), messages(3))
    first, later, other = RuntimeError("first"), RuntimeError("later"), RuntimeError("other")
    tracker.issued(group)
    tracker.issued(group)
    tracker.receipt(group, {1: first})
    tracker.receipt(group, {1: later, 2: other})
    assert group.send_errors == {1: first, 2: other}
    assert group.sent


def test_a_publish_hold_on_a_grouped_ticket_counts_on_the_group() -> None:
    tracker, calls = tracker_with_ready()
    group = tracker.open_group(FakeSource(), messages(2))
    ticket = tracker.ticket(group, 0)
    assert tracker.hold(ticket)
    assert (group.issued, group.done) == (1, 0)
    sent = [group.sent]
    assert ticket.pending == 1  # the group counts, not the ticket
    error = RuntimeError("publish refused")
    tracker.release(ticket, error)
    assert (group.issued, group.done) == (1, 1)
    sent.append(group.sent)
    assert sent == [False, True]
    assert ticket.error is error
    assert calls == []  # a group is settled by its engine, never handed on ticket by ticket


# -- claiming --------------------------------------------------------------------------------------


def test_claim_group_is_true_once_and_settles_its_tickets() -> None:
    tracker = Tracker()
    group = tracker.open_group(FakeSource(), messages(2))
    ticket = tracker.ticket(group, 1)
    assert tracker.claim_group(group)
    assert group.settled
    assert ticket.settled
    assert not tracker.hold(ticket)  # a late publish no longer holds the settled group
    assert not tracker.claim_group(group)


def test_claim_returns_only_the_tickets_still_open() -> None:
    tracker = Tracker()
    source = FakeSource()
    first, second, third = (tracker.open(source, m) for m in messages(3))
    assert tracker.claim([first, second]) == [first, second]
    assert first.settled
    assert second.settled
    assert tracker.claim([first, third, second]) == [third]
    assert tracker.claim([third]) == []


# -- in flight -------------------------------------------------------------------------------------


def test_finished_takes_messages_out_of_flight() -> None:
    tracker = Tracker()
    source = FakeSource()
    tracker.open(source, FakeMessage(b"x"))
    tracker.open_group(source, messages(3))
    assert tracker.in_flight == 4
    tracker.finished(3)
    assert tracker.in_flight == 1
    tracker.finished()
    assert tracker.in_flight == 0


def test_wait_idle_is_true_at_once_when_nothing_is_in_flight() -> None:
    tracker = Tracker()
    assert tracker.wait_idle(time.monotonic() + 0.05)


def test_wait_idle_is_false_at_a_short_deadline_while_something_is_in_flight() -> None:
    tracker = Tracker()
    tracker.open(FakeSource(), FakeMessage(b"x"))
    began = time.monotonic()
    assert not tracker.wait_idle(began + 0.05)
    assert time.monotonic() - began >= 0.05


def test_wait_idle_returns_true_when_the_last_message_finishes_meanwhile() -> None:
    tracker = Tracker()
    tracker.open_group(FakeSource(), messages(2))
    timer = threading.Timer(0.05, tracker.finished, args=(2,))
    timer.start()
    try:
        assert tracker.wait_idle(time.monotonic() + 5.0)
    finally:
        timer.cancel()
    assert tracker.in_flight == 0


def test_wait_room_is_true_below_the_limit_and_false_at_it_after_the_timeout() -> None:
    tracker = Tracker()
    tracker.open_group(FakeSource(), messages(2))
    assert tracker.wait_room(3, 0.0)
    began = time.monotonic()
    assert not tracker.wait_room(2, 0.05)
    assert time.monotonic() - began >= 0.05


def test_wait_room_returns_true_once_a_message_finishes() -> None:
    tracker = Tracker()
    tracker.open_group(FakeSource(), messages(2))
    timer = threading.Timer(0.05, tracker.finished)
    timer.start()
    try:
        assert tracker.wait_room(2, 5.0)
    finally:
        timer.cancel()
    assert tracker.in_flight == 1


# -- parking ---------------------------------------------------------------------------------------


def parked(source: FakeSource, due: float, attempts: int = 1) -> Parked:
    return Parked(source, FakeMessage(f"due {due}".encode()), attempts, due)


def test_due_returns_due_messages_of_that_source_oldest_first_and_leaves_the_rest() -> None:
    tracker = Tracker()
    mine, other = FakeSource(), FakeSource()
    first, later, theirs, second = (
        parked(mine, 1.0),
        parked(mine, 50.0),
        parked(other, 1.0),
        parked(mine, 0.5),
    )
    tracker.park([first, later, theirs, second])
    assert tracker.due(mine, 10.0, 10) == [first, second]
    assert tracker.parked(mine) == 1
    assert tracker.parked(other) == 1
    assert tracker.parked() == 2
    assert tracker.due(mine, 10.0, 10) == []
    assert tracker.due(mine, 50.0, 10) == [later]
    assert tracker.due(other, 10.0, 10) == [theirs]
    assert tracker.parked() == 0


def test_due_takes_at_most_limit_messages_and_keeps_the_others_for_later() -> None:
    tracker = Tracker()
    source = FakeSource()
    items = [parked(source, 0.0) for _ in range(3)]
    tracker.park(items)
    assert tracker.due(source, 1.0, 2) == items[:2]
    assert tracker.due(source, 1.0, 2) == items[2:]


def test_due_in_order_never_takes_a_message_behind_one_not_due_yet() -> None:
    tracker = Tracker()
    source, other = FakeSource(), FakeSource()
    ready, waiting, behind = parked(source, 1.0), parked(source, 20.0), parked(source, 1.0)
    theirs = parked(other, 30.0)  # another source's message does not stop this one's
    tracker.park([theirs, ready, waiting, behind])
    assert tracker.due(source, 10.0, 10, in_order=True) == [ready]
    assert tracker.due(source, 10.0, 10, in_order=True) == []
    assert tracker.parked(source) == 2
    assert tracker.due(source, 20.0, 10, in_order=True) == [waiting, behind]


def test_next_due_is_when_the_sources_next_parked_message_is_due() -> None:
    tracker = Tracker()
    source, other = FakeSource(), FakeSource()
    assert tracker.next_due(source) is None
    tracker.park([parked(source, 3.0), parked(other, 1.0), parked(source, 7.0)])
    assert tracker.next_due(source) == 3.0
    assert tracker.next_due(other) == 1.0
    tracker.due(source, 5.0, 10)
    assert tracker.next_due(source) == 7.0
    tracker.due(source, 7.0, 10)
    assert tracker.next_due(source) is None


def test_next_due_in_order_is_when_the_first_parked_message_is_due() -> None:
    tracker = Tracker()
    source = FakeSource()
    failed, after = parked(source, 100.0), parked(source, 0.0)
    tracker.park([failed, after])  # what an in-order settle_group parks
    now = 10.0
    next_due = tracker.next_due(source, in_order=True)
    assert next_due is not None
    taken = tracker.due(source, now, 10, in_order=True)
    assert (next_due <= now) == bool(taken)


def test_messages_taken_again_from_the_parked_ones_are_not_counted_in_flight_again() -> None:
    tracker = Tracker()
    source = FakeSource()
    msgs = messages(3)
    tracker.open_group(source, msgs)
    assert tracker.in_flight == 3
    replay = tracker.open_group(source, msgs[:2], {0: 1, 1: 2})
    assert tracker.in_flight == 3
    assert tracker.ticket(replay, 1).attempts == 2
    ticket = tracker.open(source, msgs[2], Parked(source, msgs[2], 4, 0.0))
    assert tracker.in_flight == 3
    assert ticket.attempts == 4


# -- abandoning ------------------------------------------------------------------------------------


def test_abandon_returns_every_open_message_and_the_parked_ones_then_settles_nothing() -> None:
    tracker, _ = tracker_with_ready()
    source = FakeSource()
    single, claimed, in_group = FakeMessage(b"s"), FakeMessage(b"c"), messages(2)
    ticket = tracker.open(source, single)
    done = tracker.open(source, claimed)
    assert tracker.claim([done]) == [done]
    group = tracker.open_group(source, in_group)
    waiting = parked(source, 99.0)
    tracker.park([waiting])
    left = tracker.abandon()
    assert sorted((id(s), id(m)) for s, m in left) == sorted(
        (id(source), id(m)) for m in [single, *in_group, waiting.msg]
    )
    assert tracker.claim([ticket]) == []
    assert not tracker.claim_group(group)
    assert tracker.parked() == 0
    assert tracker.due(source, float("inf"), 10) == []


def test_a_ticket_opened_after_abandon_is_never_claimed() -> None:
    tracker, _ = tracker_with_ready()
    source = FakeSource()
    assert tracker.abandon() == []
    late = tracker.open(source, FakeMessage(b"late"))  # a receiver still running
    assert tracker.claim([late]) == []


def test_a_group_opened_after_abandon_is_never_claimed() -> None:
    tracker = Tracker()
    source = FakeSource()
    tracker.abandon()
    late = tracker.open_group(source, messages(2))  # a lane still working through its queue
    assert not tracker.claim_group(late)


# -- threads ---------------------------------------------------------------------------------------


def test_many_threads_holding_and_releasing_one_groups_tickets_keep_exact_counts() -> None:
    tracker, calls = tracker_with_ready()
    size, threads_count, rounds = 8, 16, 500
    group = tracker.open_group(FakeSource(), messages(size))
    start = threading.Barrier(threads_count)
    held: list[int] = []

    def publish(slot: int) -> None:
        start.wait()
        count = 0
        for round_ in range(rounds):
            ticket = tracker.ticket(group, (slot + round_) % size)
            if tracker.hold(ticket):
                count += 1
                tracker.release(ticket)
        held.append(count)

    threads = [threading.Thread(target=publish, args=(slot,)) for slot in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(held) == threads_count * rounds
    assert group.issued == group.done == threads_count * rounds
    assert group.sent
    assert len(group.tickets) == size
    assert calls == []
