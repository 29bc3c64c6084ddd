"""One function instance's lifecycle: start, run, stop (with one deadline), alive, ready.

A message's way through the instance is in `engine.py` (and the modules it names); the
instance builds those pieces once, picks the engine, and runs it:

    start   the output and dead-letter producers are created (a topic the broker refuses fails
            the start), then the engine starts taking messages; ready from then on
    run     until `stop()` (SIGTERM, SIGINT)
    stop    the engine stops taking messages and settles what it took; one deadline
            (--drain-timeout-ms) for all of it. What is left at the deadline is negatively
            acknowledged (the broker gives it to the next consumer), and `run` says so: the
            process then exits 1 instead of 0. A handler that never returns is left behind.

The broker is passed in: unit tests drive the instance with an in-memory fake, integration
tests run it on Apache Pulsar.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.context import FunctionEnv, SecretsProvider
from pulsarfunc.runtime.engine import (
    Core,
    Engine,
    Receiver,
    Services,
    effective_concurrency,
    keyed,
    ordered,
)
from pulsarfunc.runtime.engine_async import AsyncEngine
from pulsarfunc.runtime.engine_batch import BatchEngine
from pulsarfunc.runtime.engine_batching import BatchingEngine, batch_concurrency, batched
from pulsarfunc.runtime.engine_ordered import OrderedEngine
from pulsarfunc.runtime.handler import Handler
from pulsarfunc.runtime.invoke import Invoker
from pulsarfunc.runtime.invoke_batch import BatchInvoker
from pulsarfunc.runtime.metrics import Metrics
from pulsarfunc.runtime.outputs import Outputs
from pulsarfunc.runtime.schemas import Wire, wire_for
from pulsarfunc.runtime.settle import Settler, dead_letter_topics
from pulsarfunc.runtime.tracker import Tracker
from pulsarfunc.runtime.transport import Broker

_log = logging.getLogger("pulsarfunc.instance")


def choose_engine(core: Core, handler: Handler) -> Engine:
    """The engine for this handler and configuration (see `engine.py`)."""
    if core.config.window.enabled:
        from pulsarfunc.runtime.engine_window import WindowEngine  # only window functions

        return WindowEngine(core, handler)
    if handler.batch_size:
        return BatchingEngine(core, handler.batch_size)
    if ordered(core.config):
        return OrderedEngine(core, lanes=1)
    if handler.is_async:
        return AsyncEngine(core, keyed=keyed(core.config))
    if keyed(core.config) and core.concurrency > 1:
        return OrderedEngine(core, lanes=core.concurrency)
    return BatchEngine(core)


class Instance:
    """Runs one function instance until `stop()`; see the module docstring."""

    def __init__(
        self,
        config: FunctionConfig,
        handler: Handler,
        broker: Broker,
        *,
        secrets: SecretsProvider | None = None,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
        wire: Wire | None = None,
    ) -> None:
        self.config = config
        handler = batched(handler, config)
        wire = wire or wire_for(config, handler.input_codec, handler.output_codec)
        self.broker = broker
        self.metrics = metrics or Metrics()
        self.concurrency = (
            batch_concurrency(config)
            if handler.batch_size
            else effective_concurrency(config, handler.is_async)
        )
        if ordered(config) and config.concurrency > 1:
            _log.warning(
                "concurrency %d lowered to 1: retain-ordering/effectively-once keep input order",
                config.concurrency,
            )
        tracker = Tracker()
        settler = Settler(config, broker, self.metrics, tracker, in_order=ordered(config))
        tracks = config.processing_guarantee is not ProcessingGuarantee.ATMOST_ONCE
        self._services = Services(broker, tracker, self.metrics, tracks)
        env = FunctionEnv(
            config=config,
            services=self._services,
            logger=logger or logging.getLogger(f"pulsarfunc.function.{config.name}"),
            secrets=secrets or (lambda name: None),
        )
        self.core = Core(
            config=config,
            broker=broker,
            invoker=(BatchInvoker if handler.batch_size else Invoker).for_config(
                handler, config, self.concurrency, wire
            ),
            outputs=Outputs.for_config(config, handler, wire),
            tracker=tracker,
            settler=settler,
            receiver=Receiver(config, broker, settler, self.metrics),
            env=env,
            metrics=self.metrics,
            concurrency=self.concurrency,
            stopping=threading.Event(),
        )
        self.engine = choose_engine(self.core, handler)
        self._started = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------
    def run(self, *, ready: Callable[[], None] | None = None) -> bool:
        """Process until `stop()`, then drain within the deadline and flush.

        True when every message taken was settled; False when some were left to the broker
        (negatively acknowledged) at the deadline, or lost (a non-persistent topic's message
        waiting for a retry). Start-up errors are raised.
        """
        core = self.core
        late = core.config.window.late_data_topic
        for topic in [core.config.output, *dead_letter_topics(core.config), late]:
            if topic:
                self.broker.open_producer(topic)
        self.engine.start()
        self._started.set()
        if ready is not None:
            ready()
        core.stopping.wait()
        deadline = time.monotonic() + core.config.drain_timeout_ms / 1000.0
        drained = self.engine.join(deadline) and core.tracker.wait_idle(deadline)
        if not drained:
            left = core.tracker.abandon()
            _log.warning(
                "stop deadline (--drain-timeout-ms %d) passed: %d messages still in flight are "
                "negatively acknowledged for redelivery",
                core.config.drain_timeout_ms,
                len(left),
            )
            for source, msg in left:
                try:
                    source.nack(msg)
                except Exception as exc:
                    _log.warning("cannot nack message %s: %s", msg.message_id(), exc)
        self.engine.close()
        self._flush(deadline)
        core.settler.close()
        self._services.close()
        return drained and core.tracker.lost == 0

    def _flush(self, deadline: float) -> None:
        """Send what the producers hold, waiting at most until the deadline (a broker that is
        away would hold a plain flush forever: sends never time out)."""
        flushing = threading.Thread(target=self.broker.flush, name="pf-flush", daemon=True)
        flushing.start()
        flushing.join(max(1.0, deadline - time.monotonic()))
        if flushing.is_alive():
            _log.warning("outputs still unsent at the stop deadline: the broker is away")

    def stop(self) -> None:
        """Stop taking messages; `run` then drains and returns."""
        self.core.stopping.set()

    @property
    def stopping(self) -> bool:
        return self.core.stopping.is_set()

    @property
    def alive(self) -> bool:
        """Liveness: every thread of the engine runs (or the instance is stopping)."""
        return self.stopping or not self._started.is_set() or self.engine.alive

    @property
    def ready(self) -> bool:
        """Readiness: started (producers open, consuming), connected, not stopping."""
        return (
            self._started.is_set()
            and not self.stopping
            and self.engine.alive
            and self.broker.connected()
        )
