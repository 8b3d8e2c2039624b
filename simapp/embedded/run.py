"""`make run`: the main job on the embedded stack, with live progress and a final report.

Starts Tansu, the mock LLM, the callback sink and WORKERS simapp workers, sends a burst of COUNT
events from the load-test catalogue, shows progress until every event is delivered or
dead-lettered (or the deadline passes), prints a report and exits 0 only if every event was
delivered. Everything is torn down on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from simapp.catalogue import make_events
from simapp.config import load_settings
from simapp.embedded.stack import EmbeddedStack, http_text
from simapp.kafka_admin import ensure_topics
from simapp.producer import all_topic_names, encode_event, produce


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum samples by `name{labels}` string, enough for reports."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def worker_metrics(stack: EmbeddedStack) -> dict[str, float]:
    total: dict[str, float] = {}
    for worker in stack.workers:
        try:
            for key, value in parse_prometheus(
                http_text(f"http://127.0.0.1:{worker.port}/metrics")
            ).items():
                total[key] = total.get(key, 0.0) + value
        except OSError:
            continue
    return total


def dead_letters_by_reason(metrics: dict[str, float]) -> Counter:
    out: Counter = Counter()
    for key, value in metrics.items():
        if key.startswith("dead_letters_total{"):
            reason = key.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] += int(value)
    return out


def bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="simapp-run-"))
    mock_args = ["--latency-ms", str(args.latency_ms), "--latency-jitter-ms", str(args.jitter_ms)]
    if args.mock_rps_limit:
        mock_args += ["--rps-limit", str(args.mock_rps_limit)]
    stack = EmbeddedStack(workdir=workdir, mock_args=mock_args, partitions=args.partitions)
    interrupted = False

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting embedded stack in {workdir} ...", flush=True)
        stack.start()
        print(f"  tansu {stack.bootstrap}  mock-llm {stack.mock_url}  sink {stack.sink_url}")
        worker_settings = {
            "concurrent_conversations": args.concurrency,
            "llm_rate_limit_rps": args.rps,
        }
        if args.global_rps:
            worker_settings["llm_global_rate_limit_rps"] = args.global_rps
        settings = load_settings(
            kafka_bootstrap_servers=stack.bootstrap, kafka_partitions=args.partitions
        )
        # topics first, with our partition count (workers also do it; this avoids the race)
        asyncio.run(ensure_topics(stack.bootstrap, all_topic_names(settings), args.partitions))
        for i in range(args.workers):
            stack.start_worker(i, wait=False, **worker_settings)
        stack.wait_workers_ready()
        print(
            f"  {args.workers} worker(s) up: "
            + ", ".join(f"http://127.0.0.1:{w.port}/" for w in stack.workers)
        )
        events = make_events(
            args.count,
            callback_url=f"{stack.sink_url}/callback",
            model=args.model,
            batch_id=args.batch_id,
            max_iterations=settings.max_iterations,
            seed=args.seed,
        )
        started = time.monotonic()
        sent = asyncio.run(produce(settings, (encode_event(e) for e in events)))
        print(f"sent {sent} events (batch {events[0]['batch_id'] if events else '-'})", flush=True)
        deadline = started + args.timeout
        delivered = dead = 0
        while time.monotonic() < deadline:
            delivered = stack.sink_received()["unique_ids"]
            dead = sum(dead_letters_by_reason(worker_metrics(stack)).values())
            elapsed = time.monotonic() - started
            done = delivered + dead
            rate = delivered / elapsed if elapsed > 0 else 0.0
            eta = (sent - done) / rate if rate > 0 else float("inf")
            print(
                f"\r{bar(done, sent)} {done}/{sent} delivered={delivered} dead={dead} "
                f"{rate:5.1f}/s eta {eta:6.0f}s ",
                end="",
                flush=True,
            )
            if done >= sent:
                break
            if not all(w.alive() for w in stack.workers):
                print("\na worker died; see logs in", stack.log_dir)
                break
            time.sleep(1.0)
        print()
        wall = time.monotonic() - started
        report = build_report(stack, sent, wall)
        print_report(report)
        (workdir / "report.json").write_text(json.dumps(report, indent=2))
        return 0 if report["delivered"] == sent and report["missing"] == 0 else 1
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; tearing down", flush=True)
        return 130
    finally:
        stack.stop()
        if not interrupted:
            print(f"logs: {stack.log_dir}")


def build_report(stack: EmbeddedStack, sent: int, wall: float) -> dict[str, Any]:
    items = stack.sink_items()
    received = stack.sink_received()
    metrics = worker_metrics(stack)
    mock = stack.mock_stats()
    reasons = Counter(item["end_reason"] for item in items)
    dead = dead_letters_by_reason(metrics)
    durations = sorted(item["duration_ms"] for item in items)
    tokens = sum(item.get("usage", {}).get("total_tokens", 0) for item in items)
    llm_calls = mock.get("responses_by_status", {}).get("200", 0)
    first, last = mock.get("first_request_at"), mock.get("last_request_at")
    llm_span = (last - first) if first and last and last > first else wall
    ids = {item["simulation_id"] for item in items}
    return {
        "sent": sent,
        "delivered": received["unique_ids"],
        "duplicate_deliveries": received["duplicates"],
        "dead_lettered": dict(dead),
        "missing": max(0, sent - len(ids) - sum(dead.values())),
        "end_reasons": dict(reasons),
        "wall_seconds": round(wall, 2),
        "llm_calls": llm_calls,
        "llm_requests_all_statuses": mock.get("requests", 0),
        "llm_429": mock.get("rate_limited", 0),
        "achieved_llm_rps": round(llm_calls / llm_span, 2) if llm_span else 0.0,
        "mock_max_1s_window": mock.get("max_1s_window"),
        "tokens": tokens,
        "p50_duration_s": round(statistics.median(durations) / 1000, 2) if durations else None,
        "p95_duration_s": round(durations[int(0.95 * (len(durations) - 1))] / 1000, 2)
        if durations
        else None,
    }


def print_report(r: dict[str, Any]) -> None:
    print("=" * 60)
    print("simapp run report")
    print("=" * 60)
    rows = [
        ("sent", r["sent"]),
        ("delivered", r["delivered"]),
        ("failed (dead-lettered) by reason", r["dead_lettered"] or "none"),
        ("missing", r["missing"]),
        ("duplicate deliveries", r["duplicate_deliveries"]),
        ("end reasons", r["end_reasons"]),
        ("wall time", f"{r['wall_seconds']} s"),
        ("LLM calls (200)", r["llm_calls"]),
        ("LLM 429s", r["llm_429"]),
        ("achieved LLM RPS", r["achieved_llm_rps"]),
        ("mock max 1-s window", r["mock_max_1s_window"]),
        ("tokens", r["tokens"]),
        ("simulation p50 / p95", f"{r['p50_duration_s']} s / {r['p95_duration_s']} s"),
    ]
    for name, value in rows:
        print(f"{name:>34}: {value}")
    print("=" * 60)
    ok = r["delivered"] == r["sent"] and r["missing"] == 0
    print("RESULT:", "OK, every event delivered" if ok else "NOT every event was delivered")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--rps", type=float, default=50.0, help="per-worker LLM_RATE_LIMIT_RPS")
    p.add_argument("--global-rps", type=float, default=None)
    p.add_argument("--mock-rps-limit", type=float, default=None)
    p.add_argument("--latency-ms", type=int, default=300)
    p.add_argument("--jitter-ms", type=int, default=100)
    p.add_argument("--model", default="gpt-4")
    p.add_argument("--batch-id", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
