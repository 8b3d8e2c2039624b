"""One session on the embedded stack: start it with workers, send a burst, wait, report.

Behind `make run` (simapp/embedded/run.py), `make loadtest` without a broker
(simapp/commands/loadtest.py), `make bench` (simapp/lab/bench.py) and `make chaos`
(simapp/lab/chaos.py): each adds only what it
measures or does to the workers. "Accounted for" means delivered to the sink (unique ids) or
dead-lettered (the workers' dead_letters_total), so a session can end before a timeout only
when nothing is missing.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from simapp.config import Settings, load_settings
from simapp.embedded.catalogue import make_events
from simapp.embedded.stack import PLAINTEXT_KAFKA, EmbeddedStack, http_json, http_text
from simapp.kafka.admin import ensure_topics
from simapp.kafka.producer import all_topic_names, encode_event, produce
from simapp.observe.follow import auth_headers, bar, print_rows


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


def dead_letters_by_reason(metrics: dict[str, float]) -> Counter:
    out: Counter = Counter()
    for key, value in metrics.items():
        if key.startswith("dead_letters_total{"):
            reason = key.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] += int(value)
    return out


class EmbeddedSession:
    """The embedded stack with simapp workers, and a burst's bookkeeping."""

    def __init__(
        self,
        workdir: Path,
        *,
        partitions: int = 8,
        mock_args: list[str] | None = None,
        sink_args: list[str] | None = None,
        worker_settings: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.stack = EmbeddedStack(
            workdir=workdir,
            mock_args=list(mock_args or []),
            sink_args=list(sink_args or []),
            partitions=partitions,
            endpoint=endpoint,
        )
        self.worker_settings = dict(worker_settings or {})
        # the workers' WEB_AUTH_TOKEN, if the session gives them one, for its own requests
        self.web_headers = auth_headers(self.worker_settings.get("web_auth_token"))
        self.dead_before: Counter = Counter()  # dead letters counted before the burst

    # ----- lifecycle --------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        return self.stack.workdir

    def settings(self, **extra: Any) -> Settings:
        """Producer-side settings pointing at the embedded broker."""
        return load_settings(
            kafka_bootstrap_servers=self.stack.bootstrap,
            kafka_partitions=self.stack.partitions,
            broker_profile="embedded",
            **{**PLAINTEXT_KAFKA, **extra},
        )

    def start(self, workers: int, ready_timeout: float = 120.0) -> EmbeddedSession:
        self.stack.start()
        # Before any worker subscribes: Tansu auto-creates a missing topic with 4 partitions,
        # which breaks the tables' co-partitioning and each worker's budget share.
        settings = self.settings()
        asyncio.run(ensure_topics(settings, all_topic_names(settings)))
        for i in range(workers):
            self.start_worker(i, wait=False)
        self.stack.wait_workers_ready(timeout=ready_timeout)
        return self

    def start_worker(self, index: int | None = None, wait: bool = True, **overrides: Any) -> Any:
        return self.stack.start_worker(index, wait, **{**self.worker_settings, **overrides})

    def stop(self) -> None:
        self.stack.stop()

    def __enter__(self) -> EmbeddedSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_group_stable(self, timeout: float = 90.0) -> bool:
        """Every live worker answers /progress/_local/ and their partitions cover all without
        overlap, twice in a row: send only then, so a burst does not meet a start-up join."""
        deadline = time.monotonic() + timeout
        last: list | None = None
        every = list(range(self.stack.partitions))
        while time.monotonic() < deadline:
            try:
                owned = [self.owned_partitions(w) for w in self.stack.workers if w.alive()]
            except (OSError, KeyError, ValueError):
                owned = None
            if owned and all(owned) and sorted(p for ps in owned for p in ps) == every:
                if owned == last:
                    return True
                last = owned
            else:
                last = None
            time.sleep(1.0)
        return False

    @staticmethod
    def worker_url(worker: Any) -> str:
        return f"http://127.0.0.1:{worker.port}"

    def owned_partitions(self, worker: Any) -> list[int]:
        """The progress partitions a worker owns now (its /progress/_local/ answer)."""
        answer = http_json(
            f"{self.worker_url(worker)}/progress/_local/", timeout=3, headers=self.web_headers
        )
        return sorted(answer["partitions"])

    # ----- a burst ----------------------------------------------------------------------
    def events(
        self, count: int, *, seed: int | None = None, features: bool = False, **kw: Any
    ) -> list[dict]:
        """Catalogue events for the sink; with `features`, some use the stack's endpoint."""
        return make_events(
            count,
            callback_url=f"{self.stack.sink_url}/callback",
            max_iterations=self.settings().max_iterations,
            seed=seed,
            features=features,
            endpoint=self.stack.endpoint if features else None,
            **kw,
        )

    def send(self, events: list[dict], rate: float | None = None) -> int:
        records = [encode_event(e) for e in events]
        return asyncio.run(produce(self.settings(), records, rate=rate))

    def worker_metrics(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for worker in self.stack.workers:
            if not worker.alive():
                continue
            try:
                text = http_text(f"{self.worker_url(worker)}/metrics", headers=self.web_headers)
            except OSError:
                continue
            for key, value in parse_prometheus(text).items():
                total[key] = total.get(key, 0.0) + value
        return total

    def dead_letters(self) -> Counter:
        """Dead letters of this burst, by reason (the workers' counters, minus earlier ones).
        Counters of a worker that died are lost with it: chaos runs read the DLQ topic."""
        return dead_letters_by_reason(self.worker_metrics()) - self.dead_before

    def delivered(self) -> int:
        return int(self.stack.sink_received()["unique_ids"])

    def reset_counters(self) -> None:
        """Forget what a warm-up did: the mock's and the sink's counters, its dead letters."""
        http_json(f"{self.stack.mock_url}/admin/reset", {})
        http_json(f"{self.stack.sink_url}/admin/reset", {})
        self.dead_before = dead_letters_by_reason(self.worker_metrics())

    def wait_accounted(
        self,
        sent: int,
        started: float,
        timeout: float,
        *,
        every: float = 1.0,
        out: IO[str] | None = None,
        stop: Callable[[], str | None] | None = None,
    ) -> int:
        """Poll until every sent event is delivered or dead-lettered, the timeout passes or
        `stop` (default: a worker died) gives a reason; prints a progress line each `every`
        s. Returns the events accounted for."""
        out = out or sys.stdout
        stop = stop or self._worker_died
        deadline = started + timeout
        next_print = next_dead = 0.0
        dead = done = 0
        while True:
            now = time.monotonic()
            delivered = self.delivered()
            if now >= next_dead or delivered + dead >= sent:
                dead = sum(self.dead_letters().values())
                next_dead = now + 5.0
            done = delivered + dead
            reason = None if done >= sent else stop()
            if now >= next_print or done >= sent or reason or now >= deadline:
                elapsed = max(now - started, 1e-9)
                eta = (sent - done) / (done / elapsed) if done else float("inf")
                calls = self.mock_stats().get("responses_by_status", {}).get("200", 0)
                out.write(
                    f"{bar(done, sent)} {done}/{sent} delivered={delivered} dead={dead} "
                    f"llm_calls={calls} ({calls / elapsed:.1f}/s) t={elapsed:.0f}s "
                    f"eta={eta:.0f}s\n"
                )
                out.flush()
                next_print = now + every
            if done >= sent:
                return done
            if reason:
                out.write(f"stopped waiting: {reason}; logs in {self.stack.log_dir}\n")
                return done
            if now >= deadline:
                out.write(f"timeout after {timeout:.0f}s\n")
                return done
            time.sleep(0.5)

    def _worker_died(self) -> str | None:
        dead = [w.name for w in self.stack.workers if not w.alive()]
        return f"worker(s) {', '.join(dead)} died" if dead else None

    def mock_stats(self) -> dict:
        return self.stack.mock_stats()

    def last_delivery_at(self) -> float | None:
        """Wall-clock time of the last accepted delivery, from the sink's record file."""
        http_json(f"{self.stack.sink_url}/admin/flush", {})
        latest = None
        try:
            with (self.workdir / "sink.jsonl").open(encoding="utf-8") as fh:
                for line in fh:
                    at = json.loads(line).get("received_at")
                    if at is not None and (latest is None or at > latest):
                        latest = at
        except OSError:
            return None
        return latest

    def report(self, sent: int, wall: float) -> dict[str, Any]:
        """What happened to the burst: deliveries, dead letters, LLM calls, windows, tokens."""
        items = self.stack.sink_items()
        received = self.stack.sink_received()
        mock = self.mock_stats()
        dead = self.dead_letters()
        durations = sorted(item["duration_ms"] for item in items)
        llm_calls = mock.get("responses_by_status", {}).get("200", 0)
        first, last = mock.get("first_request_at"), mock.get("last_request_at")
        llm_span = (last - first) if first and last and last > first else wall
        ids = {item["simulation_id"] for item in items}
        judged = [item["evaluation"] for item in items if item.get("evaluation")]
        verdicts = [e["passed"] for e in judged if e.get("passed") is not None]
        return {
            "sent": sent,
            "delivered": received["unique_ids"],
            "duplicate_deliveries": received["duplicates"],
            "dead_lettered": dict(dead),
            "missing": max(0, sent - len(ids) - sum(dead.values())),
            "end_reasons": dict(Counter(item["end_reason"] for item in items)),
            "wall_seconds": round(wall, 2),
            "llm_calls": llm_calls,
            "llm_requests_all_statuses": mock.get("requests", 0),
            "llm_429": mock.get("rate_limited", 0),
            "achieved_llm_rps": round(llm_calls / llm_span, 2) if llm_span else 0.0,
            "mock_max_1s_window": mock.get("max_1s_window"),
            "tokens": sum(item.get("usage", {}).get("total_tokens", 0) for item in items),
            "p50_duration_s": round(statistics.median(durations) / 1000, 2) if durations else None,
            "p95_duration_s": round(durations[int(0.95 * (len(durations) - 1))] / 1000, 2)
            if durations
            else None,
            "judged": len(judged),
            "judge_pass_rate": round(sum(verdicts) / len(verdicts), 3) if verdicts else None,
            "judge_errors": sum(1 for e in judged if e.get("error")),
        }


REPORT_ROWS = (
    ("sent", "sent"),
    ("delivered", "delivered"),
    ("failed (dead-lettered) by reason", "dead_lettered"),
    ("missing", "missing"),
    ("duplicate deliveries", "duplicate_deliveries"),
    ("end reasons", "end_reasons"),
    ("wall time (s)", "wall_seconds"),
    ("LLM calls (200)", "llm_calls"),
    ("LLM 429s", "llm_429"),
    ("achieved LLM RPS", "achieved_llm_rps"),
    ("mock max 1-s window", "mock_max_1s_window"),
    ("tokens", "tokens"),
    ("simulation p50 (s)", "p50_duration_s"),
    ("simulation p95 (s)", "p95_duration_s"),
    ("judged simulations", "judged"),
    ("judge pass rate", "judge_pass_rate"),
    ("judge errors", "judge_errors"),
)


def print_report(report: dict[str, Any], title: str, out: IO[str] | None = None) -> bool:
    """The report as a table; returns (and prints) whether every event was delivered."""
    out = out or sys.stdout
    rows = [
        (name, report[key] if report[key] not in ({}, None) else "none")
        for name, key in REPORT_ROWS
        if key in report
    ]
    print_rows(rows, title, out)
    ok = report["delivered"] == report["sent"] and report["missing"] == 0
    out.write(
        "RESULT: " + ("OK, every event delivered" if ok else "NOT every event was delivered") + "\n"
    )
    out.flush()
    return ok
