"""A broker without batch-index acks redelivers a dead-lettered message with its batch."""

from __future__ import annotations

import threading

from fake_broker import FakeBroker, FakeMessage
from waiting import wait_for

from pulsarfunc.runtime.config import FunctionConfig, InputSpec
from pulsarfunc.runtime.handler import inspect_handler
from pulsarfunc.runtime.instance import Instance

DLQ = "persistent://public/default/dead"


def test_a_redelivered_copy_of_a_dead_lettered_message_is_acked_not_sent_again() -> None:
    broker = FakeBroker()
    poison = FakeMessage(b"poison")
    calls: list[bytes] = []

    def picky(data: bytes) -> bytes:
        calls.append(data)
        raise ValueError("indigestible")

    config = FunctionConfig(
        inputs=(InputSpec("persistent://public/default/in"),),
        name="fn",
        max_message_retries=0,
        dead_letter_topic=DLQ,
    )
    instance = Instance(config, inspect_handler(picky), broker)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    try:
        broker.feed(poison)
        wait_for(lambda: len(broker.sources[0].acked) == 1)
        # The whole batch comes back (as after a sibling's nack), this message included.
        broker.feed(FakeMessage(b"poison", redeliveries=3, mid=poison.mid))
        wait_for(lambda: len(broker.sources[0].acked) == 2)
    finally:
        instance.stop()
        thread.join(10)
    assert len(broker.sent[DLQ]) == 1
    assert calls == [b"poison"]  # the copy is recognised on arrival: acked, not run again
    assert broker.sources[0].nacked == []
