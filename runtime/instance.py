"""One function instance's lifecycle: start, run, stop (with one deadline), alive, ready.

A message's way through the instance is in `engine.py` (and the modules it names); the
instance builds those pieces once, picks the engine, and runs it:

    start   the output and dead-letter producers are created (a topic the broker refuses fails
            the start), then the engine starts taking messages; ready from then on
    run     until `stop()` (SIGTERM, SIGINT)
    swap    (`pulsarfunc run --watch`) another handler on the same client, consumer and
            producers: the engine stops taking messages, what it took is settled (or stays
            parked for a retry), then an engine for the new handler goes on
    stop    the engine stops taking messages and settles what it took; one deadline
            (--drain-timeout-ms) for all of it. What is left at the deadline is negatively
            acknowledged (the broker gives it to the next consumer), and `run` says so: the
            process then exits 1 instead of 0. A handler that never returns is left behind.

The broker is passed in: unit tests drive the instance with an in-memory fake, integration
tests run it on Apache Pulsar.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.context import FunctionEnv, SecretsProvider
from pulsarfunc.runtime.context import Services as ContextServices
from pulsarfunc.runtime.engine import (
    Core,
    Engine,
    Receiver,
    Services,
    effective_concurrency,
    keyed,
    ordered,
)
from pulsarfunc.runtime.engine_batch import BatchEngine
from pulsarfunc.runtime.engine_batching import BatchingEngine, batch_concurrency, batched
from pulsarfunc.runtime.engine_ordered import OrderedEngine
from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.handler import Handler
from pulsarfunc.runtime.invoke import Invoker
from pulsarfunc.runtime.invoke_batch import BatchInvoker
from pulsarfunc.runtime.metrics import Metrics
from pulsarfunc.runtime.outputs import Outputs
from pulsarfunc.runtime.schemas import Wire, wire_for
from pulsarfunc.runtime.settle import Settler, dead_letter_topics
from pulsarfunc.runtime.state import StateStore
from pulsarfunc.runtime.tracker import Tracker
from pulsarfunc.runtime.transport import Broker

if TYPE_CHECKING:
    from pulsarfunc.runtime.tracing import Tracing

_log = logging.getLogger("pulsarfunc.instance")
_SWAP_REPORT_S = 5.0  # how often a swap waiting for messages in flight says so


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
        from pulsarfunc.runtime.engine_async import AsyncEngine  # asyncio: only async handlers

        return AsyncEngine(core, keyed=keyed(core.config))
    if keyed(core.config) and core.concurrency > 1:
        return OrderedEngine(core, lanes=core.concurrency)
    return BatchEngine(core)


def _concurrency(config: FunctionConfig, handler: Handler) -> int:
    """Threads (or event-loop tasks) calling `handler` at once."""
    if handler.batch_size:
        return batch_concurrency(config)
    return effective_concurrency(config, handler.is_async)


def _pieces(
    handler: Handler,
    config: FunctionConfig,
    concurrency: int,
    wire: Wire,
    tracing: Tracing | None,
) -> tuple[Invoker, Outputs]:
    """The invoker (a batch handler's calls it once per batch) and outputs of `handler`,
    traced when `tracing` is on."""
    if tracing is None:
        kind = BatchInvoker if handler.batch_size else Invoker
        return kind.for_config(handler, config, concurrency, wire), Outputs.for_config(
            config, handler, wire
        )
    if handler.batch_size:
        raise HandlerError(
            "--tracing does not trace batch handlers yet (a span per message of a batch call)",
            "drop --tracing, or take one message per call (no --batch-max-size / Batch[T])",
        )
    return (
        tracing.invoker(handler, config, concurrency, wire),
        tracing.outputs(config, handler, wire),
    )


def _schema_changes(old: Wire, new: Wire) -> list[str]:
    """What differs between the schemas two wires register (none: a swap keeps the consumer
    and producers as they are)."""
    before = {f"input {t}": s for t, s in old.input_schemas.items()}
    after = {f"input {t}": s for t, s in new.input_schemas.items()}
    before["output"], after["output"] = old.output_schema, new.output_schema
    return [
        f"{where}: {_schema_name(before.get(where))} -> {_schema_name(after.get(where))}"
        for where in sorted(before.keys() | after.keys())
        if _schema_key(before.get(where)) != _schema_key(after.get(where))
    ]


def _schema_key(schema: object) -> object:
    """A schema as the broker sees it: its type and definition (a reloaded record class makes
    a new but equal schema object)."""
    if schema is None:
        return None
    info = getattr(schema, "schema_info", None)
    if info is None:
        return type(schema).__qualname__
    got = info()
    return (str(got.schema_type()), got.schema())


def _schema_name(schema: object) -> str:
    return "none" if schema is None else type(schema).__name__


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
        state: StateStore | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        handler = batched(handler, config)
        wire = wire or wire_for(config, handler.input_codec, handler.output_codec)
        self.broker = broker
        self.metrics = metrics or Metrics()
        self.concurrency = _concurrency(config, handler)
        if ordered(config) and config.concurrency > 1:
            _log.warning(
                "concurrency %d lowered to 1: retain-ordering/effectively-once keep input order",
                config.concurrency,
            )
        tracker = Tracker()
        settler = Settler(config, broker, self.metrics, tracker, in_order=ordered(config))
        tracks = config.processing_guarantee is not ProcessingGuarantee.ATMOST_ONCE
        self._services = Services(broker, tracker, self.metrics, tracks)
        services: ContextServices = self._services
        invoker, outputs = _pieces(handler, config, self.concurrency, wire, tracing)
        if tracing is not None:  # chosen once: without tracing, no traced code runs at all
            services = tracing.services(services)
        env = FunctionEnv(
            config=config,
            services=services,
            logger=logger or logging.getLogger(f"pulsarfunc.function.{config.name}"),
            secrets=secrets or (lambda name: None),
            state=state,
        )
        self.core = Core(
            config=config,
            broker=broker,
            invoker=invoker,
            outputs=outputs,
            tracker=tracker,
            settler=settler,
            receiver=Receiver(config, broker, settler, self.metrics),
            env=env,
            metrics=self.metrics,
            concurrency=self.concurrency,
            stopping=threading.Event(),
        )
        self._wire = wire
        self._tracing = tracing
        self._hooks = (tracker.on_ready, tracker.on_parked)  # as no engine has set them
        self.engine = choose_engine(self.core, handler)
        self._started = threading.Event()
        self._stop = threading.Event()
        self._swap_lock = threading.Lock()  # one swap at a time; the stop waits for it
        self._swapping = False

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
        self._stop.wait()
        with self._swap_lock:  # a swap under way gives up (or completes) first
            core, engine = self.core, self.engine
        core.stopping.set()
        deadline = time.monotonic() + core.config.drain_timeout_ms / 1000.0
        drained = engine.join(deadline) and core.tracker.wait_idle(deadline)
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
        engine.close()
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
        """Stop taking messages; `run` then drains and returns. Safe in a signal handler: it
        takes no lock (`run` stops the engine a swap may have started meanwhile)."""
        self._stop.set()
        self.core.stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def started(self) -> bool:
        """The producers are open and the engine takes messages (`run` got that far)."""
        return self._started.is_set()

    @property
    def handler(self) -> Handler:
        """The handler messages are given to now."""
        return self.core.invoker.handler

    @property
    def alive(self) -> bool:
        """Liveness: every thread of the engine runs (or the instance is stopping, or swapping
        its engine)."""
        return self.stopping or not self._started.is_set() or self._swapping or self.engine.alive

    @property
    def ready(self) -> bool:
        """Readiness: started (producers open, consuming), connected, not stopping, not between
        two engines."""
        return (
            self._started.is_set()
            and not self.stopping
            and not self._swapping
            and self.engine.alive
            and self.broker.connected()
        )

    # -- reload ----------------------------------------------------------------------------------
    def swap(self, handler: Handler) -> bool:
        """Go on with `handler` on the same client, consumer and producers (a reload).

        The engine stops taking messages; the messages it took finish with the handler they
        started with and are settled as the guarantee says (a failed one stays parked and is
        retried by the new handler). Then an engine for `handler` (which may be async where the
        old one was sync) takes over, with the receiver queue, the tracker and the settler as
        they are: nothing is given back to the broker, nothing is processed twice. Waits as
        long as messages are in flight (a stop cuts it short). False if the instance is not
        running: not started yet, or stopping (then nothing changed). A HandlerError, before
        anything stops, where a swap cannot be made: a window function (its windows hold
        messages), or a handler whose schemas differ from those registered at the start.
        """
        handler = batched(handler, self.config)  # a batch handler's codecs are per item
        wire = self._swappable(handler)
        with self._swap_lock:
            if self._stop.is_set() or not self._started.is_set():
                return False
            old, engine = self.core, self.engine
            self._swapping = True
            try:
                old.handover.set()
                old.stopping.set()
                if not self._quiesce(old, engine):
                    return False  # stopping: `run` drains and closes the old engine
                engine.close()
                core = self._core_for(handler, wire)
                old.tracker.on_ready, old.tracker.on_parked = self._hooks
                self.engine = choose_engine(core, handler)
                self.core, self.concurrency = core, core.concurrency
                self.engine.start()
                if core.tracker.parked():
                    core.tracker.on_parked()  # an event-loop engine arms its retry timer
            except BaseException:
                self.stop()  # no engine may be taking messages: stop rather than sit idle
                raise
            finally:
                self._swapping = False
        _log.info("swapped the handler: %s", handler.describe())
        return True

    def _quiesce(self, core: Core, engine: Engine) -> bool:
        """Wait until `engine` took its last message and nothing but parked retries is in
        flight; False if the instance is told to stop meanwhile."""
        began = reported = time.monotonic()
        while True:
            soon = time.monotonic() + 0.1
            if engine.join(soon) and core.tracker.wait_quiet(soon):
                return True
            if self._stop.is_set():
                return False
            if time.monotonic() - reported >= _SWAP_REPORT_S:
                reported = time.monotonic()
                _log.warning(
                    "reload waits for the messages in flight (%d, %.0f s so far) to finish "
                    "with the previous handler",
                    core.tracker.in_flight - core.tracker.parked(),
                    reported - began,
                )

    def _swappable(self, handler: Handler) -> Wire:
        """The wire of `handler`, if it can take over; else HandlerError saying why not."""
        restart = "restart `pulsarfunc run` to use it"
        if self.config.window.enabled:
            raise HandlerError(
                "a window function is not reloaded: its windows hold messages", restart
            )
        wire = wire_for(self.config, handler.input_codec, handler.output_codec)
        changed = _schema_changes(self._wire, wire)
        if changed:
            raise HandlerError(
                f"{handler.signature}: the schema changed ({'; '.join(changed)}), and the "
                "consumer and producers registered the previous one",
                restart,
            )
        return wire

    def _core_for(self, handler: Handler, wire: Wire) -> Core:
        """The instance's core with `handler`'s invoker and outputs, and fresh stop events."""
        core = self.core
        concurrency = _concurrency(core.config, handler)
        invoker, outputs = _pieces(handler, core.config, concurrency, wire, self._tracing)
        return dataclasses.replace(
            core,
            invoker=invoker,
            outputs=outputs,
            concurrency=concurrency,
            stopping=threading.Event(),
            handover=threading.Event(),
        )
