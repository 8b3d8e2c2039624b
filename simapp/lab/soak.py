"""`make soak`: does a worker's state stay flat over many batches? (docs/reliability.md)

An embedded session (simapp/embedded/session.py) runs BATCHES batches of COUNT catalogue
events one after the other, with short retention periods (BATCH_RETENTION and
SIMULATION_RETENTION = --retention seconds) so that weeks of batches pass in minutes. After
each batch it reads, from the first worker: RSS, the bytes of its /metrics page, the rows of
its tables (`table_rows{table}`, counted by the retention sweep) and the batches it lists in
/progress/. Every --restart-every batches it restarts that worker and times its recovery (from
start to serving /progress/_local/ with its partitions). Once the retention period has passed,
every figure should stop growing: the result says whether the last third of the batches grew
past the middle third (tolerance --tolerance) and exits 1 when it did.

Writes a JSON result (bench-results/soak-<timestamp>.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from simapp.embedded.session import EmbeddedSession, parse_prometheus
from simapp.embedded.stack import http_json, http_text
from simapp.lab import results_doc

FIGURES = ("rss_mb", "metrics_kb", "progress_rows", "seen_rows", "simulation_rows", "listed")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m simapp.lab.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--count", type=int, default=200, help="events per batch")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rps", type=float, default=300.0, help="the group's LLM budget")
    p.add_argument("--latency-ms", type=int, default=30, help="mock LLM latency")
    p.add_argument("--retention", type=float, default=20.0, help="BATCH_/SIMULATION_RETENTION s")
    p.add_argument("--restart-every", type=int, default=10, help="restart worker 0 every N")
    p.add_argument("--tolerance", type=float, default=0.15, help="growth allowed at the end")
    p.add_argument("--out", default=None, help="JSON result path")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    args.argv = list(argv)
    return args


def session_for(args: argparse.Namespace) -> EmbeddedSession:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="simapp-soak-"))
    return EmbeddedSession(
        workdir,
        partitions=8,
        mock_args=["--latency-ms", str(args.latency_ms), "--latency-jitter-ms", "0"],
        worker_settings={
            "llm_global_rate_limit_rps": args.rps,
            "batch_retention": args.retention,
            "simulation_retention": args.retention,
            "retention_sweep_rows": 20_000,
            "log_level": "WARNING",
        },
    )


def readings(session: EmbeddedSession) -> dict[str, Any]:
    """The first worker's memory, metrics page and table sizes, and what /progress/ lists."""
    worker = session.stack.workers[0]
    url = session.worker_url(worker)
    text = http_text(f"{url}/metrics")
    m = parse_prometheus(text)
    listed = http_json(f"{url}/progress/", timeout=15)

    def rows(table: str) -> float | None:
        value = m.get(f'table_rows{{table="{table}"}}')
        return None if value is None or value != value else value  # NaN: no full pass yet

    return {
        "rss_mb": round(psutil.Process(worker.pid).memory_info().rss / 2**20, 1),
        "metrics_kb": round(len(text.encode()) / 1024, 1),
        "progress_rows": rows("progress"),
        "seen_rows": rows("progress-seen"),
        "simulation_rows": rows("simulations"),
        "listed": len(listed.get("batches", [])),
    }


def settled_readings(session: EmbeddedSession, timeout: float = 30.0) -> dict[str, Any]:
    """`readings` once the retention sweep has counted every table (a restarted worker's
    first pass takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        values = readings(session)
        if time.monotonic() >= deadline or None not in (
            values["progress_rows"], values["seen_rows"], values["simulation_rows"]
        ):
            return values
        time.sleep(0.5)


def run_batch(session: EmbeddedSession, args: argparse.Namespace, index: int) -> float:
    """One batch to the end; its wall time."""
    events = session.events(args.count, seed=index, batch_id=f"soak-{index:03d}")
    started = time.monotonic()
    before = session.delivered()
    sent = session.send(events)
    deadline = started + 600
    while session.delivered() - before < sent and time.monotonic() < deadline:
        time.sleep(0.5)
    return time.monotonic() - started


def restart(session: EmbeddedSession) -> float:
    """Stop worker 0 (SIGTERM) and start it on its data directory; seconds until it serves
    its partitions again (table recovery included)."""
    worker = session.stack.workers[0]
    worker.signal(15)
    worker.stop(timeout=60)
    session.stack.workers.remove(worker)
    started = time.monotonic()
    new = session.start_worker(0, wait=True)
    session.stack.workers.remove(new)
    session.stack.workers.insert(0, new)
    while time.monotonic() - started < 180:
        try:
            if session.owned_partitions(new):
                break
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    return round(time.monotonic() - started, 2)


def verdict(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Per figure: the middle third's and the last third's maximum, and whether it grew."""
    third = max(1, len(rows) // 3)
    middle, last = rows[third : 2 * third], rows[2 * third :]
    out: dict[str, Any] = {}
    for name in FIGURES:
        a = [r[name] for r in middle if r.get(name) is not None]
        b = [r[name] for r in last if r.get(name) is not None]
        if not a or not b:
            continue
        grew = max(b) > max(a) * (1 + tolerance) + 1
        out[name] = {"middle_max": max(a), "last_max": max(b), "grew": grew}
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| batch | wall s | " + " | ".join(FIGURES) + " | restart s |"
    lines = [head, "|" + "--:|" * (len(FIGURES) + 3)]
    for r in rows:
        cells = [r["batch"], r["wall_s"], *(r.get(f) for f in FIGURES), r.get("restart_s") or ""]
        lines.append(results_doc.row(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    session = session_for(args)
    rows: list[dict[str, Any]] = []
    print(f"starting the embedded stack in {session.workdir} ...", flush=True)
    try:
        session.start(args.workers)
        session.wait_group_stable()
        for index in range(1, args.batches + 1):
            row: dict[str, Any] = {
                "batch": index,
                "wall_s": round(run_batch(session, args, index), 1),
            }
            if args.restart_every and index % args.restart_every == 0:
                row["restart_s"] = restart(session)
            row.update(settled_readings(session))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        session.stop()
    result = {
        "command": shlex.join(["python", "-m", "simapp.lab.soak", *args.argv]),
        "config": {k: v for k, v in vars(args).items() if k != "argv"},
        "rows": rows,
        "verdict": verdict(rows, args.tolerance),
    }
    path = results_doc.write_result(result, args.out, prefix="soak-")
    print(markdown(rows))
    print(json.dumps(result["verdict"], indent=2))
    print(f"result: {path}")
    flat = all(not v["grew"] for v in result["verdict"].values())
    print("RESULT:", "flat after the retention period" if flat else "GREW")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
