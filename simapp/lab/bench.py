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

This module is the command line; the run is in bench_measure, the reference loops (also run
here as `--reference-child`) in reference_loops, the goals and the doc's row in bench_report.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from simapp.lab import results_doc
from simapp.lab.bench_measure import measure
from simapp.lab.bench_report import TABLE_HEADER, doc_row, print_summary
from simapp.lab.reference_loops import child_main

DOC_PATH = results_doc.root() / "docs" / "benchmarks.md"


def add_stack_options(p: argparse.ArgumentParser) -> None:
    """What is measured: the burst, the workers, their budget and the mock."""
    p.add_argument("--count", type=int, default=10_000, help="events in the burst")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--rps", type=float, default=200.0, help="global LLM budget (requests/s)")
    p.add_argument("--latency-ms", type=int, default=300, help="mock LLM latency (the mean)")
    p.add_argument(
        "--jitter-ms",
        type=int,
        default=100,
        help="uniform: latency ± jitter; lognormal: the standard deviation",
    )
    p.add_argument(
        "--latency-dist",
        choices=["uniform", "lognormal"],
        default="uniform",
        help="the mock's latency distribution; lognormal has a heavy tail (its p99 is reported)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="workers' CONCURRENT_CONVERSATIONS (the ceiling); default: the setting's default, "
        "the workers size themselves below it",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="workers' LLM_CONNECTION_POOL_SIZE (default: unset, one socket per conversation)",
    )
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


def add_run_options(p: argparse.ArgumentParser) -> None:
    """How the run goes and where it is recorded: reference loops, warm-up, output."""
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options, checked, with the argv kept."""
    p = argparse.ArgumentParser(
        prog="python -m simapp.lab.bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_stack_options(p)
    add_run_options(p)
    args = p.parse_args(argv)
    if args.count < 1 or args.workers < 1 or args.rps <= 0:
        p.error("--count and --workers must be >= 1 and --rps > 0")
    args.argv = list(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure, write the JSON, print the summary, append the row; 1 if anything is missing."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--reference-child"]:
        return child_main(argv[1:])
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
