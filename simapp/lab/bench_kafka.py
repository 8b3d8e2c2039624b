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
process, `python -m faust -A simapp.lab.kafka_ops_app:app worker -l info`, of the small Faust
app defined there (its own app id, source and sink topics, and one table `rows`). The app is
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

Where each part lives: this module is the command line; simapp.lab.kafka_ops_spec holds the
modes and what the parent hands the worker, simapp.lab.kafka_ops_app the worker's Faust app,
simapp.lab.kafka_ops_driver the runs, simapp.lab.kafka_ops_report the summary and the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simapp.lab.kafka_ops_driver import Options, run_all
from simapp.lab.kafka_ops_report import machine, markdown, per_simulation, summarise
from simapp.lab.kafka_ops_spec import MODES, MODES_BY_NAME, ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; the defaults are simapp's settings' defaults, not this shell's env."""
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


def mode_names(modes: str) -> list[str]:
    """The --modes list, in order, without repeats; exits on an unknown name."""
    names = list(dict.fromkeys(n.strip() for n in modes.split(",") if n.strip()))
    unknown = [n for n in names if n not in MODES_BY_NAME]
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(unknown)}")
    return names


def options(args: argparse.Namespace, names: list[str], workdir: Path) -> Options:
    """The driver's options: the parsed ones, the modes by name, the workdir."""
    return Options(
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


def run_in_workdir(args: argparse.Namespace, names: list[str]) -> tuple[Options, list[dict]]:
    """Every run, in --workdir (kept) or a temporary directory (removed afterwards)."""
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-kafka-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opts = options(args, names, workdir)
    try:
        runs = asyncio.run(run_all(opts, args.seed))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return opts, runs


def result_of(
    argv: list[str] | None,
    args: argparse.Namespace,
    names: list[str],
    opts: Options,
    started: datetime,
    runs: list[dict],
) -> dict[str, Any]:
    """The JSON result: the command, the config, the machine, the summary and every run."""
    summary = summarise(runs, opts.modes)
    facts = machine(runs)
    config = {k: v for k, v in asdict(opts).items() if k not in ("modes", "workdir")} | {
        "modes": names,
        "rate": opts.rate,
        "seed": args.seed,
    }
    return {
        "command": " ".join(
            ["python -m simapp.lab.bench_kafka", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config,
        "machine": facts,
        "modes": summary,
        "per_simulation": per_simulation(summary, opts.llm_calls),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    """Run every mode, write the JSON, print the markdown tables."""
    args = parse_args(argv)
    names = mode_names(args.modes)
    started = datetime.now(UTC)
    opts, runs = run_in_workdir(args, names)
    result = result_of(argv, args, names, opts, started, runs)
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
