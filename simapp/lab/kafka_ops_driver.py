"""The parent side of `make bench-kafka`: one *run* per mode and repeat, each a fresh Tansu and
a fresh worker process (simapp.lab.kafka_ops_app), and the worker's CPU per event in it.

A run: the worker handles W warm-up events and says it is ready; its idle CPU rate is measured
for IDLE seconds; N catalogue events are produced as one burst (or at `--rate`); the worker
handles them, drains its producer, commits and says it is done. Its CPU over that window
minus the idle rate x window, divided by N, is the gross CPU per event. The machine's load,
the broker's and this process's CPU and a speed reference are recorded around it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from simapp.lab.kafka_ops_spec import (
    APP_PATH,
    DONE_FILE,
    READY_FILE,
    ROOT,
    SPEC_ENV,
    WARMUP_PREFIX,
    Mode,
    WorkerSpec,
)
from simapp.lab.machine import busy_seconds, reference_loop_ms
from simapp.lab.machine import process_cpu_seconds as cpu_seconds

Records = list[tuple[bytes, bytes]]  # (key, value) as the simulate agent reads them


@dataclass(frozen=True)
class Options:
    """The run's options, as parsed by simapp.lab.bench_kafka."""

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


@dataclass(frozen=True)
class Procs:
    """The processes whose CPU a run reads."""

    worker: psutil.Process
    broker: psutil.Process
    parent: psutil.Process  # this one


@dataclass(frozen=True)
class Window:
    """The measured window: from just before the first produce to the worker's done file."""

    wall_s: float
    worker_cpu_s: float
    broker_cpu_s: float
    parent_cpu_s: float
    busy_s: float  # the whole machine's
    steal_s: float
    reference_ms: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    done: dict[str, Any]  # the worker's done file
    produced: dict[str, int]  # produce requests, batches and records since the warm-up


def read_json(path: Path) -> dict[str, Any] | None:
    """A control file's JSON, None until the worker has written it."""
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
    """The worker's log so far (empty if it has none yet)."""
    try:
        return Path(worker.log_path).read_text(errors="replace")
    except (OSError, TypeError):
        return ""


def tail(worker: Any, lines: int = 30) -> str:
    """The end of the worker's log, for an error message."""
    return "\n".join(log_text(worker).splitlines()[-lines:]) or "(no log)"


def catalogue_records(count: int, seed: int) -> Records:
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


def worker_spec(mode: Mode, opts: Options, broker: str, run_dir: Path) -> WorkerSpec:
    """The spec of a run's worker: a fresh app id (topics, group), data under `run_dir`."""
    return WorkerSpec(
        mode=mode.name,
        broker=broker,
        app_id=f"bench-kafka-{uuid.uuid4().hex[:8]}",
        count=opts.count,
        warmup=opts.warmup,
        concurrency=opts.concurrency,
        partitions=opts.partitions,
        store=opts.store,
        datadir=str(run_dir / "data"),
        control_dir=str(run_dir / "control"),
        value_bytes=opts.value_bytes,
        commit_interval=opts.commit_interval,
    )


def spawn_worker(spec: WorkerSpec, run_dir: Path) -> Any:
    """`python -m faust -A simapp.lab.kafka_ops_app:app worker`, the spec in its environment."""
    from simapp.embedded.processes import spawn

    argv = ["-m", "faust", "-A", APP_PATH, "worker", "-l", "info"]
    return spawn(
        "worker",
        [sys.executable, *argv, "--without-web"],
        log_dir=run_dir,
        env={SPEC_ENV: spec.to_env(), "PYTHONUNBUFFERED": "1"},
        cwd=str(ROOT),
    )


def pin(worker_pid: int, tansu_pid: int) -> None:
    """The worker on core 0, Tansu and this process on core 1."""
    os.sched_setaffinity(worker_pid, {0})
    os.sched_setaffinity(tansu_pid, {1})
    os.sched_setaffinity(0, {1})


async def warm_up(
    producer: Any, spec: WorkerSpec, worker: Any, opts: Options, measured: Records
) -> dict[str, Any]:
    """W warm-up events handled (every connection and code path opened); the ready file."""
    warm = [
        (WARMUP_PREFIX + str(i).encode(), measured[i % len(measured)][1])
        for i in range(opts.warmup)
    ]
    await produce(producer, spec.source_topic, warm)
    ready = await wait_for_file(Path(spec.control_dir) / READY_FILE, worker, opts.timeout)
    await asyncio.sleep(opts.settle_seconds)
    return ready


async def idle_cpu_rate(proc: psutil.Process, seconds: float) -> float:
    """The worker's CPU per second while idle: heartbeats, fetch long polls, commit timer."""
    idle_cpu0, idle_t0 = cpu_seconds(proc), time.monotonic()
    await asyncio.sleep(seconds)
    idle_cpu1, idle_t1 = cpu_seconds(proc), time.monotonic()
    return (idle_cpu1 - idle_cpu0) / (idle_t1 - idle_t0)


async def measured_window(
    procs: Procs,
    producer: Any,
    spec: WorkerSpec,
    worker: Any,
    opts: Options,
    measured: Records,
    ready: dict[str, Any],
) -> Window:
    """Produce the measured events and wait for the done file; the worker's CPU and clock
    are read innermost, the machine's, the broker's and ours around them."""
    reference_ms = reference_loop_ms()
    load_before = os.getloadavg()
    times0, broker0, me0 = psutil.cpu_times(), cpu_seconds(procs.broker), cpu_seconds(procs.parent)
    cpu0, t0 = cpu_seconds(procs.worker), time.monotonic()
    await produce(producer, spec.source_topic, measured, opts.rate)
    done = await wait_for_file(Path(spec.control_dir) / DONE_FILE, worker, opts.timeout)
    produced = {k: v - ready["produced"][k] for k, v in done["produced"].items()}
    cpu1, t1 = cpu_seconds(procs.worker), time.monotonic()
    times1, broker1, me1 = psutil.cpu_times(), cpu_seconds(procs.broker), cpu_seconds(procs.parent)
    load_after = os.getloadavg()
    return Window(
        wall_s=t1 - t0,
        worker_cpu_s=cpu1 - cpu0,
        broker_cpu_s=broker1 - broker0,
        parent_cpu_s=me1 - me0,
        busy_s=busy_seconds(times1) - busy_seconds(times0),
        steal_s=getattr(times1, "steal", 0.0) - getattr(times0, "steal", 0.0),
        reference_ms=reference_ms,
        load_before=load_before,
        load_after=load_after,
        done=done,
        produced=produced,
    )


def run_figures(
    mode: Mode, rep: int, opts: Options, idle_rate: float, ready: dict[str, Any], w: Window
) -> dict[str, Any]:
    """One run's row of the JSON's `runs`; `us_per_event` is the gross CPU per event."""
    wall, worker_cpu, done = w.wall_s, w.worker_cpu_s, w.done
    net_cpu = worker_cpu - idle_rate * wall
    others = w.busy_s - worker_cpu - w.broker_cpu_s - w.parent_cpu_s
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
        "produce_requests": w.produced["requests"],
        "records_per_request": w.produced["records"] / max(1, w.produced["requests"]),
        "broker_cpu_s": w.broker_cpu_s,
        "parent_cpu_s": w.parent_cpu_s,
        "other_processes_cores": max(0.0, others) / wall,
        "steal_cores": w.steal_s / wall,
        "reference_loop_ms": w.reference_ms,
        "load_before": w.load_before,
        "load_after": w.load_after,
    }


async def run_once(mode: Mode, rep: int, opts: Options, measured: Records) -> dict[str, Any]:
    """One fresh Tansu and worker; the worker's CPU per event in `mode`."""
    from simapp.config import load_settings
    from simapp.embedded.broker import start_tansu
    from simapp.kafka import clients
    from simapp.kafka.admin import ensure_topics

    run_dir = opts.workdir / f"r{rep}-{mode.name.replace('@', '-')}"
    shutil.rmtree(run_dir, ignore_errors=True)  # no ready/done file of an earlier run
    (run_dir / "control").mkdir(parents=True, exist_ok=True)
    tansu = start_tansu(run_dir)
    worker = None
    producer = None
    try:
        spec = worker_spec(mode, opts, f"127.0.0.1:{tansu.port}", run_dir)
        settings = load_settings(kafka_bootstrap_servers=spec.broker)
        await ensure_topics(settings, [spec.source_topic, spec.sink_topic], opts.partitions)
        worker = spawn_worker(spec, run_dir)
        if opts.pin:
            pin(worker.pid, tansu.pid)
        producer = clients.producer(settings, acks="all", linger_ms=5)
        await producer.start()
        ready = await warm_up(producer, spec, worker, opts, measured)
        procs = Procs(psutil.Process(worker.pid), psutil.Process(tansu.pid), psutil.Process())
        idle_rate = await idle_cpu_rate(procs.worker, opts.idle_seconds)
        window = await measured_window(procs, producer, spec, worker, opts, measured, ready)
        run = run_figures(mode, rep, opts, idle_rate, ready, window)
        run["producer_buffer_full_warnings"] = log_text(worker).count("producer buffer full")
        return run
    finally:
        if producer is not None:
            await producer.stop()
        if worker is not None:
            worker.stop(timeout=15)
        tansu.stop(timeout=10)


async def run_all(opts: Options, seed: int) -> list[dict[str, Any]]:
    """Every mode once, then again, `repeats` times (interleaved: drift hits every mode)."""
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
