"""`faust -A simapp loadtest`: N events from the built-in catalogue as one batch.

Without a configured broker (KAFKA_BOOTSTRAP_SERVERS unset in the environment and .env) or
with --embedded it runs an embedded session (simapp/embedded/session.py: Tansu, mock LLM,
callback sink, workers) and tears it down.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faust.cli import AppCommand, option

from simapp.commands.base import (
    ESTIMATE_OPTION,
    FOLLOW_OPTION,
    FOLLOW_TIMEOUT_OPTION,
    MAX_REPEATS,
    REPEATS_OPTION,
    WEB_URL_OPTION,
    SimappCommand,
    batch_id_problem,
    broker_configured,
    default_web_url,
    follow_batch,
    new_batch_id,
    print_estimate,
    repeated,
)
from simapp.config import Settings
from simapp.kafka.producer import encode_event, produce
from simapp.observe import follow as fl
from simapp.worker.application import app, settings

if TYPE_CHECKING:  # the embedded stack is imported only when a load test starts one
    from simapp.embedded.session import EmbeddedSession


@app.command(
    option("--count", type=int, default=200, show_default=True, help="events in the batch"),
    option("--batch-id", default=None, help="batch id (default: a new random one)"),
    option("--rate", type=float, default=None, help="send at most this many events/s"),
    FOLLOW_OPTION,
    option("--model", default="gpt-4", show_default=True),
    option(
        "--callback-url",
        default=None,
        help="where summaries go (default with the embedded stack: its callback sink)",
    ),
    option(
        "--embedded/--no-embedded",
        default=None,
        help="force (or forbid) the embedded stack; default: when no broker is configured",
    ),
    WEB_URL_OPTION,
    option("--workers", type=int, default=1, show_default=True, help="embedded workers"),
    option("--latency-ms", type=int, default=300, show_default=True, help="embedded mock latency"),
    option(
        "--rps",
        type=float,
        default=None,
        help="embedded workers' LLM_RATE_LIMIT_RPS (default: the configured one, else 50)",
    ),
    option(
        "--concurrency",
        type=int,
        default=None,
        help="embedded workers' CONCURRENT_CONVERSATIONS (default: configured, else 100)",
    ),
    option("--seed", type=int, default=None, help="catalogue random seed"),
    option(
        "--features/--no-features",
        default=False,
        help="catalogue events with a system under test, user instructions and judge criteria",
    ),
    ESTIMATE_OPTION,
    REPEATS_OPTION,
    FOLLOW_TIMEOUT_OPTION,
    base=SimappCommand,
)
async def loadtest(
    self: AppCommand,
    count: int,
    batch_id: str | None,
    rate: float | None,
    follow: bool,
    model: str,
    callback_url: str | None,
    embedded: bool | None,
    web_url: str | None,
    workers: int,
    latency_ms: int,
    rps: float | None,
    concurrency: int | None,
    seed: int | None,
    features: bool,
    estimate: bool,
    repeats: int,
    follow_timeout: float,
) -> int:
    """Send a load-test batch from the built-in catalogue (embedded stack without a broker);
    with --repeats K, each of the COUNT scenarios K times."""
    if count < 1 or not 1 <= repeats <= MAX_REPEATS:
        print(f"--count must be at least 1, --repeats 1..{MAX_REPEATS}", file=sys.stderr)
        return 2
    if batch_id and (problem := batch_id_problem(batch_id)):
        print(problem, file=sys.stderr)
        return 2
    batch_id = batch_id or new_batch_id()
    if estimate:
        events = make_batch(
            count, batch_id, callback_url or "http://127.0.0.1/", model, settings, seed, features
        )
        events = with_repeats(events, repeats)
        return await print_estimate(events, settings, max(1, workers))
    use_embedded = embedded if embedded is not None else not broker_configured(settings)
    if not use_embedded and not callback_url:
        print("--callback-url is required with a configured broker", file=sys.stderr)
        return 2
    session = None
    try:
        target = settings
        if use_embedded:
            session = await start_embedded(workers, latency_ms, rps, concurrency)
            target = session.settings()
            callback_url = callback_url or f"{session.stack.sink_url}/callback"
            web_url = web_url or ",".join(session.worker_url(w) for w in session.stack.workers)
            page = fl.split_urls(web_url)[0]
            print(f"  broker {session.stack.bootstrap}, progress page {page}/", flush=True)
        assert callback_url is not None
        events = make_batch(count, batch_id, callback_url, model, target, seed, features)
        events = with_repeats(events, repeats)
        run = Run(target, events, batch_id, rate, session)
        if not follow:
            return await run.send()
        return await run.send_and_follow(
            web_url or default_web_url(settings), follow_timeout, settings.web_auth_token
        )
    finally:
        if session is not None:
            print("stopping the embedded stack ...", flush=True)
            await asyncio.to_thread(session.stop)
            print(f"logs: {session.stack.log_dir}")


async def start_embedded(
    workers: int, latency_ms: int, rps: float | None, concurrency: int | None
) -> EmbeddedSession:
    """Tansu, the mock LLM (latency ± a third), the sink and `workers` workers."""
    from simapp.embedded.session import EmbeddedSession

    workdir = Path(tempfile.mkdtemp(prefix="simapp-loadtest-"))
    session = EmbeddedSession(
        workdir,
        partitions=settings.kafka_partitions,
        mock_args=["--latency-ms", str(latency_ms), "--latency-jitter-ms", str(latency_ms // 3)],
        worker_settings=embedded_worker_settings(settings, rps, concurrency),
    )
    print(f"starting the embedded stack in {workdir} ...", flush=True)
    await asyncio.to_thread(session.start, max(1, workers))
    return session


class Run:
    """One load-test batch being sent (and followed)."""

    def __init__(
        self,
        target: Settings,
        events: list[dict],
        batch_id: str,
        rate: float | None,
        session: EmbeddedSession | None,
    ) -> None:
        self.count = len(events)
        self.batch_id = batch_id
        self.session = session
        self.started = time.time()
        records = (encode_event(e) for e in events)
        self.producing = asyncio.create_task(produce(target, records, rate=rate))

    async def send(self) -> int:
        sent = await self.producing
        print(f"sent {sent} events, batch {self.batch_id}")
        return 0 if sent == self.count else 1

    async def send_and_follow(self, web_url: str, limit: float, token: Any = None) -> int:
        print(f"sending {self.count} events, batch {self.batch_id}", flush=True)
        code = await follow_batch(
            web_url,
            self.batch_id,
            sent=self.count,
            started=self.started,
            limit=limit,
            should_stop=self.should_stop,
            token=token,
        )
        sent = await self.producing
        return code if sent == self.count else 1

    def should_stop(self) -> str | None:
        producing = self.producing
        if producing.done() and not producing.cancelled() and producing.exception():
            return f"sending failed: {producing.exception()!r}"
        session = self.session
        if session is not None and not all(w.alive() for w in session.stack.workers):
            return f"a worker died; logs in {session.stack.log_dir}"
        return None


def embedded_worker_settings(
    s: Settings, rps: float | None, concurrency: int | None
) -> dict[str, Any]:
    """Explicit options, else what the environment configures, else a demo-friendly pace."""
    fields = s.model_fields_set
    return {
        "llm_rate_limit_rps": rps
        or (s.llm_rate_limit_rps if "llm_rate_limit_rps" in fields else 50),
        "concurrent_conversations": concurrency
        or (s.concurrent_conversations if "concurrent_conversations" in fields else 100),
    }


def with_repeats(events: list[dict], repeats: int) -> list[dict]:
    """Each event `repeats` times (one scenario each), the batch size counting them all."""
    out = [copy for event in events for copy in repeated(event, repeats)]
    for event in out:
        event["batch_size"] = len(out)
    return out


def make_batch(
    count: int,
    batch_id: str,
    callback_url: str,
    model: str,
    s: Settings,
    seed: int | None,
    features: bool,
) -> list[dict]:
    from simapp.embedded.catalogue import make_events

    endpoint = next(iter(s.assistant_endpoints), None)  # features use the first endpoint
    return make_events(
        count,
        callback_url=callback_url,
        model=model,
        batch_id=batch_id,
        max_iterations=s.max_iterations,
        seed=seed,
        features=features,
        endpoint=endpoint,
    )
