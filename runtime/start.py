"""`start(handler)`: validate the handler, connect, run until SIGTERM/SIGINT, drain, exit.

Start-up errors surface before any connection is made: a bad handler or configuration is a
`UserError` (exit code 2) with what was found and what to do; the broker refusing us is a
`BrokerError` (exit code 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.errors import HandlerError, PulsarFuncError, UserError
from pulsarfunc.runtime.handler import Handler, inspect_handler
from pulsarfunc.runtime.logs import setup_logging
from pulsarfunc.runtime.naming import function_id
from pulsarfunc.runtime.schemas import wire_for
from pulsarfunc.runtime.secrets import SecretsMap
from pulsarfunc.runtime.state import open_state

if TYPE_CHECKING:
    from pulsarfunc.runtime.instance import Instance

Attach = Callable[["Instance"], contextlib.AbstractContextManager[object]]
"""Something to run beside the instance while it runs (`--watch`: the file watcher)."""

if TYPE_CHECKING:
    from pulsarfunc.runtime.tracing import Tracing

_log = logging.getLogger("pulsarfunc")


def _default_name(handler: Handler) -> str:
    target = handler.target
    name = getattr(target, "__name__", None) or type(target).__name__
    return str(name).replace("_", "-").lower()


def complete(config: FunctionConfig, handler: Handler) -> FunctionConfig:
    """Fill what the configuration left to be derived: name and function id."""
    name = config.name or _default_name(handler)
    config = dataclasses.replace(config, name=name)
    if not config.function_id:
        config = dataclasses.replace(config, function_id=function_id(config.fqfn))
    return config


def run(
    handler: object,
    config: FunctionConfig,
    *,
    env: Mapping[str, str] | None = None,
    where: str = "",
    ready: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
    attach: Attach | None = None,
) -> bool:
    """Run `handler` as a function instance until stopped (signal or `stop` event).

    True when the graceful stop settled every message; False when the drain deadline passed
    with messages left (negatively acknowledged for redelivery). `attach(instance)` is entered
    before the run and left after it, before the client closes.
    """
    from pulsarfunc.runtime.broker import PulsarBroker
    from pulsarfunc.runtime.engine_batching import batched
    from pulsarfunc.runtime.instance import Instance
    from pulsarfunc.runtime.logtopic import publishing_logs
    from pulsarfunc.runtime.metrics import Metrics

    window = config.window.enabled
    if not isinstance(handler, Handler):
        spec = inspect_handler(handler, where=where, window=window)
    elif window and not handler.window:
        raise HandlerError(
            f"{handler.signature}: inspected as a single-message handler, but a window is set",
            "inspect it with inspect_handler(obj, window=True)",
        )
    else:
        spec = handler
    spec = batched(spec, config)  # before connecting: a handler that cannot batch fails here
    config = complete(config, spec)
    setup_logging(config)
    wire = wire_for(config, spec.input_codec, spec.output_codec)
    _log.info("starting %s: %s", config.fqfn, spec.describe())
    for line in wire.describe():
        _log.info("  %s", line)
    metrics = Metrics()
    tracing = start_tracing(config, env or {})  # before connecting: a missing extra is exit 2
    with contextlib.ExitStack() as ops:  # closes in reverse: attached, log topic, broker, spans
        if tracing is not None:
            ops.callback(tracing.close)  # the last spans are exported before the process exits
        server = None
        if config.metrics_port is not None:  # prometheus_client is 5 MB resident: only then
            from pulsarfunc.runtime.exposition import serving

            server = ops.enter_context(serving(config, metrics))  # probes answer as we connect
        state = open_state(config)  # unreachable: the start fails here, with the reason
        broker = PulsarBroker(config, wire)
        ops.callback(broker.close)
        ops.enter_context(publishing_logs(config, broker))
        instance = Instance(
            config,
            spec,
            broker,
            secrets=SecretsMap(config.secrets, env or {}),
            metrics=metrics,
            wire=wire,
            state=state,
            tracing=tracing,
        )
        if server is not None:
            server.watch(instance)
        if attach is not None:
            ops.enter_context(attach(instance))
        restore = _on_signals(instance.stop)
        if stop is not None:

            def stop_when_set() -> None:
                stop.wait()
                instance.stop()

            threading.Thread(target=stop_when_set, daemon=True, name="pf-stop").start()
        try:
            _log.info(
                "consuming %s as %s, output %s",
                ", ".join(config.input_topics),
                config.subscription_name,
                config.output or "(none)",
            )
            drained = instance.run(ready=ready)
        finally:
            restore()
        snap = instance.metrics.snapshot()
        _log.info(
            "stopped%s: %d received, %d processed, %d user errors, %d dead-lettered",
            "" if drained else " (drain deadline passed)",
            snap.received,
            snap.processed_successfully,
            snap.user_exceptions,
            snap.dead_lettered,
        )
    return drained


def start_tracing(config: FunctionConfig, env: Mapping[str, str]) -> Tracing | None:
    """The instance's tracing with --tracing, else None (and OpenTelemetry is not imported)."""
    if not config.tracing:
        return None
    try:
        from pulsarfunc.runtime.tracing import configure
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        raise UserError(
            "--tracing needs OpenTelemetry, which is not installed: pip install "
            "'pulsarfunc[otel]' (in an image: list pulsarfunc[otel] in requirements.txt)"
        ) from None
    return configure(config, env)


def _on_signals(stop: Callable[[], None]) -> Callable[[], None]:
    """Make SIGTERM and SIGINT stop the instance gracefully; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {
        sig: signal.signal(sig, lambda _signo, _frame: stop())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def report(error: BaseException, *, debug: bool) -> int:
    """Print a start-up error the way the command line shows it; returns the exit code."""
    if isinstance(error, PulsarFuncError):
        if debug:
            traceback.print_exception(error)
        print(f"pulsarfunc: error: {error}", file=sys.stderr)
        return error.exit_code
    traceback.print_exception(error)
    return 1


def main_with(
    handler: object,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    where: str = "",
    prog: str = "pulsarfunc run",
    attach: Attach | None = None,
) -> int:
    """A function program's main: resolve config from argv/env, run; returns the exit code.

    `prog` names the program in `--help` unless PULSARFUNC_PROG does; `attach` as for `run`.
    """
    from pulsarfunc.runtime.resolve import launch, resolve  # YAML and protobuf: only for main

    settings = launch(argv, env, default_prog=prog)
    try:
        if not isinstance(handler, Handler):
            try:  # a bad handler is reported before bad flags
                inspect_handler(handler, where=where)
            except HandlerError:  # unless a window makes it right (`list[Record]` items)
                try:
                    windowed = resolve(argv, env, prog=settings.prog).window.enabled
                except PulsarFuncError:
                    windowed = False
                if not windowed:
                    raise
        config = resolve(argv, env, prog=settings.prog)
        drained = run(handler, config, env=env, where=where, attach=attach)
    except Exception as exc:
        return report(exc, debug=settings.debug)
    return 0 if drained else 1


def start(handler: Any, config: FunctionConfig | None = None) -> None:
    """Run `handler` as a Pulsar function.

    Called with a config, it runs and raises on start-up errors. Called without one, it is a
    program's main: flags come from `sys.argv`, `PULSARFUNC_*` from the environment, and the
    process exits 0 after a graceful stop that settled every message, 1 when the stop's
    deadline left some to the broker or on a runtime failure, 2 on a user error.
    """
    if config is not None:
        run(handler, config, env=os.environ)
        return
    prog = os.path.basename(sys.argv[0]) or "pulsarfunc"
    hard_exit(main_with(handler, sys.argv[1:], os.environ, prog=prog))


def hard_exit(code: int) -> NoReturn:
    """Exit now, skipping interpreter finalisation.

    Everything is closed and flushed by then. pulsar-client's C++ threads can still call back
    into Python while the interpreter tears down, which aborts the process ("terminate called
    without an active exception", exit -6) instead of exiting with `code`.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
