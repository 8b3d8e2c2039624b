"""`make run`: the main job on the embedded stack, with live progress and a final report.

Starts Tansu, the mock LLM, the callback sink and WORKERS simapp workers, sends a burst of COUNT
events from the load-test catalogue, shows progress until every event is delivered or
dead-lettered (or the deadline passes), then prints one delivered summary (what a callback
receives) and the batch report a user gets (`GET /report/{batch}/` of a worker, the same as
`faust -A simapp report BATCH`), checked against the sink and the mock LLM: exit 0 only if every
event was delivered. Everything is torn down on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simapp.embedded.session import EmbeddedSession
from simapp.observe.follow import get_json, print_rows
from simapp.observe.report import report_lines

ENDPOINT = "acme-support"  # served by a second mock: the "user's own chatbot" of the demo
REPORT_WAIT = 30.0  # seconds the report may trail the last delivery


def web_token(workdir: Path) -> str:
    """A WEB_AUTH_TOKEN for this run's workers, so the report names personas and criteria and
    serves transcripts; kept in WORKDIR/web_auth_token (readable by its owner only) for the
    page, never printed."""
    token = secrets.token_hex(32)
    path = workdir / "web_auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def make_session(args: argparse.Namespace, workdir: Path, token: str) -> EmbeddedSession:
    """The embedded session the options describe (the demo endpoint only with --features)."""
    mock_args = ["--latency-ms", str(args.latency_ms), "--latency-jitter-ms", str(args.jitter_ms)]
    if args.mock_rps_limit:
        mock_args += ["--rps-limit", str(args.mock_rps_limit)]
    worker_settings: dict[str, Any] = {
        "concurrent_conversations": args.concurrency,
        "llm_rate_limit_rps": args.rps,
        "web_auth_token": token,
    }
    if args.global_rps:
        worker_settings["llm_global_rate_limit_rps"] = args.global_rps
    return EmbeddedSession(
        workdir,
        partitions=args.partitions,
        mock_args=mock_args,
        worker_settings=worker_settings,
        endpoint=ENDPOINT if args.features else None,
    )


def print_stack(session: EmbeddedSession, workers: int) -> None:
    """Where each part of the stack listens, so that a user can look while it runs."""
    stack = session.stack
    print(f"  tansu {stack.bootstrap}  mock-llm {stack.mock_url}  sink {stack.sink_url}")
    print(
        f"  {workers} worker(s) up: "
        + ", ".join(f"{session.worker_url(w)}/" for w in stack.workers)
        + f" (the page asks for the token in {session.workdir / 'web_auth_token'})",
        flush=True,
    )


def send_and_wait(session: EmbeddedSession, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The burst, sent and followed until every event is accounted for; its batch id and the
    session's figures (the sink's and the mock's)."""
    events = session.events(
        args.count,
        model=args.model,
        batch_id=args.batch_id,
        seed=args.seed,
        features=args.features,
    )
    started = time.monotonic()
    sent = session.send(events)
    print(f"sent {sent} events (batch {events[0]['batch_id'] if events else '-'})", flush=True)
    session.wait_accounted(sent, started, args.timeout, every=args.progress_every)
    batch_id = events[0]["batch_id"] if events else ""
    return batch_id, session.report(sent, time.monotonic() - started)


def worker_report(session: EmbeddedSession, batch_id: str, token: str) -> dict[str, Any] | None:
    """The batch report from a worker, once it has folded every simulation (progress trails
    the deliveries by a moment), at most REPORT_WAIT seconds."""
    deadline = time.monotonic() + REPORT_WAIT
    view = None
    while time.monotonic() < deadline:
        for worker in session.stack.workers:
            if not worker.alive():
                continue
            url = f"{session.worker_url(worker)}/report/{batch_id}/"
            status, body = get_json(url, 5, token=token)
            if status == 200 and isinstance(body, dict):
                view = body
                if (body.get("progress") or {}).get("done"):
                    return body
                break
        time.sleep(0.5)
    return view


def print_checks(report: dict[str, Any]) -> bool:
    """What the sink and the mock LLM saw, beside the report; whether all was delivered."""
    rows = [
        ("sent", report["sent"]),
        ("delivered (at the sink)", report["delivered"]),
        ("dead-lettered", report["dead_lettered"] or "none"),
        ("missing", report["missing"]),
        ("duplicate deliveries", report["duplicate_deliveries"]),
        ("LLM calls at the mock / 429s", f"{report['llm_calls']} / {report['llm_429']}"),
        ("mock's busiest 1-s window", report["mock_max_1s_window"]),
        ("wall time (s)", report["wall_seconds"]),
    ]
    print_rows(rows, "checked against the sink and the mock LLM")
    ok = report["delivered"] == report["sent"] and report["missing"] == 0
    print("RESULT: " + ("OK, every event delivered" if ok else "NOT every event was delivered"))
    return ok


def print_judged_example(items: list[dict[str, Any]]) -> None:
    """One delivered summary with a judge's evaluation, if any, to show what a caller gets."""
    example = next((i for i in items if i.get("evaluation")), None)
    if example is None:
        return
    shown = {k: example[k] for k in ("simulation_id", "end_reason", "evaluation")}
    shown["usage"] = {"llm_calls": example["usage"]["llm_calls"],
                      "by_role": example["usage"]["by_role"]}  # fmt: skip
    print("a delivered summary with a judge's evaluation:")
    print(json.dumps(shown, indent=2))


def run(args: argparse.Namespace) -> int:
    """Start, send, wait, report, tear down (also on Ctrl-C or SIGTERM); 0 if all delivered."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="simapp-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    token = web_token(workdir)
    session = make_session(args, workdir, token)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting the embedded stack in {workdir} ...", flush=True)
        session.start(args.workers)
        print_stack(session, args.workers)
        batch_id, report = send_and_wait(session, args)
        print_judged_example(session.stack.sink_items())
        view = worker_report(session, batch_id, token)
        print(
            "=" * 60 + "\nthe batch report (faust -A simapp report " + batch_id + ")\n" + "=" * 60
        )
        print("\n".join(report_lines(view)) if view else "no report from the workers")
        ok = print_checks(report)
        (workdir / "report.json").write_text(json.dumps({**report, "report": view}, indent=2))
        return 0 if ok and view is not None else 1
    except KeyboardInterrupt:
        print("\ninterrupted; tearing down", flush=True)
        return 130
    finally:
        session.stop()
        print(f"logs: {session.stack.log_dir}")


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
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between lines")
    p.add_argument("--workdir", default=None)
    p.add_argument(
        "--features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="events with a system under test, a configured endpoint, user instructions and "
        "judge criteria (--no-features: the seed's fields only)",
    )
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
