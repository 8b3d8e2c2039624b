"""`make bench`: throughput, rate-budget fidelity and CPU cost of simapp on the embedded stack.

An embedded session (simapp/embedded/session.py) with WORKERS workers sharing a global LLM
budget of RPS and a mock LLM that enforces it, a burst of COUNT catalogue events, then:

* wall time (first produce -> last delivery) against the paced floor
  `LLM calls / (RPS x (1 - LLM_RATE_SAFETY_MARGIN))`;
* achieved LLM rate, the mock's busiest 1 s window and its 429 count;
* CPU seconds and peak RSS of each worker process (psutil), CPU per LLM call;
* p50/p95 simulation duration (the summaries' `duration_ms`);
* in the same run, against the same mock: a raw aiohttp POST loop (the floor of any client)
  and a bare `litellm.acompletion` loop, and the workers' CPU per call as a ratio to each.

Writes a JSON result (bench-results/<timestamp>.json) and appends a row to
docs/benchmarks.md, whose header explains every column and the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

from simapp.config import load_settings
from simapp.embedded.catalogue import make_events
from simapp.embedded.session import EmbeddedSession
from simapp.embedded.stack import EmbeddedStack, http_json
from simapp.lab import results_doc

DOC_PATH = results_doc.root() / "docs" / "benchmarks.md"
OVERHEAD_MARGIN_S = 0.05  # per-turn time on top of the mock latency (rate wait, checkpoint, ...)

GOALS = {
    "wall_le_1.03x_paced_floor": "wall <= 1.03 x paced floor",
    "max_window_le_budget": "mock max 1 s window <= budget",
    "zero_429": "no 429 from the mock",
    "missing_zero": "every event delivered or dead-lettered",
    "cpu_le_8x_raw": "worker CPU per LLM call <= 8 x raw aiohttp loop",
    "cpu_le_0.35x_bare": "worker CPU per LLM call <= 0.35 x bare LiteLLM loop",
}


# --------------------------------------------------------------------------- sizing


def default_concurrency(rps: float, workers: int, latency_ms: float, jitter_ms: float) -> int:
    """Little's law per worker, with 50 % headroom: ceil(rps/W * (latency + margin) * 1.5)."""
    cycle_s = latency_ms / 1000 + jitter_ms / 1000 + OVERHEAD_MARGIN_S
    return max(50, math.ceil(rps / workers * cycle_s * 1.5))


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        litellm_version = version("litellm")  # not imported here: 2.5 s and ~200 MB
    except PackageNotFoundError:
        litellm_version = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "litellm": litellm_version,
    }


def system_busy_seconds() -> dict[str, float]:
    """Machine-wide CPU seconds so far: busy (not idle/iowait) and steal."""
    t = psutil.cpu_times()
    busy = sum(
        getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal")
    )
    return {"busy": busy, "steal": getattr(t, "steal", 0.0)}


def cpu_seconds(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class RssSampler(threading.Thread):
    """Samples the RSS of some processes every `interval` s and keeps each one's maximum."""

    def __init__(self, pids: list[int], interval: float = 1.0) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = dict.fromkeys(pids, 0)
        self.interval = interval
        self.done = threading.Event()

    def sample(self) -> None:
        for pid, proc in self.procs.items():
            try:
                self.peak[pid] = max(self.peak[pid], proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)

    def stop(self) -> dict[int, int]:
        self.done.set()
        self.join(timeout=5)
        self.sample()
        return dict(self.peak)


# --------------------------------------------------------------------------- reference loops


def bare_messages() -> list[list[dict[str, str]]]:
    """Request shapes like simapp's: assistant turns and simulated-user turns, a few long."""
    from simapp.simulation.conversation import ConversationEngine, assistant_system_prompt
    from simapp.simulation.schemas import SimulationEvent

    engine = ConversationEngine(llm=None, max_iterations_cap=10, timeout=300)  # type: ignore[arg-type]
    shapes = []
    for event in make_events(8, callback_url="http://127.0.0.1/cb", seed=1):
        ev = SimulationEvent.model_validate(event)
        history = [
            {"role": "system", "content": assistant_system_prompt(ev)},
            {"role": "user", "content": ev.intent},
        ]
        shapes.append(list(history))
        history.append({"role": "assistant", "content": "Here is a short, helpful answer."})
        shapes.append(engine.user_view(ev, history))
    return shapes


async def lanes(n: int, concurrency: int, call: Any, errors: dict[str, int]) -> int:
    """n calls by `concurrency` tasks, each calling one after another; successes."""
    next_i = ok = 0

    async def lane() -> None:
        nonlocal next_i, ok
        while next_i < n:
            i = next_i
            next_i += 1
            try:
                await call(i)
                ok += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1

    await asyncio.gather(*(lane() for _ in range(min(concurrency, n))))
    return ok


async def reference_loop(args: argparse.Namespace) -> dict[str, Any]:
    """The bare LiteLLM loop (`--kind litellm`) or a raw aiohttp POST loop (`--kind raw`)."""
    shapes = bare_messages()
    errors: dict[str, int] = {}
    started_import = time.perf_counter()
    if args.kind == "litellm":
        from simapp.llm.litellm_route import import_litellm

        litellm = import_litellm(args.pool_size)

        async def call(i: int) -> None:
            resp = await litellm.acompletion(
                model=f"openai/{args.model}",
                messages=shapes[i % len(shapes)],
                api_base=args.api_base,
                api_key=args.api_key,
                timeout=args.timeout,
                max_retries=0,
            )
            _ = resp.choices[0].message.content, resp.usage

        session = None
    else:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.pool_size, limit_per_host=args.pool_size)
        )
        url = args.api_base.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {args.api_key}"}

        async def call(i: int) -> None:
            body = {"model": args.model, "messages": shapes[i % len(shapes)]}
            async with session.post(url, json=body, headers=headers) as resp:
                data = json.loads(await resp.read())
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                _ = data["choices"][0]["message"]["content"], data["usage"]

    import_s = time.perf_counter() - started_import
    try:
        warmup = min(50, max(5, args.calls // 20))
        await lanes(warmup, args.concurrency, call, errors)  # clients, the connection pool
        errors.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        ok = await lanes(args.calls, args.concurrency, call, errors)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    finally:
        if session is not None:
            await session.close()
    return {
        "kind": args.kind,
        "model": args.model,
        "calls": args.calls,
        "ok": ok,
        "errors": errors,
        "warmup_calls": warmup,
        "concurrency": args.concurrency,
        "pool_size": args.pool_size,
        "import_seconds": round(import_s, 2),
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
        "achieved_rps": round(ok / wall, 1) if wall > 0 else None,
        "cpu_ms_per_call": round(1000 * cpu / ok, 3) if ok else None,
    }


def reference_child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m simapp.lab.bench --reference-child")
    p.add_argument("--kind", choices=["litellm", "raw"], required=True)
    p.add_argument("--api-base", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--model", default="gpt-4")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--pool-size", type=int, default=50)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    result = asyncio.run(reference_loop(args))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] == args.calls else 1


def run_reference(
    session: EmbeddedSession, args: argparse.Namespace, kind: str, calls: int, pool_size: int
) -> dict[str, Any]:
    """Reconfigure the mock (same latency, no RPS limit, counters reset) and run one loop."""
    stack = session.stack
    http_json(f"{stack.mock_url}/admin/config", {"rps_limit": 0})
    http_json(f"{stack.mock_url}/admin/reset", {})
    argv = [
        sys.executable, "-m", "simapp.lab.bench", "--reference-child", "--kind", kind,
        "--api-base", f"{stack.mock_url}/v1",
        "--api-key", stack.api_key,
        "--model", args.model,
        "--calls", str(calls),
        "--concurrency", str(args.concurrency),
        "--pool-size", str(pool_size),
        "--timeout", str(load_settings().llm_timeout),
    ]  # fmt: skip
    timeout = 120 + calls / 20
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    (stack.log_dir / f"{kind}.log").write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{kind} loop failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    mock = session.mock_stats()
    result["mock_200"] = mock.get("responses_by_status", {}).get("200", 0)
    result["mock_max_in_flight"] = mock.get("max_in_flight")
    return result


# --------------------------------------------------------------------------- the run


def warm_up(session: EmbeddedSession, args: argparse.Namespace) -> None:
    """A few simulations first (lazy imports, clients, Faust's first sends), not measured."""
    events = session.events(
        args.warmup, model=args.model, batch_id=f"warmup-{session.stack.run_id}", seed=args.seed + 1
    )
    sent = session.send(events)
    done = session.wait_accounted(sent, time.monotonic(), 180, every=30, out=open(os.devnull, "w"))
    print(f"  warm-up: {sent} simulations {'done' if done >= sent else 'NOT done'}", flush=True)
    session.reset_counters()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="simapp-bench-"))
    mock_limit = args.rps if args.mock_rps_limit is None else args.mock_rps_limit
    mock_args = ["--latency-ms", str(args.latency_ms), "--latency-jitter-ms", str(args.jitter_ms)]
    if mock_limit:
        mock_args += ["--rps-limit", str(mock_limit)]
    pool_size = args.pool_size or max(50, args.concurrency)
    margin = (
        args.safety_margin
        if args.safety_margin is not None
        else load_settings().llm_rate_safety_margin  # the default, or the env's value
    )
    session = EmbeddedSession(
        workdir,
        partitions=args.partitions,
        mock_args=mock_args,
        worker_settings={
            "llm_global_rate_limit_rps": args.rps,
            "llm_rate_limit_rps": args.rps,
            "concurrent_conversations": args.concurrency,
            "llm_connection_pool_size": pool_size,
            "llm_route": args.route,
            "log_level": "WARNING",
            "llm_rate_safety_margin": margin,
        },
    )
    result: dict[str, Any] = {
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
            "pool_size": pool_size,
            "route": args.route,
            "model": args.model,
            "latency_ms": args.latency_ms,
            "jitter_ms": args.jitter_ms,
            "mock_rps_limit": mock_limit,
            "safety_margin": margin,
            "partitions": args.partitions,
            "bare_calls": args.bare_calls,
            "raw_calls": args.raw_calls,
            "seed": args.seed,
            "warmup": args.warmup,
        },
        "workdir": str(workdir),
    }
    stack = session.stack
    try:
        print(f"starting the embedded stack in {workdir} ...", flush=True)
        session.start(args.workers)
        if not session.wait_group_stable():
            print("WARNING: consumer group not stable after 90 s; measuring anyway", flush=True)
        if args.warmup:
            warm_up(session, args)
        print(
            f"  {args.workers} worker(s) up (concurrency {args.concurrency}, pool {pool_size}, "
            f"route {args.route}); mock latency {args.latency_ms}±{args.jitter_ms} ms, "
            f"limit {mock_limit or 'none'} rps",
            flush=True,
        )
        events = session.events(args.count, model=args.model, seed=args.seed)
        pids = [w.pid for w in stack.workers]
        others = {"broker": stack.broker, "mock_llm": stack.mock, "sink": stack.sink}
        rss = RssSampler(pids)
        rss.start()

        cpu0 = [cpu_seconds(pid) for pid in pids]
        others0 = {k: cpu_seconds(p.pid) for k, p in others.items() if p is not None}
        me = psutil.Process()
        me0 = sum(me.cpu_times()[:2])
        sys0 = system_busy_seconds()
        metrics0 = session.worker_metrics()
        t0_wall, t0 = time.time(), time.monotonic()
        sent = session.send(events)
        produced_s = time.monotonic() - t0
        print(
            f"sent {sent} events in {produced_s:.1f}s (batch {events[0]['batch_id']})", flush=True
        )
        session.wait_accounted(sent, t0, args.timeout, every=args.progress_every)
        detected = time.monotonic() - t0
        cpu1 = [cpu_seconds(pid) for pid in pids]
        others1 = {k: cpu_seconds(p.pid) for k, p in others.items() if p is not None}
        me1 = sum(me.cpu_times()[:2])
        sys1 = system_busy_seconds()
        peaks = rss.stop()
        metrics1 = session.worker_metrics()

        last = session.last_delivery_at()
        wall = (last - t0_wall) if last is not None else detected
        report = session.report(sent, wall)
        result.update(report)
        result["produce_seconds"] = round(produced_s, 2)

        calls = report["llm_calls"]
        worker_cpu = [
            round(b - a, 2) if a is not None and b is not None else None
            for a, b in zip(cpu0, cpu1, strict=True)
        ]
        total_cpu = sum(c for c in worker_cpu if c is not None)
        paced = args.rps * (1 - margin)
        floor = calls / paced if paced else None
        result.update(
            calls_per_simulation=round(calls / sent, 3) if sent else None,
            floor_seconds=round(floor, 2) if floor else None,
            wall_over_floor=round(wall / floor, 3) if floor else None,
            achieved_rps=report["achieved_llm_rps"],
            achieved_over_budget=round(report["achieved_llm_rps"] / args.rps, 3),
            achieved_over_paced=round(report["achieved_llm_rps"] / paced, 3) if paced else None,
            worker_cpu_seconds=worker_cpu,
            worker_cpu_seconds_total=round(total_cpu, 2),
            worker_cpu_s_per_1000_calls=round(1000 * total_cpu / calls, 3) if calls else None,
            worker_peak_rss_mb=[round(peaks[pid] / 2**20, 1) for pid in pids],
            peak_rss_mb=round(max(peaks.values()) / 2**20, 1) if peaks else None,
        )
        other_cpu = {
            k: round(others1[k] - others0[k], 2)
            for k in others0
            if others0[k] is not None and others1.get(k) is not None
        }
        other_cpu["driver"] = round(me1 - me0, 2)
        ours = total_cpu + sum(other_cpu.values())
        busy = sys1["busy"] - sys0["busy"]
        result["worker_view"] = worker_view(metrics0, metrics1)
        result["worker_log_problems"] = log_problems(stack)
        result["cpu_seconds_during_run"] = {
            "workers": round(total_cpu, 2),
            **other_cpu,
            "machine_busy": round(busy, 2),
            "machine_steal": round(sys1["steal"] - sys0["steal"], 2),
            "other_processes": round(max(0.0, busy - ours), 2),
            "machine_capacity": round((os.cpu_count() or 1) * detected, 2),
        }

        print("stopping workers; reference loops against the same mock ...", flush=True)
        stack.stop_workers(timeout=60)
        per_call = result["worker_cpu_s_per_1000_calls"]
        for kind, key, n in (("raw", "raw", args.raw_calls), ("litellm", "bare", args.bare_calls)):
            loop = run_reference(session, args, kind, n, pool_size)
            result[key] = loop
            ms = loop.get("cpu_ms_per_call")
            result[f"{key}_cpu_s_per_1000_calls"] = ms
            result[f"cpu_ratio_vs_{key}"] = round(per_call / ms, 2) if per_call and ms else None
        result["goals"] = goals(result, args.rps)
        return result
    finally:
        session.stop()
        print(f"logs: {stack.log_dir}", flush=True)


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


def goals(r: dict[str, Any], rps: float) -> dict[str, bool | None]:
    def le(a: Any, b: float) -> bool | None:
        return None if a is None else a <= b

    return {
        "wall_le_1.03x_paced_floor": le(r.get("wall_over_floor"), 1.03),
        "max_window_le_budget": le(r.get("mock_max_1s_window"), rps),
        "zero_429": r.get("llm_429") == 0,
        "missing_zero": r.get("missing") == 0,
        "cpu_le_8x_raw": le(r.get("cpu_ratio_vs_raw"), 8.0),
        "cpu_le_0.35x_bare": le(r.get("cpu_ratio_vs_bare"), 0.35),
    }


# --------------------------------------------------------------------------- output


def doc_row(r: dict[str, Any]) -> str:
    m, c, cpu = r["machine"], r["config"], r.get("cpu_seconds_during_run", {})
    load = m.get("loadavg_at_start") or ["?"]
    notes = (
        f"load1 {load[0]} at start; other processes used {cpu.get('other_processes', '?')} of "
        f"{cpu.get('machine_capacity', '?')} CPU-s; mock {cpu.get('mock_llm', '?')} CPU-s, "
        f"broker {cpu.get('broker', '?')} CPU-s"
    )
    if r.get("note"):
        notes = f"{r['note']}; {notes}"
    problems = r.get("worker_log_problems") or {}
    if problems.get("agent_crashed") or problems.get("partitions_mismatch"):
        notes += (
            f"; INVALID: {problems.get('agent_crashed')} agent crashes, "
            f"{problems.get('partitions_mismatch')} partition mismatches in worker logs"
        )
    failed = [name for name, ok in (r.get("goals") or {}).items() if ok is False]
    if failed:
        notes += "; missed: " + ", ".join(failed)
    cells = [
        r["date"][:16].replace("T", " "),
        f"`{r['command']}`",
        f"{m['nproc']}× {m['cpu_model']}",
        c["count"],
        c["workers"],
        c["rps"],
        c["route"],
        r["wall_seconds"],
        r["floor_seconds"],
        r["wall_over_floor"],
        r["achieved_over_budget"],
        r["mock_max_1s_window"],
        r["llm_429"],
        r["worker_cpu_s_per_1000_calls"],
        r["raw_cpu_s_per_1000_calls"],
        r["cpu_ratio_vs_raw"],
        r["bare_cpu_s_per_1000_calls"],
        r["cpu_ratio_vs_bare"],
        ", ".join(str(x) for x in r["worker_peak_rss_mb"]),
        f"{r['p50_duration_s']} / {r['p95_duration_s']}",
        r["missing"],
        notes,
    ]
    return results_doc.row(cells)


TABLE_HEADER = (
    "| date (UTC) | command | machine | count | workers | rps | route | wall s | paced floor s "
    "| wall/floor | achieved/budget | max 1 s window | 429s | worker CPU ms/call "
    "| raw ms/call | × raw | bare LiteLLM ms/call | × bare | peak RSS MB | p50 / p95 s "
    "| missing | notes |\n"
    "|---|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|---|"
)


def print_summary(r: dict[str, Any]) -> None:
    rows = [
        ("sent / delivered / missing", f"{r['sent']} / {r['delivered']} / {r['missing']}"),
        ("dead-lettered", r["dead_lettered"] or "none"),
        ("LLM calls (200) / per simulation", f"{r['llm_calls']} / {r['calls_per_simulation']}"),
        ("wall / paced floor", f"{r['wall_seconds']} s / {r['floor_seconds']} s "
                               f"= {r['wall_over_floor']}"),
        ("achieved RPS / budget", f"{r['achieved_rps']} / {r['config']['rps']} "
                                  f"= {r['achieved_over_budget']}"),
        ("mock max 1 s window / 429s", f"{r['mock_max_1s_window']} / {r['llm_429']}"),
        ("worker CPU s", f"{r['worker_cpu_seconds']} "
                         f"({r['worker_cpu_s_per_1000_calls']} s per 1000 calls)"),
        ("raw aiohttp loop CPU ms per call", r["raw_cpu_s_per_1000_calls"]),
        ("ratio simapp / raw", r["cpu_ratio_vs_raw"]),
        ("bare LiteLLM CPU ms per call", r["bare_cpu_s_per_1000_calls"]),
        ("ratio simapp / bare LiteLLM", r["cpu_ratio_vs_bare"]),
        ("peak RSS MB per worker", r["worker_peak_rss_mb"]),
        ("simulation p50 / p95", f"{r['p50_duration_s']} s / {r['p95_duration_s']} s"),
        ("workers' view per LLM call", f"{r['worker_view']['mean_llm_call_s']} s in the call, "
                                       f"{r['worker_view']['mean_rate_wait_s']} s budget wait"),
        ("CPU-s during run", r["cpu_seconds_during_run"]),
    ]  # fmt: skip
    print("=" * 72)
    for name, value in rows:
        print(f"{name:>34}: {value}")
    for name, ok in r["goals"].items():
        print(f"{'goal ' + GOALS[name]:>60}: {'ok' if ok else 'MISSED' if ok is False else '-'}")
    print("=" * 72, flush=True)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m simapp.lab.bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--count", type=int, default=10_000, help="events in the burst")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--rps", type=float, default=200.0, help="global LLM budget (requests/s)")
    p.add_argument("--latency-ms", type=int, default=300, help="mock LLM latency")
    p.add_argument("--jitter-ms", type=int, default=100, help="mock latency ± jitter")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="conversations per worker; default max(50, ceil(rps/workers * (latency + jitter "
        f"+ {OVERHEAD_MARGIN_S * 1000:.0f} ms) * 1.5))",
    )
    p.add_argument("--pool-size", type=int, default=None, help="default max(50, concurrency)")
    p.add_argument(
        "--route",
        choices=["openai", "litellm"],
        default="openai",
        help="workers' LLM_ROUTE: the OpenAI protocol spoken directly, or the LiteLLM library",
    )
    p.add_argument("--model", default="gpt-4")
    p.add_argument(
        "--mock-rps-limit",
        type=float,
        default=None,
        help="the mock's own 1 s limit (429 above it); default = --rps, 0 = none",
    )
    p.add_argument(
        "--safety-margin",
        type=float,
        default=None,
        help="workers' LLM_RATE_SAFETY_MARGIN (default: the setting, 0.05 unless the env sets "
        "it); the workers use at most (1 - margin) x --rps",
    )
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--bare-calls", type=int, default=2000, help="calls of the bare LiteLLM loop")
    p.add_argument("--raw-calls", type=int, default=4000, help="calls of the raw aiohttp loop")
    p.add_argument(
        "--warmup", type=int, default=20, help="simulations run (and not measured) before"
    )
    p.add_argument("--seed", type=int, default=42, help="catalogue seed (same events every run)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many s")
    p.add_argument("--progress-every", type=float, default=10.0, help="progress line interval s")
    p.add_argument("--out", default=None, help="JSON result path (default bench-results/<ts>.json)")
    p.add_argument("--no-append", action="store_true", help="do not add a row to the doc")
    p.add_argument("--doc", default=str(DOC_PATH), help="markdown file to append the row to")
    p.add_argument("--note", default="", help="free text for the row's notes column")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    if args.count < 1 or args.workers < 1 or args.rps <= 0:
        p.error("--count and --workers must be >= 1 and --rps > 0")
    if args.concurrency is None:
        args.concurrency = default_concurrency(
            args.rps, args.workers, args.latency_ms, args.jitter_ms
        )
    args.argv = list(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--reference-child"]:
        return reference_child_main(argv[1:])
    args = parse_args(argv)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        result = measure(args)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 130
    out = results_doc.write_result(result, args.out)
    print_summary(result)
    print(f"result: {out}")
    if not args.no_append:
        results_doc.append_row(Path(args.doc), doc_row(result), TABLE_HEADER, "# Benchmarks")
        print(f"row appended to {args.doc}")
    return 0 if result.get("missing") == 0 and result.get("delivered", 0) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
