"""--log-topic: records become messages with Pulsar's properties, never blocking, never looping."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fake_broker import FakeBroker, FakeMessage
from waiting import wait_for

from pulsarfunc.runtime import context as ctxmod
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.context import Context, FunctionEnv
from pulsarfunc.runtime.logtopic import LogTopicHandler, publishing_logs
from pulsarfunc.runtime.transport import OutMessage, SendCallback

TOPIC = "persistent://public/default/fn-logs"
CONFIG = FunctionConfig(name="fn", instance_id=2, log_topic=TOPIC)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of the test's own that reaches only the handlers the test adds."""
    log = logging.getLogger("pulsarfunc.function.fn.test")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    log.handlers.clear()
    log.propagate = True


def attached(logger: logging.Logger, broker: Any, **kw: Any) -> LogTopicHandler:
    handler = LogTopicHandler(broker, TOPIC, CONFIG.fqfn, CONFIG.instance_id, **kw)
    logger.addHandler(handler)
    return handler


def test_a_record_becomes_a_message_with_pulsars_properties(logger: logging.Logger) -> None:
    broker = FakeBroker()
    handler = attached(logger, broker)
    logger.info("hello %s", "pulsar")
    handler.close()
    (message,) = broker.sent[TOPIC]
    assert message.payload == b"hello pulsar"
    assert message.properties == {
        "loglevel": "INFO",
        "logger": "pulsarfunc.function.fn.test",
        "fqn": "public/default/fn",
        "instance": "2",
    }
    assert message.event_timestamp is not None
    assert message.event_timestamp > 1_700_000_000_000
    assert broker.flushed == 1  # close flushes what was queued


def test_inside_an_invocation_the_message_id_and_topic_are_attached(
    logger: logging.Logger,
) -> None:
    broker = FakeBroker()
    handler = attached(logger, broker)
    msg = FakeMessage(b"x", topic="persistent://public/default/in")
    env = FunctionEnv(CONFIG, services=None, logger=logger, secrets=lambda name: None)  # type: ignore[arg-type]
    token = ctxmod.bind(Context(env, msg))
    try:
        logger.warning("inside")
    finally:
        ctxmod.unbind(token)
    logger.warning("outside")
    handler.close()
    inside, outside = broker.sent[TOPIC]
    assert inside.properties is not None
    assert outside.properties is not None
    assert inside.properties["message_id"] == str(msg.mid)
    assert inside.properties["topic"] == "persistent://public/default/in"
    assert "message_id" not in outside.properties


def test_the_traceback_is_part_of_the_payload(logger: logging.Logger) -> None:
    broker = FakeBroker()
    handler = attached(logger, broker)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    handler.close()
    (message,) = broker.sent[TOPIC]
    text = message.payload.decode()
    assert text.startswith("failed\nTraceback")
    assert "ValueError: boom" in text
    assert message.properties is not None
    assert message.properties["loglevel"] == "ERROR"


class BlockedBroker(FakeBroker):
    """A broker whose send hangs until released, as a full producer queue would."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def send(self, message: OutMessage, callback: SendCallback) -> None:
        self.entered.set()
        self.release.wait(10)
        super().send(message, callback)


def test_a_stuck_broker_never_blocks_the_caller_records_are_dropped_and_counted(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    broker = BlockedBroker()
    handler = attached(logger, broker, capacity=3)
    logger.info("first")  # taken by the sender thread, which then hangs in send
    wait_for(lambda: broker.entered.is_set())
    for i in range(10):  # 3 fit in the queue, 7 are dropped: none of these calls waits
        logger.info("more %d", i)
    assert handler.dropped == 7
    assert "dropping log records" in caplog.text
    broker.release.set()
    handler.close()
    assert [m.payload for m in broker.sent[TOPIC]] == [b"first", b"more 0", b"more 1", b"more 2"]


def test_send_failures_are_counted_and_said_once(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker()
    broker.fail_topics.add(TOPIC)
    handler = attached(logger, broker)
    for i in range(5):
        logger.info("m%d", i)
    wait_for(lambda: handler.failed == 5)
    handler.close()
    assert caplog.text.count("cannot publish log records") == 1


class LoggingBroker(FakeBroker):
    """Logs while sending, as the Pulsar client does (and as our broker module may)."""

    def send(self, message: OutMessage, callback: SendCallback) -> None:
        logging.getLogger("pulsar.client").info("producer created")
        logging.getLogger("pulsarfunc.broker").info("sending on the sender thread")
        super().send(message, callback)


def test_logging_while_sending_does_not_loop() -> None:
    broker = LoggingBroker()
    with publishing_logs(CONFIG, broker) as handler:
        assert handler is not None
        logging.getLogger("pulsar.client").warning("client records are never published")
        logging.getLogger("pulsarfunc.function.fn").warning("one record")
    assert [m.payload for m in broker.sent[TOPIC]] == [b"one record"]


def test_publishing_logs_attaches_to_the_root_logger_and_detaches() -> None:
    broker = FakeBroker()
    root = logging.getLogger()
    with publishing_logs(CONFIG, broker) as handler:
        assert handler in root.handlers
        logging.getLogger("user.module").warning("a user's own logger reaches the topic")
    assert handler not in root.handlers
    assert [m.payload for m in broker.sent[TOPIC]] == [b"a user's own logger reaches the topic"]


def test_no_log_topic_means_no_handler() -> None:
    with publishing_logs(FunctionConfig(), FakeBroker()) as handler:
        assert handler is None


def test_records_after_close_are_ignored(logger: logging.Logger) -> None:
    broker = FakeBroker()
    handler = attached(logger, broker)
    handler.close()
    logger.info("late")
    assert broker.sent.get(TOPIC, []) == []
