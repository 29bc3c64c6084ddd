"""Runtime benchmark (not a test): pulsarfunc against pulsar-client's limit and Pulsar's instance.

In one run against one real broker (given, or a container started here and removed at exit),
every case processes the same trivial function (bytes in, the same bytes out, 100-byte
messages) and is measured the same way:

  msg/s     drain a backlog (--messages, default 100,000; batched, as Java and Go producers
            send) produced before the processor starts; the rate of the last 95% of outputs
            by their publish times
  p50/p99   end-to-end latency at a fixed moderate rate (--rate msg/s for --seconds): the
            producer stamps each payload with the time, the output's receipt is timed
  each the median of --repeats runs (a fresh processor and fresh topics per run)

Cases: (a) the batched pulsar-client limit loop, the same stamping the output properties
pulsarfunc and Pulsar's instance add, and the naive loop (bench/limit_loops.py);
(b) pulsarfunc through LocalRun (`pulsarfunc run`) and as a built image (`docker run` on the
broker's network), sync and async, at --concurrency 1 and at the default; (c) Pulsar's own
Python instance (python_instance_main.py of $PULSAR_HOME, in a venv of its own under
~/.cache/pulsarfunc); (d) cold start, from `docker run` / `pulsarfunc run` to the first output;
(e) a 10 ms I/O wait per message (asyncio.sleep and time.sleep) at concurrency 1, 16 and 64;
(f) the same trivial function on a ~100-byte record under a JSON and an AVRO schema (issue 13:
drain only, beside the bytes case); (g) a tumbling count window of 100 summing the backlog
(issue 14: msg/s of inputs, drain only); (h) a batch handler returning each input (issue 14:
100 inputs a call, drains at 1x or better of the sync default).
With --baseline REF, the old commit runs beside this tree (issue 12): the same venv python runs
`python -m pulsarfunc run`, sync and async at the default concurrency, from a git worktree of
REF first on PYTHONPATH (bench/baseline.py; removed at exit) on this tree's bench/fns, each
case right after this tree's in every round.
It prints a table, the ratios b/a and b/c against the targets of issue 7 (with --baseline,
after/before against those of issue 12), and writes the same to bench/results/latest.md.

Usage (README "Benchmarks"): .venv/bin/python bench/runtime_bench.py
  [--service-url pulsar://127.0.0.1:6650 --admin-url http://127.0.0.1:8080] [--quick]
  [--only 'A|B'] [--baseline REF]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import baseline as baseline_tree  # type: ignore[import-not-found]  # bench/ is on sys.path
import harness  # type: ignore[import-not-found]  # bench/ is on sys.path when run
from harness import Broker, Cleanup

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
FNS = BENCH / "fns"
CACHE = Path(os.environ.get("PULSARFUNC_CACHE") or Path.home() / ".cache" / "pulsarfunc")
INSTANCE_VENV = CACHE / "pulsar-instance-venv"
INSTANCE_REQUIREMENTS = [  # what Pulsar 4.0.8's python-instance imports, at its generated versions
    "pulsar-client==3.13.0",
    "protobuf>=6.31,<6.32",
    "grpcio>=1.73,<1.74",
    "apache-bookkeeper-client>=4.16,<5",
    "prometheus-client>=0.20,<1",
    "ratelimit>=2.2,<3",
]
IMAGE_PREFIX = "pulsarfunc-bench"


# -- processors: what runs a function, started per run and stopped after it ----------------------


@dataclass
class Running:
    """A started processor: a local process or a container."""

    process: subprocess.Popen[bytes] | None = None
    container: str | None = None
    log: Path | None = None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        assert self.container is not None
        state = harness.sh("docker", "inspect", "-f", "{{.State.Running}}", self.container)
        return bool(state == "true")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.container is not None:
            harness.sh("docker", "rm", "-f", self.container, check=False)

    def pid(self) -> int | None:
        """The processor's top process (a container's init, seen from the host)."""
        if self.process is not None:
            return self.process.pid
        assert self.container is not None
        found = harness.sh("docker", "inspect", "-f", "{{.State.Pid}}", self.container, check=False)
        return int(found) if found and found.isdigit() and int(found) > 0 else None

    def rss_mb(self, field: str = "VmHWM") -> float | None:
        """The process tree's peak (VmHWM) or current (VmRSS) resident memory, in MB."""
        pid = self.pid()
        return None if pid is None else harness.tree_rss_mb(pid, field)

    def tail(self) -> str:
        if self.container is not None:
            return str(harness.sh("docker", "logs", "--tail", "20", self.container, check=False))
        if self.log is not None and self.log.exists():
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return ""


Start = Callable[[Broker, str, str, str], Running]  # (broker, input, output, subscription)


def _spawn(command: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> Running:
    log = workdir / f"proc-{uuid.uuid4().hex[:6]}.log"
    out = log.open("wb")
    process = subprocess.Popen(
        list(command), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    out.close()
    return Running(process=process, log=log)


def limit_loop(mode: str, workdir: Path) -> Start:
    def start(broker: Broker, source: str, sink: str, sub: str) -> Running:
        script = str(BENCH / "limit_loops.py")
        command = [sys.executable, script, mode, broker.service_url, source, sink, sub]
        return _spawn(command, workdir)

    return start


@dataclass(frozen=True)
class SchemaPayloads:
    """The schema cases' backlog: bench/fns/schema_echo's Sample under `schema`, produced by
    a producer declaring it (a broker refuses a schema on a topic that holds schema-less data)."""

    schema: Any

    @classmethod
    def of(cls, schema_type: str) -> SchemaPayloads:
        sys.path.insert(0, str(FNS / "schema_echo"))
        import pulsar.schema
        from sample import sample  # type: ignore[import-not-found]

        kind = pulsar.schema.JsonSchema if schema_type == "JSON" else pulsar.schema.AvroSchema
        return cls(kind(type(sample(0))))

    def __call__(self, i: int) -> bytes:
        from sample import sample

        return bytes(self.schema.encode(sample(i)))


def _function_flags(
    url: str, source: str, sink: str, sub: str, concurrency: int | None
) -> list[str]:
    flags = ["--service-url", url, "--inputs", source, "--output", sink, "--subscription", sub]
    flags += ["--subscription-position", "EARLIEST", "--log-level", "WARNING"]
    return flags + (["--concurrency", str(concurrency)] if concurrency else [])


def localrun(
    fn: str,
    concurrency: int | None,
    workdir: Path,
    baseline: baseline_tree.Baseline | None = None,
    schema: str = "",
    extra: Sequence[str] = (),
    tracing: dict[str, str] | None = None,
) -> Start:
    """`pulsarfunc run bench/fns/FN/handler.py:handler` as a user runs it; with `baseline`,
    the baseline worktree's pulsarfunc in the same venv (`python -m pulsarfunc run`); with
    `schema`, that Pulsar schema on the input and the output; with `tracing`, --tracing under
    those OTEL_* variables."""
    if baseline is None:
        pulsarfunc, env = [str(Path(sys.executable).with_name("pulsarfunc"))], None
    else:
        pulsarfunc, env = [sys.executable, "-m", "pulsarfunc"], baseline.env()
    if tracing is not None:
        env = {**(env or {}), **tracing}

    def start(broker: Broker, source: str, sink: str, sub: str) -> Running:
        target = f"{FNS / fn / 'handler.py'}:handler"
        flags = _function_flags(broker.service_url, source, sink, sub, concurrency)
        if schema:
            flags += ["--custom-schema-inputs", json.dumps({source: schema})]
            flags += ["--output-schema-type", schema]
        flags += extra
        if tracing is not None:
            flags += ["--tracing"]
        return _spawn([*pulsarfunc, "run", target, *flags], workdir, env)

    return start


def _traced_twin(
    fn: str, workdir: Path, env: dict[str, str], baseline: baseline_tree.Baseline
) -> Start:
    return localrun(fn, None, workdir, baseline, tracing=env)


def image(fn: str, concurrency: int | None) -> Start:
    """`docker run IMAGE` on the broker's network (the image built by `build_images`)."""

    def start(broker: Broker, source: str, sink: str, sub: str) -> Running:
        name = f"{IMAGE_PREFIX}-{uuid.uuid4().hex[:8]}"
        flags = _function_flags(broker.internal_url, source, sink, sub, concurrency)
        harness.sh(
            "docker", "run", "-d", "--name", name, "--network", broker.network, "--read-only",
            f"{IMAGE_PREFIX}/{fn}:latest", *flags,
        )  # fmt: skip
        return Running(container=name)

    return start


def pulsar_instance(workdir: Path) -> Start:
    """Pulsar 4.0.8's own python_instance_main.py, as its process runtime starts it."""
    home = Path(os.environ["PULSAR_HOME"])
    main = home / "instances" / "python-instance" / "python_instance_main.py"
    logging_conf = home / "conf" / "functions-logging" / "console_logging_config.ini"
    python = str(INSTANCE_VENV / "bin" / "python")

    def start(broker: Broker, source: str, sink: str, sub: str) -> Running:
        details = {
            "tenant": "public",
            "namespace": "default",
            "name": f"echo-{uuid.uuid4().hex[:6]}",
            "className": "pulsar_echo",
            "runtime": "PYTHON",
            "autoAck": True,
            "processingGuarantees": "ATLEAST_ONCE",
            "source": {
                "subscriptionType": "SHARED",
                "inputSpecs": {source: {}},
                "subscriptionName": sub,
                "subscriptionPosition": "EARLIEST",
            },
            "sink": {"topic": sink},
        }
        ports = [str(_free_port()), str(_free_port())]
        command = [
            python, str(main), "--function_details", json.dumps(details),
            "--py", str(FNS / "pulsar_echo.py"), "--instance_id", "0",
            "--function_id", "bench", "--function_version", "1",
            "--pulsar_serviceurl", broker.service_url, "--port", ports[0],
            "--metrics_port", ports[1], "--max_buffered_tuples", "1024",
            "--logging_directory", str(workdir), "--logging_file", "instance",
            "--logging_config_file", str(logging_conf), "--logging_level", "warning",
            "--expected_healthcheck_interval", "0", "--cluster_name", "standalone",
        ]  # fmt: skip
        return _spawn(command, workdir)

    return start


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_local_images_env() -> None:
    """PULSAR_IMAGE, PULSARFUNC_BASE_IMAGE and PULSAR_HOME from the bootstrap, unless set."""
    env_file = CACHE / "local-images.env"
    if not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        name, sep, value = line.removeprefix("export ").partition("=")
        if sep and not line.startswith("#"):
            os.environ.setdefault(name.strip(), value.strip().strip("'\""))


def ensure_instance_venv() -> None:
    """The venv Pulsar's instance needs (its *_pb2.py want protobuf 6.31, grpcio 1.73)."""
    if (INSTANCE_VENV / ".complete").exists():
        return
    print(f"creating {INSTANCE_VENV} for Pulsar's python instance (once)", flush=True)
    shutil.rmtree(INSTANCE_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(INSTANCE_VENV)], check=True)
    pip = [str(INSTANCE_VENV / "bin" / "pip"), "install", "--quiet", *INSTANCE_REQUIREMENTS]
    subprocess.run(pip, check=True)
    (INSTANCE_VENV / ".complete").touch()


def build_images(cleanup: Cleanup, keep: bool) -> None:
    pulsarfunc = str(Path(sys.executable).with_name("pulsarfunc"))
    for fn in ("echo", "echo_async"):
        tag = f"{IMAGE_PREFIX}/{fn}:latest"
        subprocess.run([pulsarfunc, "build", str(FNS / fn), "-t", tag, "-q"], check=True)
        if not keep:
            cleanup.add(functools.partial(harness.sh, "docker", "rmi", tag, check=False))


# -- measuring ----------------------------------------------------------------------------------


def measure_image(broker: Broker, settle_s: float = 5.0) -> list[str]:
    """The echo image's size, and its idle resident memory once started and subscribed (no
    message yet), for issue 16."""
    tag = f"{IMAGE_PREFIX}/echo:latest"
    size = int(harness.sh("docker", "image", "inspect", "-f", "{{.Size}}", tag))
    source, sink = harness.topic("idle-in"), harness.topic("idle-out")
    running = image("echo", None)(broker, source, sink, "bench")
    try:
        time.sleep(settle_s)  # started, subscribed, producer open: what it holds while idle
        idle, peak = running.rss_mb("VmRSS"), running.rss_mb("VmHWM")
    finally:
        running.stop()
    return [
        "| image (bench/fns/echo, `pulsarfunc build`) | value |",
        "| --- | ---: |",
        f"| size, MB | {size / 1e6:,.1f} |",
        f"| idle RSS after start ({settle_s:g} s, no message), MB | {_fmt(idle, 1)} |",
        f"| peak RSS over that start, MB | {_fmt(peak, 1)} |",
    ]


@dataclass
class Figures:
    rates: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # the processor tree's peak RSS, MB

    @staticmethod
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None


@dataclass(frozen=True)
class Settings:
    messages: int
    repeats: int
    rate: int
    seconds: float


def run_once(
    broker: Broker,
    start: Start,
    settings: Settings,
    figures: Figures,
    count: int,
    latency: bool,
    payload: SchemaPayloads | None = None,
    per_output: int = 1,
) -> None:
    """One run: drain a backlog of `count`, then (optionally) latency at a fixed rate.
    `per_output` inputs make one output (a window): the rate is of inputs."""
    source, sink, sub = harness.topic("in"), harness.topic("out"), "bench"
    schema = payload.schema if payload is not None else None
    harness.produce_backlog(broker.service_url, source, count, payload, schema)
    running = start(broker, source, sink, sub)
    try:
        timeout = 60 + count / 500
        rate = per_output * harness.drain_rate(
            broker.service_url, broker.admin_url, sink, count // per_output, timeout, running.alive
        )
        figures.rates.append(rate)
        peak = running.rss_mb()  # the drain's peak, before the latency run adds its own
        if peak is not None:
            figures.rss.append(peak)
        if latency:
            p50, p99 = harness.latency(
                broker.service_url, source, sink, settings.rate, settings.seconds
            )
            figures.p50s.append(p50)
            figures.p99s.append(p99)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nprocessor output:\n{running.tail()}") from exc
    finally:
        running.stop()


def cold_start(broker: Broker, start: Start, repeats: int) -> Figures:
    figures = Figures()
    for _ in range(repeats):
        source, sink = harness.topic("cold-in"), harness.topic("cold-out")
        begin = functools.partial(start, broker, source, sink, "bench")
        seconds, running = harness.first_output_after(broker.service_url, source, sink, begin)
        running.stop()
        figures.starts.append(seconds)
    return figures


SYNC_DEFAULT = "b pulsarfunc run, sync, default concurrency"
NO_PROPS = ", --no-input-properties"
PULSAR_INSTANCE = "c Pulsar's Python instance"
LIMIT, STAMPED = "a limit loop (batched)", "a limit loop, pulsarfunc's output (stamped)"
CONST = "a limit loop, constant properties"
IMAGE_DEFAULT = "b image, sync, default concurrency"
WINDOW_SUM = "g pulsarfunc run, tumbling count window of 100, summed"
ASYNC_DEFAULT = "b pulsarfunc run, async, default concurrency"
# --tracing with every span sampled and ended, none exported: what tracing costs the instance
TRACED = ", --tracing (OTEL_TRACES_EXPORTER=none)"
TRACING_ENV = {"OTEL_TRACES_EXPORTER": "none"}
# ...and as it would run in production: 1% of the traces sampled (the rest not recorded)
SAMPLED = ", --tracing, 1% sampled (OTEL_TRACES_SAMPLER=parentbased_traceidratio)"
SAMPLED_ENV = {
    **TRACING_ENV,
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.01",
}
BATCH_ECHO = "h pulsarfunc run, batch handler returning each input"


def baseline_case(short: str, case: str) -> str:
    """The baseline's case beside this tree's `case` ("b pulsarfunc run, ...")."""
    return f"b baseline {short}: {case.removeprefix('b ')}"


# -- the table ----------------------------------------------------------------------------------


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _at_most(value: float | None, target: float) -> bool | None:
    return None if value is None else value <= target


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: dict[str, Figures]) -> list[str]:
    lines = [
        "| case | msg/s (median) | runs (msg/s) | p50 ms | p99 ms | cold start s | peak RSS MB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, f in results.items():
        runs = " / ".join(f"{r:,.0f}" for r in f.rates)
        lines.append(
            f"| {name} | {_fmt(Figures.median(f.rates), 0)} | {runs} | "
            f"{_fmt(Figures.median(f.p50s), 2)} | {_fmt(Figures.median(f.p99s), 2)} | "
            f"{_fmt(Figures.median(f.starts), 2)} | {_fmt(Figures.median(f.rss), 1)} |"
        )
    return lines


def _ratio(value: float | None, to: float | None) -> float | None:
    return value / to if value and to else None


def verdicts(
    results: dict[str, Figures],
    default_concurrency: int,
    io_cases: dict[str, int],
    baseline: str | None = None,
) -> list[str]:
    """The ratios against the targets of issue 7, and of issue 12 given `baseline` (short sha)."""

    def med(name: str, attr: str) -> float | None:
        f = results.get(name)
        return Figures.median(getattr(f, attr)) if f else None

    issues = "issues 7 and 12" if baseline else "issue 7"
    lines = [f"| target ({issues}) | measured | target | verdict |", "| --- | ---: | ---: | --- |"]

    def add(what: str, value: float | None, target: str, ok: bool | None) -> None:
        verdict = "-" if ok is None else ("PASS" if ok else "MISS")
        lines.append(f"| {what} | {_fmt(value, 2)} | {target} | {verdict} |")

    limit, naive = "a limit loop (batched)", "a naive loop"
    ours, lim, nai = med(SYNC_DEFAULT, "rates"), med(limit, "rates"), med(naive, "rates")
    pulsar = med("c Pulsar's Python instance", "rates")
    ratio = _ratio(ours, lim)
    add("b/a: sync default vs batched limit (msg/s)", ratio, ">= 0.9", _at_least(ratio, 0.9))
    stamped = med("a limit loop, pulsarfunc's output (stamped)", "rates")
    ratio = _ratio(ours, stamped)
    by_hand = "sync default vs the same output by hand (msg/s)"
    if baseline is None:
        add(f"b/a: {by_hand}", ratio, "(info)", None)
    else:  # issue 12: the ratio to the stamped limit loop, and after/before in the same run
        add(f"b/a: {by_hand}", ratio, ">= 0.9", _at_least(ratio, 0.9))
        before = med(baseline_case(baseline, SYNC_DEFAULT), "rates")
        add(f"baseline {baseline} b/a: {by_hand}", _ratio(before, stamped), "(info)", None)
        ratio = _ratio(ours, before)
        add("after/before: sync default msg/s", ratio, ">= 0.95", _at_least(ratio, 0.95))
        after = med(ASYNC_DEFAULT, "rates")
        before = med(baseline_case(baseline, ASYNC_DEFAULT), "rates")
        add("after/before: async default msg/s", _ratio(after, before), "(info)", None)
    ratio = _ratio(ours, nai)
    add("b/a: sync default vs naive loop (msg/s)", ratio, "(info)", None)
    for label, case in (("image", "b image, sync, default concurrency"), ("async", ASYNC_DEFAULT)):
        ratio = _ratio(med(case, "rates"), lim)
        add(f"b/a: {label} default vs batched limit (msg/s)", ratio, "(info)", None)
    for label, case in (("sync", SYNC_DEFAULT), ("async", ASYNC_DEFAULT)):
        ratio = _ratio(med(case + TRACED, "rates"), med(case, "rates"))
        add(f"tracing on/off: {label} default msg/s", ratio, "(info)", None)
        ratio = _ratio(med(case + SAMPLED, "rates"), med(case, "rates"))
        add(f"tracing 1% sampled/off: {label} default msg/s", ratio, "(info)", None)
        on, off = med(case + TRACED, "p99s"), med(case, "p99s")
        over = on - off if on is not None and off is not None else None
        add(f"tracing on - off: {label} default p99, ms", over, "(info)", None)
    ratio = _ratio(ours, pulsar)
    add("b/c: sync default vs Pulsar's instance (msg/s)", ratio, ">= 10", _at_least(ratio, 10))
    p99_ours, p99_lim = med(SYNC_DEFAULT, "p99s"), med(limit, "p99s")
    over = p99_ours - p99_lim if p99_ours is not None and p99_lim is not None else None
    add("p99 overhead over (a), ms", over, "<= 2", _at_most(over, 2))
    for name in ("d cold start: docker run", "d cold start: pulsarfunc run"):
        value = med(name, "starts")
        add(f"{name[2:]} to first output, s", value, "<= 1", _at_most(value, 1))
    for name, concurrency in io_cases.items():
        value = med(name, "rates")
        want = 0.8 * concurrency * 100
        add(f"{name[2:]} (msg/s)", value, f">= {want:,.0f}", _at_least(value, want))
    window = _per_round_ratio(results.get(WINDOW_SUM), results.get(SYNC_DEFAULT))
    add("g/b: tumbling count window of 100 vs sync default (msg/s; issue 14)", window, ">= 0.8",
        _at_least(window, 0.8))  # fmt: skip
    batch = _per_round_ratio(results.get(BATCH_ECHO), results.get(SYNC_DEFAULT))
    add("h/b: batch handler returning each input vs sync default (msg/s; issue 14)", batch,
        ">= 1", _at_least(batch, 1.0))  # fmt: skip
    for schema in ("JSON", "AVRO"):
        case = f"f pulsarfunc run, {schema} schema, default concurrency"
        ratio = _per_round_ratio(results.get(case), results.get(SYNC_DEFAULT))
        add(f"f/b: {schema} schema vs bytes, sync default (msg/s; issue 13)", ratio, "(info)", None)
    lines.append(f"\ndefault concurrency: {default_concurrency}")
    return lines


def _round_ratios(case: Figures | None, to: Figures | None, attr: str = "rates") -> list[float]:
    """Each round's ratio of `case` to `to` (each round runs every case: the same load)."""
    if case is None or to is None:
        return []
    pairs = zip(getattr(case, attr), getattr(to, attr), strict=False)
    return [a / b for a, b in pairs if b]


def issue16(results: dict[str, Figures], baseline: str | None) -> list[str]:
    """The targets of issue 16, each the median of the rounds' ratios with their spread; with
    `baseline`, after/before for every `pulsarfunc run` case that has a twin."""
    lines = [
        "| target (issue 16) | median of rounds | rounds | target | verdict |",
        "| --- | ---: | --- | ---: | --- |",
    ]

    def add(what: str, ratios: list[float], target: str, at_least: float | None) -> None:
        value = statistics.median(ratios) if ratios else None
        ok = None if value is None or at_least is None else value >= at_least
        verdict = "-" if ok is None else ("PASS" if ok else "MISS")
        spread = " / ".join(f"{r:.2f}" for r in ratios) or "-"
        lines.append(f"| {what} | {_fmt(value, 2)} | {spread} | {target} | {verdict} |")

    def ratios(case: str, to: str, attr: str = "rates") -> list[float]:
        return _round_ratios(results.get(case), results.get(to), attr)

    add("with the properties: sync default / batched limit (msg/s)", ratios(SYNC_DEFAULT, LIMIT),
        ">= 0.8", 0.8)  # fmt: skip
    add("without (--no-input-properties) / batched limit (msg/s)",
        ratios(SYNC_DEFAULT + NO_PROPS, LIMIT), ">= 0.9", 0.9)  # fmt: skip
    add("sync default / constant-property loop (msg/s): what is left", ratios(SYNC_DEFAULT, CONST),
        "(info)", None)  # fmt: skip
    add("constant-property loop / batched limit (msg/s): carrying them", ratios(CONST, LIMIT),
        "(info)", None)  # fmt: skip
    add("stamped loop / batched limit (msg/s): computing and carrying", ratios(STAMPED, LIMIT),
        "(info)", None)  # fmt: skip
    add("async default / sync default (msg/s)", ratios(ASYNC_DEFAULT, SYNC_DEFAULT), ">= 0.8", 0.8)
    for case in (SYNC_DEFAULT, IMAGE_DEFAULT, ASYNC_DEFAULT, LIMIT):
        at_most = [1 / r for r in ratios(case, PULSAR_INSTANCE, "rss") if r]  # instance / case
        target, floor = (">= 1", 1.0) if case in (SYNC_DEFAULT, IMAGE_DEFAULT) else ("(info)", None)
        add(f"peak RSS: Pulsar's instance / {case[2:]}", at_most, target, floor)
    if baseline is not None:
        prefix = f"b baseline {baseline}: "
        for name in results:
            if not name.startswith(prefix):
                continue
            twin_of = name[len(prefix) :]
            for case in (c for c in results if c.removeprefix("b ") == twin_of):
                add(f"after/before: {case[2:]} (msg/s)", ratios(case, name), ">= 0.95", 0.95)
    return lines


def _per_round_ratio(case: Figures | None, to: Figures | None) -> float | None:
    """The median of the rounds' ratios (each round runs every case: same load)."""
    if case is None or to is None or not case.rates or not to.rates:
        return None
    return statistics.median(a / b for a, b in zip(case.rates, to.rates, strict=False) if b)


# -- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--service-url", default=os.environ.get("PULSAR_SERVICE_URL"))
    parser.add_argument("--admin-url", default=os.environ.get("PULSAR_ADMIN_URL"))
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=int, default=500, help="latency runs: msg/s")
    parser.add_argument("--seconds", type=float, default=4.0, help="latency runs: duration")
    parser.add_argument("--quick", action="store_true", help="1 run, 20k messages (a smoke run)")
    parser.add_argument("--only", default="", help="cases whose name has one of A|B|...")
    parser.add_argument("--keep-images", action="store_true")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="a commit-ish to run beside this tree (from a git worktree), e.g. HEAD~1",
    )
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.repeats, args.seconds = 20_000, 1, 2.0
    settings = Settings(args.messages, args.repeats, args.rate, args.seconds)
    commits = f"pulsarfunc {baseline_tree.describe(REPO)}"  # what runs, as it starts
    baseline = baseline_tree.resolve(REPO, args.baseline) if args.baseline else None
    if baseline is not None:
        commits += f" beside baseline {baseline.short} (--baseline {args.baseline})"

    from pulsarfunc.runtime.config import FunctionConfig

    default_concurrency = FunctionConfig.__dataclass_fields__["concurrency"].default
    assert isinstance(default_concurrency, int)
    began = time.monotonic()
    load_local_images_env()
    cleanup = Cleanup()
    workdir = Path(tempfile.mkdtemp(prefix="pulsarfunc-bench-"))
    cleanup.add(lambda: shutil.rmtree(workdir, ignore_errors=True))
    image_name = os.environ.get("PULSAR_IMAGE") or "apachepulsar/pulsar:4.0.8"

    c1, dflt = 1, None  # None: the flag is not given, the runtime's default applies
    cases: list[tuple[str, Start, dict[str, object]]] = []
    # every `pulsarfunc run` case, as the baseline's twin of it would start (--baseline)
    twins: dict[str, Callable[[baseline_tree.Baseline], Start]] = {}

    def local(
        name: str, fn: str, concurrency: int | None, options: dict[str, object], **kw: Any
    ) -> None:
        cases.append((name, localrun(fn, concurrency, workdir, **kw), options))
        twins[name] = lambda b: localrun(fn, concurrency, workdir, b, **kw)

    cases += [
        (LIMIT, limit_loop("batched", workdir), {}),
        (CONST, limit_loop("const", workdir), {}),
        (STAMPED, limit_loop("stamped", workdir), {}),
        ("a naive loop", limit_loop("naive", workdir), {}),
    ]
    local("b pulsarfunc run, sync, concurrency 1", "echo", c1, {})
    local(SYNC_DEFAULT, "echo", dflt, {})
    local(SYNC_DEFAULT + NO_PROPS, "echo", dflt, {}, extra=["--no-input-properties"])
    local("b pulsarfunc run, async, concurrency 1", "echo_async", c1, {})
    local(ASYNC_DEFAULT, "echo_async", dflt, {})
    cases += [
        ("b image, sync, concurrency 1", image("echo", c1), {}),
        (IMAGE_DEFAULT, image("echo", dflt), {}),
        ("b image, async, concurrency 1", image("echo_async", c1), {}),
        ("b image, async, default concurrency", image("echo_async", dflt), {}),
        # the same drain as every other case: its peak RSS is the memory target's yardstick
        (PULSAR_INSTANCE, pulsar_instance(workdir), {}),
    ]
    io_cases: dict[str, int] = {}
    for fn, kind in (("sleep_async", "async sleep"), ("sleep_sync", "blocking sleep")):
        for concurrency in (1, 16, 64):
            name = f"e 10 ms {kind}, concurrency {concurrency}"
            io_cases[name] = concurrency
            count = max(200, concurrency * 100 * 3)  # about 3 s at the ideal rate
            local(name, fn, concurrency, {"count": count, "latency": False})
    local("b pulsarfunc run, sync, concurrency 16", "echo", 16, {})
    window_options: dict[str, object] = {"latency": False, "inputs_per_output": 100}
    local(WINDOW_SUM, "window_sum", dflt, window_options, extra=["--window-length-count", "100"])
    for schema in ("JSON", "AVRO"):  # issue 13: beside the bytes cases, drain only
        options = {"latency": False, "payload": SchemaPayloads.of(schema)}
        name = f"f pulsarfunc run, {schema} schema, default concurrency"
        local(name, "schema_echo", dflt, options, schema=schema)
    local(BATCH_ECHO, "echo_batch", dflt, {})  # issue 14
    for case, fn in ((SYNC_DEFAULT, "echo"), (ASYNC_DEFAULT, "echo_async")):
        # each right after the same case without tracing, in every round
        at = 1 + next(i for i, (name, *_) in enumerate(cases) if name == case)
        sampled = localrun(fn, dflt, workdir, tracing=SAMPLED_ENV)
        cases.insert(at, (case + SAMPLED, sampled, {}))
        cases.insert(at, (case + TRACED, localrun(fn, dflt, workdir, tracing=TRACING_ENV), {}))
        for suffix, env in ((SAMPLED, SAMPLED_ENV), (TRACED, TRACING_ENV)):
            twins[case + suffix] = functools.partial(_traced_twin, fn, workdir, env)
    if baseline is not None:  # each right after this tree's case, in every round
        for case, twin in twins.items():
            if NO_PROPS in case:  # a flag the baseline may not know: no twin
                continue
            at = 1 + next(i for i, (name, *_) in enumerate(cases) if name == case)
            options = next(o for name, _, o in cases if name == case)
            cases.insert(at, (baseline_case(baseline.short, case), twin(baseline), options))
    cold = [
        ("d cold start: docker run", image("echo", dflt)),
        ("d cold start: pulsarfunc run", localrun("echo", dflt, workdir)),
    ]
    only = [s for s in args.only.split("|") if s]
    names = [name for name, *_ in cases] + [name for name, _ in cold]
    wanted = {name for name in names if not only or any(s in name for s in only)}
    if not wanted:
        parser.error(f"--only {args.only!r} picks none of the cases: {', '.join(names)}")

    print("preparing: broker, images, Pulsar instance venv, baseline worktree", flush=True)
    if baseline is not None and any(name.startswith("b baseline ") for name in wanted):
        baseline_tree.checkout(REPO, baseline, cleanup)
        print(f"baseline {baseline.short} ({args.baseline}): {baseline.tree}", flush=True)
    if "c Pulsar's Python instance" in wanted:
        ensure_instance_venv()
    if any("image" in name or "docker run" in name for name in wanted):
        build_images(cleanup, args.keep_images)
    broker = harness.broker(args.service_url, args.admin_url, image_name, cleanup)
    print(f"broker: {broker.service_url} (containers: {broker.internal_url})", flush=True)
    results: dict[str, Figures] = {name: Figures() for name in names if name in wanted}
    print("warm-up (a fresh broker's JIT; not counted)", flush=True)
    run_once(broker, limit_loop("batched", workdir), settings, Figures(), settings.messages, True)
    # Round after round of every case, not case after case: the load of a shared machine
    # then changes under every case alike, and the medians compare.
    for round_ in range(1, settings.repeats + 1):
        print(f"round {round_} of {settings.repeats}", flush=True)
        for name, start, options in cases:
            if name not in wanted:
                continue
            wanted_count = options.get("count")
            count = (
                min(wanted_count, settings.messages)
                if isinstance(wanted_count, int)
                else settings.messages
            )
            latency = bool(options.get("latency", True))
            payload = options.get("payload")
            assert payload is None or isinstance(payload, SchemaPayloads)
            per_output = options.get("inputs_per_output", 1)
            assert isinstance(per_output, int)
            run_once(broker, start, settings, results[name], count, latency, payload, per_output)
            figures = results[name]
            p99 = f", p99 {figures.p99s[-1]:.2f} ms" if latency else ""
            print(f"  {name}: {figures.rates[-1]:,.0f} msg/s{p99}", flush=True)
    for name, start in cold:
        if name not in wanted:
            continue
        print(f"  {name} ...", end=" ", flush=True)
        results[name] = cold_start(broker, start, settings.repeats)
        print(f"{_fmt(Figures.median(results[name].starts), 2)} s", flush=True)
    image_facts: list[str] = []
    if IMAGE_DEFAULT in wanted:
        image_facts = measure_image(broker)
        print("\n".join(image_facts), flush=True)

    header = [
        "# Runtime benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: {commits}; {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, broker "
        f"{harness.admin_get(broker.admin_url, '/admin/v2/brokers/version')} "
        f"({'given' if args.service_url else 'started here'}); {settings.messages:,} messages "
        f"of {harness.PAYLOAD_BYTES} bytes per throughput run, latency at {settings.rate} msg/s "
        f"for {settings.seconds:g} s; median of {settings.repeats}; "
        f"{time.monotonic() - began:.0f} s in all.",
        "",
    ]
    io_run = {k: v for k, v in io_cases.items() if k in results}
    short = baseline.short if baseline is not None else None
    text = "\n".join(
        [
            *header,
            *table(results),
            "",
            *verdicts(results, default_concurrency, io_run, short),
            "",
            *issue16(results, short),
            "",
            *image_facts,
        ]
    )
    text += "\n"
    print()
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
