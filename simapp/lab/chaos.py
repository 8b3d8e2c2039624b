"""`make chaos`: a burst on the embedded stack while workers are killed, stopped and added.

An embedded session with WORKERS workers sharing a global LLM budget, a burst of COUNT
catalogue events, and a schedule of faults keyed to the share of the burst delivered:

  15 %  SIGKILL worker 0, start it again 5 s later (same data directory)
  35 %  SIGTERM worker 1 (a rolling restart), start it again 5 s later
  55 %  a new worker joins
  70 %  the callback receiver answers 503 for 60 s (a deploy of the receiving service)

It waits until every event is delivered or dead-lettered (or the timeout), then reports: sent,
delivered, missing, dead letters by reason (read from the DLQ topic: a killed worker's
counters die with it), duplicate deliveries, offset gaps the workers detected, and the LLM
calls against the same burst without faults (a baseline session first; --no-baseline skips
it). Writes a JSON result, adds a row to docs/reliability.md, exits 1 if anything is missing
or a summary was dead-lettered as `callback_failed` (the receiver's outage must be waited out).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simapp.delivery.dead_letters import read_dead_letters
from simapp.embedded.session import EmbeddedSession
from simapp.embedded.stack import http_json
from simapp.lab import results_doc

DOC_PATH = results_doc.root() / "docs" / "reliability.md"
TABLE_HEADER = (
    "| date (UTC) | command | workers | count | profile | sent | delivered | missing "
    "| dead letters | duplicates | gaps | LLM calls (baseline) | wall s | faults | notes |\n"
    "|---|---|--:|--:|---|--:|--:|--:|---|--:|--:|---|--:|---|---|"
)
RESTART_AFTER = 5.0
RECEIVER_DOWN_SECONDS = 60.0  # a receiver's deploy: its summaries wait, none is dead-lettered


@dataclass
class Fault:
    """One step of the schedule: at `at` (share of the burst delivered) do `action`."""

    at: float
    name: str
    action: Callable[[EmbeddedSession, list[str]], None]
    done: bool = False


def sigkill_and_restart(index: int) -> Callable[[EmbeddedSession, list[str]], None]:
    def act(session: EmbeddedSession, log: list[str]) -> None:
        worker = _worker(session, index)
        worker.kill()
        log.append(f"SIGKILL worker-{index}")
        _later(session, log, RESTART_AFTER, lambda: _restart(session, index, log))

    return act


def sigterm_and_restart(index: int) -> Callable[[EmbeddedSession, list[str]], None]:
    def act(session: EmbeddedSession, log: list[str]) -> None:
        worker = _worker(session, index)
        worker.signal(signal.SIGTERM)
        log.append(f"SIGTERM worker-{index}")

        def restart() -> None:
            if worker.alive():  # still draining its grace period: wait for it
                _later(session, log, 1.0, restart)
            else:
                _restart(session, index, log)

        _later(session, log, RESTART_AFTER, restart)

    return act


def add_worker(session: EmbeddedSession, log: list[str]) -> None:
    worker = session.start_worker(wait=False)
    log.append(f"{worker.name} joins")


def receiver_down(seconds: float) -> Callable[[EmbeddedSession, list[str]], None]:
    def act(session: EmbeddedSession, log: list[str]) -> None:
        sink = session.stack.sink_url
        http_json(f"{sink}/admin/config", {"down": True, "down_status": 503})
        log.append(f"receiver down (503) {seconds:g}s")

        def up() -> None:
            http_json(f"{sink}/admin/config", {"down": False})
            log.append("receiver up")

        _later(session, log, seconds, up)

    return act


def default_schedule(receiver_down_s: float = RECEIVER_DOWN_SECONDS) -> list[Fault]:
    return [
        Fault(0.15, "SIGKILL worker 0 + restart", sigkill_and_restart(0)),
        Fault(0.35, "SIGTERM worker 1 + restart", sigterm_and_restart(1)),
        Fault(0.55, "a worker joins", add_worker),
        Fault(
            0.70, f"receiver answers 503 for {receiver_down_s:g}s", receiver_down(receiver_down_s)
        ),
    ]


_timers: list[tuple[float, Callable[[], None]]] = []


def _later(session: EmbeddedSession, log: list[str], delay: float, fn: Callable[[], None]) -> None:
    _timers.append((time.monotonic() + delay, fn))


def _run_due_timers() -> None:
    now = time.monotonic()
    due = [t for t in _timers if t[0] <= now]
    for item in due:
        _timers.remove(item)
        item[1]()


def _worker(session: EmbeddedSession, index: int) -> Any:
    return next(w for w in reversed(session.stack.workers) if w.extra.get("index") == index)


def _restart(session: EmbeddedSession, index: int, log: list[str]) -> None:
    session.start_worker(index, wait=False)
    log.append(f"worker-{index} restarted")


# --------------------------------------------------------------------------- a run


def chaos_session(args: argparse.Namespace, workdir: Path) -> EmbeddedSession:
    """The session of one burst: WORKERS workers sharing a budget of RPS, logging at INFO."""
    return EmbeddedSession(
        workdir,
        partitions=args.partitions,
        mock_args=[
            "--latency-ms",
            str(args.latency_ms),
            "--latency-jitter-ms",
            str(args.jitter_ms),
        ],
        worker_settings={
            "llm_global_rate_limit_rps": args.rps,
            "llm_rate_limit_rps": args.rps,
            "concurrent_conversations": args.concurrency,
            "broker_profile": args.broker_profile,
            "shutdown_grace_seconds": args.grace,
            "log_level": "INFO",
        },
    )


def fire_faults(
    session: EmbeddedSession,
    faults: list[Fault],
    log: list[str],
    delivered: int,
    sent: int,
    label: str,
) -> None:
    """Every fault whose share of the burst has been delivered, once."""
    share = delivered / sent if sent else 1.0
    for fault in faults:
        if not fault.done and share >= fault.at:
            fault.done = True
            print(f"[{label}] {delivered}/{sent} delivered: {fault.name}", flush=True)
            fault.action(session, log)


def follow(
    session: EmbeddedSession,
    args: argparse.Namespace,
    faults: list[Fault],
    log: list[str],
    label: str,
    ids: set[str],
    sent: int,
    deadline: float,
) -> None:
    """Until every event is accounted for and every fault (and its timers) has happened, or
    the deadline: fire the faults as the burst reaches them, print progress every so often."""
    next_print = last_change = last_dlq = 0.0
    last_delivered = -1
    while time.monotonic() < deadline:
        now = time.monotonic()
        delivered = session.delivered()
        fire_faults(session, faults, log, delivered, sent, label)
        _run_due_timers()
        if now >= next_print:
            print(f"[{label}] {delivered}/{sent} delivered", flush=True)
            next_print = now + args.progress_every
        if delivered != last_delivered:
            last_delivered, last_change = delivered, now
        finished = delivered >= sent
        if not finished and now - last_change > 10 and now - last_dlq > 10:
            last_dlq = now  # stalled: are the rest dead letters? (killed workers' counters
            finished = len(accounted_ids(session, ids)) >= sent  # are gone: read the topic)
        if finished and not _timers and all(f.done for f in faults):
            break
        time.sleep(0.5)


def run_burst(args: argparse.Namespace, faults: list[Fault], label: str) -> dict[str, Any]:
    """One session: start it, send the burst, follow it through `faults`, account for it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"simapp-chaos-{label}-"))
    session = chaos_session(args, workdir)
    log: list[str] = []
    _timers.clear()
    try:
        print(f"[{label}] starting {args.workers} workers in {workdir} ...", flush=True)
        session.start(args.workers)
        session.wait_group_stable()
        events = session.events(args.count, seed=args.seed)
        ids = {e["id"] for e in events}
        started = time.monotonic()
        sent = session.send(events)
        follow(session, args, faults, log, label, ids, sent, started + args.timeout)
        wall = time.monotonic() - started
        return account(session, ids, sent, wall, log, workdir)
    finally:
        session.stop()


def accounted_ids(session: EmbeddedSession, ids: set[str]) -> set[str]:
    """Ids delivered to the sink or on the DLQ topic."""
    delivered = {item["simulation_id"] for item in session.stack.sink_items()}
    dead = asyncio.run(read_dead_letters(session.settings(), idle=2.0))
    return (delivered | {d.get("simulation_id") for d in dead}) & ids


def account(
    session: EmbeddedSession,
    ids: set[str],
    sent: int,
    wall: float,
    log: list[str],
    workdir: Path,
) -> dict[str, Any]:
    """Every event's fate, from the sink and the DLQ topic, not from the workers' memory."""
    items = session.stack.sink_items()
    delivered_ids = {item["simulation_id"] for item in items} & ids
    received = session.stack.sink_received()
    dead = asyncio.run(read_dead_letters(session.settings(), idle=3.0))
    dead_ids = {d.get("simulation_id") for d in dead} & ids
    gaps = 0  # a restarted worker appends to its log file: read each file once
    for path in {w.log_path for w in session.stack.workers if w.log_path is not None}:
        if path.exists():
            gaps += path.read_text(errors="replace").count("offset gap:")
    mock = session.mock_stats()
    return {
        "sent": sent,
        "delivered": len(delivered_ids),
        "dead_lettered": dict(
            Counter(d.get("reason") for d in dead if d.get("simulation_id") in ids)
        ),
        "missing": len(ids - delivered_ids - dead_ids),
        # a re-run (after a crash or rebalance) of a delivered event can fail its callback
        "delivered_and_dead_lettered": len(delivered_ids & dead_ids),
        "missing_ids": sorted(ids - delivered_ids - dead_ids)[:20],
        "duplicate_deliveries": received["duplicates"],
        "offset_gaps": gaps,
        "llm_calls": mock.get("responses_by_status", {}).get("200", 0),
        "llm_429": mock.get("rate_limited", 0),
        "wall_seconds": round(wall, 1),
        "faults": log,
        "workdir": str(workdir),
    }


# --------------------------------------------------------------------------- output


def doc_row(r: dict[str, Any]) -> str:
    """The run's row under TABLE_HEADER in docs/reliability.md."""
    c = r["config"]
    dead = ", ".join(f"{k} {n}" for k, n in sorted(r["dead_lettered"].items())) or "none"
    if r.get("delivered_and_dead_lettered"):
        dead += f" ({r['delivered_and_dead_lettered']} of them delivered too, by another run)"
    baseline = r.get("baseline_llm_calls")
    calls = f"{r['llm_calls']} ({baseline})" if baseline is not None else str(r["llm_calls"])
    cells = [
        r["date"][:16].replace("T", " "),
        f"`{r['command']}`",
        c["workers"],
        c["count"],
        c["broker_profile"],
        r["sent"],
        r["delivered"],
        r["missing"],
        dead,
        r["duplicate_deliveries"],
        r["offset_gaps"],
        calls,
        r["wall_seconds"],
        "; ".join(r["faults"]),
        r.get("note") or "",
    ]
    return results_doc.row(cells)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options, with the argv kept for the command column."""
    p = argparse.ArgumentParser(
        prog="python -m simapp.lab.chaos",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--count", type=int, default=1000, help="events in the burst")
    p.add_argument("--workers", type=int, default=3, help="workers at the start")
    p.add_argument("--rps", type=float, default=150.0, help="the group's LLM budget")
    p.add_argument("--concurrency", type=int, default=60, help="conversations per worker")
    p.add_argument("--latency-ms", type=int, default=200)
    p.add_argument("--jitter-ms", type=int, default=50)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--grace", type=float, default=5.0, help="workers' SHUTDOWN_GRACE_SECONDS")
    p.add_argument(
        "--broker-profile",
        choices=["embedded", "kafka"],
        default="embedded",
        help="workers' BROKER_PROFILE (kafka = production timeouts, against Tansu)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--receiver-down-s",
        type=float,
        default=RECEIVER_DOWN_SECONDS,
        help="how long the callback receiver answers 503 at 70 %%",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the run without faults")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many s")
    p.add_argument("--progress-every", type=float, default=10.0)
    p.add_argument("--out", default=None, help="JSON result path")
    p.add_argument("--no-append", action="store_true", help="do not add a row to the doc")
    p.add_argument("--doc", default=str(DOC_PATH))
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    args.argv = list(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """The baseline, the chaos run, the JSON, the row; 1 if anything is missing."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "simapp.lab.chaos", *results_doc.command_args(argv)])
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "note": args.note,
        "config": {
            k: getattr(args, k)
            for k in (
                "count",
                "workers",
                "rps",
                "concurrency",
                "latency_ms",
                "jitter_ms",
                "partitions",
                "grace",
                "broker_profile",
                "seed",
            )
        },  # fmt: skip
    }
    if not args.no_baseline:
        baseline = run_burst(args, [], "baseline")
        result["baseline"] = baseline
        result["baseline_llm_calls"] = baseline["llm_calls"]
    result.update(run_burst(args, default_schedule(args.receiver_down_s), "chaos"))
    out = results_doc.write_result(result, args.out, prefix="chaos-")
    for key in ("sent", "delivered", "missing", "dead_lettered", "delivered_and_dead_lettered",
                "duplicate_deliveries", "offset_gaps", "llm_calls", "baseline_llm_calls",
                "llm_429", "wall_seconds", "faults"):  # fmt: skip
        print(f"{key:>22}: {result.get(key)}")
    print(f"result: {out}")
    if not args.no_append:
        results_doc.append_row(Path(args.doc), doc_row(result), TABLE_HEADER, "# Reliability")
        print(f"row appended to {args.doc}")
    gave_up = (result.get("dead_lettered") or {}).get("callback_failed", 0)
    ok = result["missing"] == 0 and result["sent"] == args.count and gave_up == 0
    if ok:
        print("RESULT: OK, nothing missing, no summary given up")
    else:
        print(f"RESULT: {result['missing']} missing, {gave_up} callback_failed dead letters")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
