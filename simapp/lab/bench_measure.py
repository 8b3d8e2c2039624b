"""The measurement of `make bench`: one embedded session, a warm-up, the burst, the CPU, RSS
and metrics around it, then the reference loops against the same mock.

`measure` runs the steps in order; each step is a function here so that what is timed, and
between which two readings, can be checked by reading one screen.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from simapp.config import load_settings
from simapp.embedded.session import EmbeddedSession, parse_prometheus
from simapp.embedded.stack import EmbeddedStack, http_text
from simapp.lab import results_doc
from simapp.lab.bench_report import goals
from simapp.lab.machine import (
    RssSampler,
    cpu_seconds,
    machine_info,
    process_cpu_seconds,
    system_busy_seconds,
)
from simapp.lab.reference_loops import run_reference
from simapp.limits.concurrency import REASONS

TIMELINE_GAUGES = ("conversations_target", "conversations_active", "conversations_waiting")


@dataclass(frozen=True)
class Setup:
    """The settings a run derives from its options."""

    workdir: Path
    mock_limit: float  # the mock's own 1 s limit, 0 = none
    margin: float  # the workers' LLM_RATE_SAFETY_MARGIN

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Setup:
        """The defaults filled in: a temp workdir, the mock limited to --rps, the margin from
        the settings."""
        return cls(
            workdir=Path(args.workdir or tempfile.mkdtemp(prefix="simapp-bench-")),
            mock_limit=args.rps if args.mock_rps_limit is None else args.mock_rps_limit,
            margin=(
                args.safety_margin
                if args.safety_margin is not None
                else load_settings().llm_rate_safety_margin  # the default, or the env's value
            ),
        )


@dataclass(frozen=True)
class CpuReading:
    """CPU seconds so far of the run's processes and of the machine, at one moment."""

    workers: list[float | None]
    others: dict[str, float | None]  # broker, mock_llm, sink
    driver: float  # this process
    system: dict[str, float]  # system_busy_seconds()


@dataclass(frozen=True)
class Burst:
    """The measured burst: what was sent, how long it took, the readings either side."""

    pids: list[int]
    sent: int
    produced_s: float
    detected_s: float  # first produce -> every event accounted for, as this process saw it
    wall_s: float  # first produce -> last delivery
    before: CpuReading
    after: CpuReading
    peaks: dict[int, int]  # peak RSS bytes by worker pid
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    slots: dict[str, Any]  # SlotSampler.stop()


class SlotSampler(threading.Thread):
    """Reads each worker's conversation slots (/metrics) every `interval` s during the burst:
    the largest target and number of running conversations, how often each reason was what
    limited the pace (simapp/limits/concurrency.py), and a timeline of (seconds into the
    burst, target, running, waiting) per worker, to see where a burst's tail goes."""

    def __init__(self, session: EmbeddedSession, interval: float = 2.0) -> None:
        super().__init__(name="slot-sampler", daemon=True)
        self.session = session
        self.interval = interval
        self.done = threading.Event()
        self.max_target: dict[str, float] = {}
        self.max_active: dict[str, float] = {}
        self.reasons: Counter[str] = Counter()
        self.timeline: dict[str, list[list[float]]] = {}
        self.t0 = time.monotonic()

    def sample(self) -> None:
        for worker in self.session.stack.workers:
            try:
                text = http_text(f"{self.session.worker_url(worker)}/metrics", timeout=3)
            except OSError:
                continue
            values = parse_prometheus(text)
            name = worker.name
            for key, store in (("conversations_target", self.max_target),
                               ("conversations_active", self.max_active)):  # fmt: skip
                store[name] = max(store.get(name, 0.0), values.get(key, 0.0))
            self.timeline.setdefault(name, []).append(
                [round(time.monotonic() - self.t0, 1)]
                + [values.get(key, -1.0) for key in TIMELINE_GAUGES]
            )
            for reason in REASONS:
                if values.get(f'conversations_limited_by{{reason="{reason}"}}') == 1.0:
                    self.reasons[reason] += 1

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, Any]:
        self.done.set()
        self.join(timeout=10)
        return {
            "max_target": self.max_target,
            "max_active": self.max_active,
            "limited_by_samples": dict(self.reasons),
            "timeline_columns": ["s", *TIMELINE_GAUGES],
            "timeline": self.timeline,
        }


def make_session(args: argparse.Namespace, setup: Setup) -> EmbeddedSession:
    """The embedded session: WORKERS workers sharing a budget of RPS, a mock that enforces it."""
    mock_args = [
        *("--latency-ms", str(args.latency_ms), "--latency-jitter-ms", str(args.jitter_ms)),
        *("--latency-distribution", args.latency_dist),
    ]
    if setup.mock_limit:
        mock_args += ["--rps-limit", str(setup.mock_limit)]
    return EmbeddedSession(
        setup.workdir,
        partitions=args.partitions,
        mock_args=mock_args,
        worker_settings={
            "llm_global_rate_limit_rps": args.rps,
            "llm_rate_limit_rps": args.rps,
            **({"concurrent_conversations": args.concurrency} if args.concurrency else {}),
            **({"llm_connection_pool_size": args.pool_size} if args.pool_size else {}),
            "llm_route": args.route,
            "log_level": "WARNING",
            "llm_rate_safety_margin": setup.margin,
        },
    )


def result_header(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """What the result says before anything is measured: when, how, where, with what."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(
            ["python", "-m", "simapp.lab.bench", *results_doc.command_args(args.argv)]
        ),
        "machine": machine_info(),
        "note": args.note,
        "route": args.route,
        "config": {
            "count": args.count,
            "workers": args.workers,
            "rps": args.rps,
            "concurrency": args.concurrency,
            "pool_size": args.pool_size,
            "route": args.route,
            "model": args.model,
            "latency_ms": args.latency_ms,
            "jitter_ms": args.jitter_ms,
            "latency_dist": args.latency_dist,
            "mock_rps_limit": setup.mock_limit,
            "safety_margin": setup.margin,
            "partitions": args.partitions,
            "bare_calls": args.bare_calls,
            "raw_calls": args.raw_calls,
            "seed": args.seed,
            "warmup": args.warmup,
        },
        "workdir": str(setup.workdir),
    }


def warm_up(session: EmbeddedSession, args: argparse.Namespace) -> None:
    """A few simulations first (lazy imports, clients, Faust's first sends), not measured."""
    events = session.events(
        args.warmup, model=args.model, batch_id=f"warmup-{session.stack.run_id}", seed=args.seed + 1
    )
    sent = session.send(events)
    done = session.wait_accounted(sent, time.monotonic(), 180, every=30, out=open(os.devnull, "w"))
    print(f"  warm-up: {sent} simulations {'done' if done >= sent else 'NOT done'}", flush=True)
    session.reset_counters()


def start(session: EmbeddedSession, args: argparse.Namespace, setup: Setup) -> None:
    """The stack up, the consumer group stable (or a warning), the warm-up done."""
    print(f"starting the embedded stack in {setup.workdir} ...", flush=True)
    session.start(args.workers)
    if not session.wait_group_stable():
        print("WARNING: consumer group not stable after 90 s; measuring anyway", flush=True)
    if args.warmup:
        warm_up(session, args)
    print(
        f"  {args.workers} worker(s) up (ceiling {args.concurrency or 'default'}, pool "
        f"{args.pool_size or 'default'}, route {args.route}); mock latency "
        f"{args.latency_ms}±{args.jitter_ms} ms {args.latency_dist}, "
        f"limit {setup.mock_limit or 'none'} rps",
        flush=True,
    )


def read_cpu(pids: list[int], others: dict[str, Any]) -> CpuReading:
    """The workers' CPU first: the readings closest to the burst are theirs."""
    return CpuReading(
        workers=[cpu_seconds(pid) for pid in pids],
        others={k: cpu_seconds(p.pid) for k, p in others.items() if p is not None},
        driver=process_cpu_seconds(psutil.Process()),
        system=system_busy_seconds(),
    )


def run_burst(
    session: EmbeddedSession, args: argparse.Namespace, events: list[dict[str, Any]]
) -> Burst:
    """Send the burst and wait until every event is delivered or dead-lettered, with CPU and
    metrics read just before the first produce and just after, and RSS sampled throughout."""
    stack = session.stack
    pids = [w.pid for w in stack.workers]
    others = {"broker": stack.broker, "mock_llm": stack.mock, "sink": stack.sink}
    rss = RssSampler(pids)
    rss.start()
    slots = SlotSampler(session)
    slots.start()
    before = read_cpu(pids, others)
    metrics_before = session.worker_metrics()
    t0_wall, t0 = time.time(), time.monotonic()
    sent = session.send(events)
    produced_s = time.monotonic() - t0
    print(f"sent {sent} events in {produced_s:.1f}s (batch {events[0]['batch_id']})", flush=True)
    session.wait_accounted(sent, t0, args.timeout, every=args.progress_every)
    detected = time.monotonic() - t0
    after = read_cpu(pids, others)
    peaks = rss.stop()
    slot_view = slots.stop()
    metrics_after = session.worker_metrics()
    last = session.last_delivery_at()
    return Burst(
        pids=pids,
        sent=sent,
        produced_s=produced_s,
        detected_s=detected,
        wall_s=(last - t0_wall) if last is not None else detected,
        before=before,
        after=after,
        peaks=peaks,
        metrics_before=metrics_before,
        metrics_after=metrics_after,
        slots=slot_view,
    )


def worker_cpu(burst: Burst) -> list[float | None]:
    """Each worker's CPU seconds during the burst (None if it died)."""
    return [
        round(b - a, 2) if a is not None and b is not None else None
        for a, b in zip(burst.before.workers, burst.after.workers, strict=True)
    ]


def burst_figures(
    burst: Burst, report: dict[str, Any], rps: float, margin: float
) -> dict[str, Any]:
    """Wall time against the paced floor, the achieved rate, CPU per LLM call, peak RSS."""
    calls, sent, wall = report["llm_calls"], burst.sent, burst.wall_s
    cpu = worker_cpu(burst)
    total_cpu = sum(c for c in cpu if c is not None)
    paced = rps * (1 - margin)
    floor = calls / paced if paced else None
    peaks = burst.peaks
    return dict(
        calls_per_simulation=round(calls / sent, 3) if sent else None,
        floor_seconds=round(floor, 2) if floor else None,
        wall_over_floor=round(wall / floor, 3) if floor else None,
        achieved_rps=report["achieved_llm_rps"],
        achieved_over_budget=round(report["achieved_llm_rps"] / rps, 3),
        achieved_over_paced=round(report["achieved_llm_rps"] / paced, 3) if paced else None,
        worker_cpu_seconds=cpu,
        worker_cpu_seconds_total=round(total_cpu, 2),
        worker_cpu_s_per_1000_calls=round(1000 * total_cpu / calls, 3) if calls else None,
        worker_peak_rss_mb=[round(peaks[pid] / 2**20, 1) for pid in burst.pids],
        peak_rss_mb=round(max(peaks.values()) / 2**20, 1) if peaks else None,
    )


def cpu_during_run(burst: Burst) -> dict[str, float]:
    """CPU seconds of the workers, the other processes of the stack, this driver and the
    rest of the machine during the burst, and what the machine could have given."""
    before, after = burst.before, burst.after
    total_cpu = sum(c for c in worker_cpu(burst) if c is not None)
    other_cpu: dict[str, float] = {}
    for k, a in before.others.items():
        b = after.others.get(k)
        if a is not None and b is not None:
            other_cpu[k] = round(b - a, 2)
    other_cpu["driver"] = round(after.driver - before.driver, 2)
    ours = total_cpu + sum(other_cpu.values())
    busy = after.system["busy"] - before.system["busy"]
    return {
        "workers": round(total_cpu, 2),
        **other_cpu,
        "machine_busy": round(busy, 2),
        "machine_steal": round(after.system["steal"] - before.system["steal"], 2),
        "other_processes": round(max(0.0, busy - ours), 2),
        "machine_capacity": round((os.cpu_count() or 1) * burst.detected_s, 2),
    }


def worker_view(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the workers' own metrics say about the measured part (summed over workers):
    the LLM call time they saw (mock latency + their own event-loop delay) and the time spent
    waiting for the rate budget, per successful call."""

    def total(prefix: str) -> float:
        return sum(v for k, v in after.items() if k.startswith(prefix)) - sum(
            v for k, v in before.items() if k.startswith(prefix)
        )

    calls = total("llm_api_latency_seconds_count")
    return {
        "llm_calls": int(calls),
        "mean_llm_call_s": round(total("llm_api_latency_seconds_sum") / calls, 3)
        if calls
        else None,
        "mean_rate_wait_s": round(total("llm_rate_limit_wait_seconds_total") / calls, 3)
        if calls
        else None,
        "llm_errors": int(total("llm_api_errors_total")),
        "callback_attempts": int(total("callback_attempts_total")),
        "kafka_commits": int(total("kafka_commits_succeeded_total")),
    }


def log_problems(stack: EmbeddedStack) -> dict[str, Any]:
    """Tell-tale lines in the worker logs: a crashed agent or a partition mismatch invalidates
    a run. `rate_shares` is each worker's last logged share of the global budget (logged at
    INFO, so it may be missing once LOG_LEVEL=WARNING applies); they should add up to 1."""
    needles = {
        "agent_crashed": "Crashed reason=",
        "partitions_mismatch": "PartitionsMismatch",
        "error_lines": '"level": "ERROR"',
    }
    out: dict[str, Any] = dict.fromkeys(needles, 0)
    shares: list[float | None] = []
    for worker in stack.workers:
        share = None
        if worker.log_path is not None and worker.log_path.exists():
            text = worker.log_path.read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                for name, needle in needles.items():
                    if needle in line:
                        out[name] += 1
                if "rate budget share" in line:
                    try:
                        share = float(line.split("rate budget share", 1)[1].split()[0])
                    except (IndexError, ValueError):
                        pass
        shares.append(share)
    out["rate_shares"] = shares
    return out


def measure_burst(
    session: EmbeddedSession, args: argparse.Namespace, margin: float
) -> dict[str, Any]:
    """The burst of COUNT catalogue events and everything the result says about it."""
    events = session.events(args.count, model=args.model, seed=args.seed)
    burst = run_burst(session, args, events)
    report = session.report(burst.sent, burst.wall_s)
    out = dict(report)
    out["produce_seconds"] = round(burst.produced_s, 2)
    out.update(burst_figures(burst, report, args.rps, margin))
    out["worker_view"] = worker_view(burst.metrics_before, burst.metrics_after)
    out["timeouts"] = report["end_reasons"].get("timeout", 0)
    out["conversation_slots"] = burst.slots
    mock = session.mock_stats()
    out["llm_calls_per_5s"] = calls_per_bin(session, 5.0)
    out["mock_latency_ms"] = mock.get("latency_ms")  # drawn: p50, p99, max
    out["mock_configured_latency_p99_ms"] = mock.get("configured_latency_p99_ms")
    out["worker_log_problems"] = log_problems(session.stack)
    out["cpu_seconds_during_run"] = cpu_during_run(burst)
    return out


def calls_per_bin(session: EmbeddedSession, width: float) -> list[int]:
    """The provider's admitted calls in consecutive `width`-second bins from its first call:
    where the budget was full and where a burst's start or tail left it idle."""
    times = http_json_detail(session)
    if not times:
        return []
    first = min(times)
    bins = [0] * (int((max(times) - first) // width) + 1)
    for t in times:
        bins[int((t - first) // width)] += 1
    return bins


def http_json_detail(session: EmbeddedSession) -> list[float]:
    """The mock's admission times (seconds), as many as it keeps."""
    stats = json.loads(http_text(f"{session.stack.mock_url}/stats?detail=1", timeout=10))
    return [float(t) for t in stats.get("admitted_times") or []]


def compare_with_references(
    session: EmbeddedSession, args: argparse.Namespace, per_call: float | None
) -> dict[str, Any]:
    """The raw and the bare LiteLLM loop against the same mock, and the workers' CPU per call
    (`per_call`, s per 1000 calls) as a ratio to each."""
    out: dict[str, Any] = {}
    for kind, key, n in (("raw", "raw", args.raw_calls), ("litellm", "bare", args.bare_calls)):
        loop = run_reference(session, args, kind, n)
        out[key] = loop
        ms = loop.get("cpu_ms_per_call")
        out[f"{key}_cpu_s_per_1000_calls"] = ms
        out[f"cpu_ratio_vs_{key}"] = round(per_call / ms, 2) if per_call and ms else None
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run, its result as one dict (the JSON result's fields, in its order)."""
    setup = Setup.from_args(args)
    session = make_session(args, setup)
    result = result_header(args, setup)
    try:
        start(session, args, setup)
        result.update(measure_burst(session, args, setup.margin))
        print("stopping workers; reference loops against the same mock ...", flush=True)
        session.stack.stop_workers(timeout=60)
        per_call = result["worker_cpu_s_per_1000_calls"]
        result.update(compare_with_references(session, args, per_call))
        result["goals"] = goals(result, args.rps)
        return result
    finally:
        session.stop()
        print(f"logs: {session.stack.log_dir}", flush=True)
