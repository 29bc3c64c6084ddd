"""The instance loop: receive, decode, invoke, send, then settle each message by its guarantee.

    sync handlers: batch mode (batch.py), `concurrency` threads per source, a group each
        receive -> handler on each -> outputs (outputs.py) -> broker.send_batch, one receipt
    otherwise: receiver thread per source --batch--> dispatch (worker threads | event loop)
        decode -> Context -> handler -> encode -> broker.send / send_batch per loop pass
    settle: when the handler is done and every send of the message is persisted
        success -> ack (ATLEAST_ONCE, EFFECTIVELY_ONCE); MANUAL leaves it to context.ack()
        failure -> nack for redelivery, or after the last retry -> dead-letter topic, then ack

Many messages are in flight at once (bounded by `max_in_flight`); nothing on the hot path waits
for a broker round trip. The broker is passed in, so unit tests drive this with a fake.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pulsarfunc.runtime import context as ctxmod
from pulsarfunc.runtime.batch import BATCH_MAX, BatchRunner
from pulsarfunc.runtime.codec import RawCodec, pulsar_serde
from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee, SubscriptionType
from pulsarfunc.runtime.context import Context, FunctionEnv, SecretsProvider
from pulsarfunc.runtime.handler import Handler, sync_result
from pulsarfunc.runtime.metrics import Metrics
from pulsarfunc.runtime.naming import strip_partition
from pulsarfunc.runtime.outputs import Outputs
from pulsarfunc.runtime.settle import Settler
from pulsarfunc.runtime.timeouts import with_timeout
from pulsarfunc.runtime.transport import Broker, InMessage, OutMessage, Source
from pulsarfunc.runtime.work import Work

_log = logging.getLogger("pulsarfunc.instance")

_RECEIVE_TIMEOUT_MS = 100


Dispatch = Callable[[Source, Sequence[InMessage]], None]  # hands received messages on


def _resolve(future: concurrent.futures.Future[None], error: Exception | None) -> None:
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


DEFAULT_ASYNC_CONCURRENCY = 16  # chosen by bench/runtime_bench.py: free for trivial handlers


def effective_concurrency(config: FunctionConfig, is_async: bool) -> int:
    """How many messages the handler works on at once.

    An explicit --concurrency wins, except where input order must be kept (retain-ordering,
    effectively-once): 1. Auto (0) is 16 for async handlers on shared or key-shared
    subscriptions (one event loop: they interleave only at `await`), else 1: a sync handler is
    never called from two threads at once unless asked to, as under Pulsar's own instance.
    """
    if (
        config.retain_ordering
        or config.processing_guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
    ):
        return 1
    if config.concurrency > 0:
        return config.concurrency
    shared = config.subscription_type in (SubscriptionType.SHARED, SubscriptionType.KEY_SHARED)
    return DEFAULT_ASYNC_CONCURRENCY if is_async and shared else 1


class Instance:
    """Runs one function instance until `stop()`; see the module docstring for the flow."""

    def __init__(
        self,
        config: FunctionConfig,
        handler: Handler,
        broker: Broker,
        *,
        secrets: SecretsProvider | None = None,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config
        self.concurrency = effective_concurrency(config, handler.is_async)
        self.handler = with_timeout(handler, config.timeout_ms, self.concurrency)
        self.broker = broker
        self.metrics = metrics or Metrics()
        self._settler = Settler(config, broker, self.metrics)
        self.env = FunctionEnv(
            config=config,
            services=self,
            logger=logger or logging.getLogger(f"pulsarfunc.function.{config.name}"),
            secrets=secrets or (lambda name: None),
        )
        self._guarantee = config.processing_guarantee
        self._output_topic = config.output
        # Serdes named in the configuration win over the handler's annotations, as in Pulsar.
        self._input_serdes = {
            spec.topic: pulsar_serde(spec.serde_class_name)
            for spec in config.inputs
            if spec.serde_class_name and not spec.is_regex
        }
        output_codec = (
            pulsar_serde(config.output_serde_class_name)
            if config.output_serde_class_name
            else handler.output_codec
        )
        self._outputs = Outputs(config, output_codec)
        self._input_codec = handler.input_codec
        # bytes in as bytes: the client's data() is a fresh bytes object already
        self._raw_input = (
            isinstance(self._input_codec, RawCodec) and self._input_codec.name == "bytes"
        )
        self._track_sends = self._guarantee is not ProcessingGuarantee.ATMOST_ONCE
        self._ordered = (
            config.retain_ordering or self._guarantee is ProcessingGuarantee.EFFECTIVELY_ONCE
        )
        if self._ordered and config.concurrency > 1:
            _log.warning(
                "concurrency %d lowered to 1: retain-ordering/effectively-once keep input order",
                config.concurrency,
            )
        self._keyed = config.retain_key_ordering or config.subscription_type is (
            SubscriptionType.KEY_SHARED
        )
        self.max_in_flight = max(config.receiver_queue_size, 2 * self.concurrency)
        # Sync handlers run in batch mode: each of `concurrency` threads per source takes a
        # batch, calls the handler on each message inline, then settles the batch once its
        # sends are persisted. No hand-off, no per-message lock: the fastest path. With one
        # thread outputs keep input order; with several a slow handler takes small batches, so
        # N blocking calls run at once. Keyed ordering with concurrency > 1 needs key routing:
        # the sliding window below.
        self.batch_mode = not handler.is_async and (self.concurrency == 1 or not self._keyed)
        self._slots = threading.Semaphore(self.max_in_flight)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._receivers: list[threading.Thread] = []
        self._loop_thread: threading.Thread | None = None
        self._consuming = threading.Event()
        self._queues: list[queue.SimpleQueue[tuple[Source, InMessage] | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_sem: asyncio.Semaphore | None = None
        self._key_tails: dict[str, asyncio.Future[None]] = {}
        # event loop: outputs to send, and the Work each settles (None: untracked)
        self._outbox: list[OutMessage] = []
        self._outbox_owners: list[Work | None] = []

    # -- lifecycle -------------------------------------------------------------------------
    def run(
        self, *, ready: Callable[[], None] | None = None, drain_timeout_s: float = 30.0
    ) -> None:
        """Process until `stop()`, then drain what is in flight, flush and return."""
        if self.batch_mode:
            runner = BatchRunner(
                handler=self.handler,
                decode=self._decode_value,
                outputs=self._outputs,
                broker=self.broker,
                settler=self._settler,
                metrics=self.metrics,
                env=self.env,
                next_batch=self._next_batch,
                concurrency=self.concurrency,
                stopping=self._stopping,
                raw_input=self._raw_input and not self._input_serdes,
            )
            loops: list[Callable[[], None]] = [
                functools.partial(runner.run, src)
                for src in self.broker.sources
                for _ in range(self.concurrency)
            ]
        else:
            dispatch = self._start_dispatch()
            loops = [
                functools.partial(self._receive_loop, src, dispatch) for src in self.broker.sources
            ]
        receivers = [
            threading.Thread(target=loop, name=f"pf-recv-{i}", daemon=True)
            for i, loop in enumerate(loops)
        ]
        self._receivers = receivers
        for t in receivers:
            t.start()
        self._consuming.set()
        if ready is not None:
            ready()
        while not self._stopping.wait(0.2):
            pass
        for t in receivers:
            t.join()
        self._stop_dispatch()
        self.wait_idle(drain_timeout_s)
        if self._loop is not None:  # after the drain: receipts settle on the loop
            self._loop.call_soon_threadsafe(self._loop.stop)
        self.broker.flush()

    def stop(self) -> None:
        """Stop receiving; `run` then drains and returns."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def alive(self) -> bool:
        """Liveness: every receiver, worker and event-loop thread runs (or we are stopping)."""
        threads = [*self._receivers, *self._threads]
        if self._loop_thread is not None:
            threads.append(self._loop_thread)
        return self._stopping.is_set() or all(t.is_alive() for t in threads)

    @property
    def ready(self) -> bool:
        """Readiness: subscribed, connected and consuming, and not stopping."""
        return (
            self._consuming.is_set()
            and not self._stopping.is_set()
            and self.alive
            and self.broker.connected()
        )

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no message is in flight; False if the deadline passed first."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    _log.warning("%d messages still in flight at shutdown", self._in_flight)
                    return False
                self._idle.wait(left)
        return True

    # -- receiving and dispatch ------------------------------------------------------------
    def _next_batch(self, source: Source, limit: int = BATCH_MAX) -> Sequence[InMessage]:
        """Received messages (maybe none); at-most-once acks them here, on receipt."""
        try:
            batch = self.broker.receive(source, limit, _RECEIVE_TIMEOUT_MS)
        except Exception as exc:
            self.metrics.note_system_exception()
            _log.warning("receive failed, retrying: %s", exc)
            time.sleep(0.5)
            return ()
        redeliveries = self._settler.redeliveries
        if not redeliveries.watching and not self.broker.connected():
            redeliveries.watch()  # what comes after the reconnect may have been settled here
        if batch:
            batch = self._settler.drop_copies(source, batch)
        if batch:
            self.metrics.note_received(len(batch))
            if self._guarantee is ProcessingGuarantee.ATMOST_ONCE:
                for msg in batch:
                    source.ack(msg)
        return batch

    def _receive_loop(self, source: Source, dispatch: Dispatch) -> None:
        """Hand received messages on as slots free up: as many at once as there are slots."""
        while not self._stopping.is_set():
            batch = self._next_batch(source)
            start = 0
            while start < len(batch):
                end = start
                while end < len(batch) and self._slots.acquire(blocking=False):
                    end += 1
                if end > start:
                    with self._lock:
                        self._in_flight += end - start
                    dispatch(source, batch[start:end])
                    start = end
                    continue
                while not self._slots.acquire(timeout=0.2):
                    if self._stopping.is_set():
                        for undelivered in batch[start:]:
                            source.nack(undelivered)  # redelivered to whoever runs next
                        return
                self._slots.release()  # taken again with the ones after it

    def _start_dispatch(self) -> Dispatch:
        if self.handler.is_async:
            return self._start_event_loop()
        workers = self.concurrency
        nqueues = workers if self._keyed else 1
        self._queues = [queue.SimpleQueue() for _ in range(nqueues)]
        for i in range(workers):
            q = self._queues[i % nqueues]
            t = threading.Thread(target=self._worker, args=(q,), name=f"pf-work-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        queues = self._queues

        def dispatch(source: Source, msgs: Sequence[InMessage]) -> None:
            for msg in msgs:
                q = queues[0] if nqueues == 1 else queues[hash(msg.partition_key()) % nqueues]
                q.put((source, msg))

        return dispatch

    def _worker(self, q: queue.SimpleQueue[tuple[Source, InMessage] | None]) -> None:
        while (item := q.get()) is not None:
            self._process_sync(*item)

    def _stop_dispatch(self) -> None:
        for q in self._queues:
            for _ in range(self.concurrency):
                q.put(None)
        for t in self._threads:
            t.join()
        if self._loop is not None:
            loop = self._loop
            asyncio.run_coroutine_threadsafe(self._drain_async(), loop).result()

    # -- processing ------------------------------------------------------------------------
    def _decode_value(self, msg: InMessage) -> Any:
        """The handler's input from `msg`, by the topic's serde or the handler's annotation."""
        if self._input_serdes:
            codec = self._input_serdes.get(strip_partition(msg.topic_name()), self._input_codec)
            return codec.decode(msg.data())
        if self._raw_input:
            return msg.data()
        return self._input_codec.decode(msg.data())

    def _decode(self, work: Work) -> tuple[Context, Any]:
        return Context(self.env, work.msg, work), self._decode_value(work.msg)

    def _process_sync(self, source: Source, msg: InMessage) -> None:
        work = Work(source, msg)
        self._invoke_sync(work)
        self._release(work)

    def _invoke_sync(self, work: Work) -> None:
        """Call the sync handler on one message and send its outputs; failures are recorded."""
        try:
            ctx, value = self._decode(work)
            token = ctxmod.bind(ctx)
            try:
                result = self.handler.call(ctx, value)
                result = sync_result(result)
                outputs: Iterable[Any] = (
                    result if self.handler.yields else () if result is None else (result,)
                )
                for out in outputs:
                    self._emit(work, out)
            finally:
                ctxmod.unbind(token)
        except Exception as exc:
            self._settler.fail(work, exc)

    def _start_event_loop(self) -> Dispatch:
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            self._async_sem = asyncio.Semaphore(self.concurrency)
            loop.call_soon(started.set)
            loop.run_forever()
            loop.close()

        t = threading.Thread(target=run_loop, name="pf-loop", daemon=True)
        t.start()
        started.wait()
        self._loop_thread = t

        def dispatch(source: Source, msgs: Sequence[InMessage]) -> None:
            loop.call_soon_threadsafe(self._spawn_all, source, msgs)  # one wake-up for all

        return dispatch

    def _spawn_all(self, source: Source, msgs: Sequence[InMessage]) -> None:
        for msg in msgs:
            self._spawn(source, msg)

    def _spawn(self, source: Source, msg: InMessage) -> None:
        work = Work(source, msg)
        key = msg.partition_key() if self._keyed else ""
        previous = self._key_tails.get(key) if key else None
        task = asyncio.ensure_future(self._process_async(work, previous))
        if key:
            self._key_tails[key] = task

            def forget(t: asyncio.Future[None], key: str = key) -> None:
                if self._key_tails.get(key) is t:
                    del self._key_tails[key]

            task.add_done_callback(forget)

    async def _process_async(self, work: Work, previous: asyncio.Future[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # same key: strictly one after the other
        assert self._async_sem is not None
        async with self._async_sem:
            try:
                ctx, value = self._decode(work)
                token = ctxmod.bind(ctx)
                try:
                    result = self.handler.call(ctx, value)
                    if self.handler.is_async_gen:
                        async for out in result:
                            self._queue_output(work, out)
                    else:
                        out = await result
                        if out is not None:
                            self._queue_output(work, out)
                finally:
                    ctxmod.unbind(token)
            except Exception as exc:
                self._settler.fail(work, exc)
        self._release(work)

    def _queue_output(self, work: Work, value: Any) -> None:
        """On the event loop: outputs of the tasks that ran in one pass of the loop go to the
        broker together, in one `send_batch` with one receipt (no callback per output)."""
        if value is None or not self._output_topic:
            return
        out = self._outputs.build(work.msg, value, work.outputs)
        work.outputs += 1
        tracked = self._track_sends and self._hold(work)
        self._outbox.append(out)
        self._outbox_owners.append(work if tracked else None)
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._send_outbox)

    def _send_outbox(self) -> None:
        outs, owners = self._outbox, self._outbox_owners
        self._outbox, self._outbox_owners = [], []
        for batch, batch_owners in self._outputs.per_producer(outs, owners):
            self.broker.send_batch(batch, functools.partial(self._outbox_sent, batch_owners))

    def _outbox_sent(self, owners: list[Work | None], errors: Mapping[int, Exception]) -> None:
        """The receipt, on the client's IO thread: settling (acks) goes to the event loop. An
        ack gives up the GIL, and the IO thread waited to get it back after every one."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._settle_sent, owners, errors)
        except RuntimeError:  # the loop is closed: stopped after the drain deadline
            _log.warning("%d outputs persisted after shutdown, inputs unacknowledged", len(owners))

    def _settle_sent(self, owners: list[Work | None], errors: Mapping[int, Exception]) -> None:
        works = []
        for position, work in enumerate(owners):
            if work is not None:
                error = errors.get(position)
                if error is not None:
                    self._settler.fail(work, error, user=False)
                works.append(work)
        self._release_many(works)

    async def _drain_async(self) -> None:
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending)

    # -- outputs -----------------------------------------------------------------------------
    def _emit(self, work: Work, value: Any) -> None:
        """Encode one output and send it to the output topic (if there is one)."""
        if value is None or not self._output_topic:
            return
        out = self._outputs.build(work.msg, value, work.outputs)
        work.outputs += 1
        self._send(work, out)

    def _send(
        self,
        work: Work | None,
        out: OutMessage,
        future: concurrent.futures.Future[None] | None = None,
    ) -> None:
        """Send `out`; while `work` is unsettled, its settling waits for the receipt.

        `future` (for context.publish) gets the outcome; outputs pass none, to keep the hot
        path free of per-message synchronisation objects.
        """
        receipts = work.batch if work is not None else None
        if work is not None and receipts is not None and not work.settled:
            receipts.issued += 1
            owner = work

            def receipt(error: Exception | None) -> None:
                if error is not None and self._track_sends:
                    self._settler.fail(owner, error, user=False)
                if future is not None:
                    _resolve(future, error)
                receipts.done.append(None)

            self.broker.send(out, receipt)
            return
        tracked = work is not None and self._track_sends and self._hold(work)

        def done(error: Exception | None) -> None:
            if future is not None:
                _resolve(future, error)
            if tracked:
                assert work is not None
                if error is not None:
                    self._settler.fail(work, error, user=False)
                self._release(work)

        self.broker.send(out, done)

    def _hold(self, work: Work) -> bool:
        with self._lock:
            if work.settled:
                return False
            work.pending += 1
            return True

    # -- Services (what a Context calls) -------------------------------------------------------
    def publish(
        self,
        owner: Any,
        topic: str,
        payload: bytes,
        key: str | None,
        properties: Mapping[str, str] | None,
        event_timestamp: int | None,
    ) -> concurrent.futures.Future[None]:
        work = owner if isinstance(owner, Work) else None
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._send(work, OutMessage(topic, payload, key, properties, event_timestamp), future)
        return future

    def ack(self, owner: Any) -> None:
        if isinstance(owner, Work) and not owner.acked:
            owner.acked = True
            owner.source.ack(owner.msg)

    def record_metric(self, name: str, value: float) -> None:
        self.metrics.record(name, value)

    # -- settling (the policy is in settle.py) ----------------------------------------------
    def _release(self, work: Work) -> None:
        """One part of the work (the handler or one send) is done; settle when all are."""
        with self._lock:
            work.pending -= 1
            if work.pending or work.settled:
                return
            work.settled = True
        self._settler.settle(work)
        self._finished()

    def _release_many(self, works: list[Work]) -> None:
        """`_release` for many: one lock, and the ready ones settled together."""
        ready = []
        with self._lock:
            for work in works:
                work.pending -= 1
                if not work.pending and not work.settled:
                    work.settled = True
                    ready.append(work)
        if ready:
            self._settler.settle_all(ready)
            self._finished(len(ready))

    def _finished(self, count: int = 1) -> None:
        with self._idle:
            self._in_flight -= count
            if not self._in_flight:
                self._idle.notify_all()
        self._slots.release(count)
