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
from typing import Any

from faust.cli import AppCommand, option

from simapp.commands.base import (
    ESTIMATE_OPTION,
    FOLLOW_OPTION,
    FOLLOW_TIMEOUT_OPTION,
    WEB_URL_OPTION,
    SimappCommand,
    batch_id_problem,
    broker_configured,
    default_web_url,
    follow_batch,
    new_batch_id,
    print_estimate,
)
from simapp.config import Settings
from simapp.kafka.producer import encode_event, produce
from simapp.observe import follow as fl
from simapp.worker.application import app, settings


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
    follow_timeout: float,
) -> int:
    """Send a load-test batch from the built-in catalogue (embedded stack without a broker)."""
    if count < 1:
        print("--count must be at least 1", file=sys.stderr)
        return 2
    if batch_id and (problem := batch_id_problem(batch_id)):
        print(problem, file=sys.stderr)
        return 2
    batch_id = batch_id or new_batch_id()
    if estimate:
        events = make_batch(
            count, batch_id, callback_url or "http://127.0.0.1/", model, settings, seed, features
        )
        return await print_estimate(events, settings, max(1, workers))
    use_embedded = embedded if embedded is not None else not broker_configured(settings)
    session = None
    try:
        if use_embedded:
            from simapp.embedded.session import EmbeddedSession

            workdir = Path(tempfile.mkdtemp(prefix="simapp-loadtest-"))
            session = EmbeddedSession(
                workdir,
                partitions=settings.kafka_partitions,
                mock_args=[
                    "--latency-ms",
                    str(latency_ms),
                    "--latency-jitter-ms",
                    str(latency_ms // 3),
                ],
                worker_settings=embedded_worker_settings(settings, rps, concurrency),
            )
            print(f"starting the embedded stack in {workdir} ...", flush=True)
            await asyncio.to_thread(session.start, max(1, workers))
            target = session.settings()
            callback_url = callback_url or f"{session.stack.sink_url}/callback"
            web_url = web_url or ",".join(session.worker_url(w) for w in session.stack.workers)
            print(
                f"  broker {session.stack.bootstrap}, progress page {fl.split_urls(web_url)[0]}/",
                flush=True,
            )
        else:
            target = settings
            web_url = web_url or default_web_url(settings)
            if not callback_url:
                print("--callback-url is required with a configured broker", file=sys.stderr)
                return 2
        events = make_batch(count, batch_id, callback_url, model, target, seed, features)
        started = time.time()
        producing = asyncio.create_task(
            produce(target, (encode_event(e) for e in events), rate=rate)
        )
        if not follow:
            sent = await producing
            print(f"sent {sent} events, batch {batch_id}")
            return 0 if sent == count else 1
        print(f"sending {count} events, batch {batch_id}", flush=True)

        def should_stop() -> str | None:
            if producing.done() and not producing.cancelled() and producing.exception():
                return f"sending failed: {producing.exception()!r}"
            if session is not None and not all(w.alive() for w in session.stack.workers):
                return f"a worker died; logs in {session.stack.log_dir}"
            return None

        code = await follow_batch(
            web_url,
            batch_id,
            sent=count,
            started=started,
            limit=follow_timeout,
            should_stop=should_stop,
        )
        sent = await producing
        return code if sent == count else 1
    finally:
        if session is not None:
            print("stopping the embedded stack ...", flush=True)
            await asyncio.to_thread(session.stop)
            print(f"logs: {session.stack.log_dir}")


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
