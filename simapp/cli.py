"""Faust commands of simapp: `loadtest`, `submit`, `progress` (`faust -A simapp <command>`).

- loadtest: N events from the built-in catalogue as one batch; without a configured broker
  (KAFKA_BOOTSTRAP_SERVERS unset in the environment and .env) or with --embedded it runs an
  embedded session (simapp/embedded/session.py: Tansu, mock LLM, callback sink, workers) and
  tears it down.
- submit: a JSONL file of events as one batch, validated completely before anything is sent.
- progress: the progress table once, from a worker's web views.

The commands run on their own asyncio loop (not as a Faust worker service) and exit with a
status code: 0 ok, 1 the batch did not finish cleanly / no answer, 2 bad input.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from faust.cli import AppCommand, argument, option

from simapp import follow as fl
from simapp.application import app, settings
from simapp.config import Settings
from simapp.estimate import report_lines
from simapp.producer import encode_event, produce
from simapp.schemas import EventDecoder, Rejection


class SimappCommand(AppCommand):
    """An app command that runs `run` on a plain asyncio loop and exits with its return code.

    Faust's default runs a command as a service inside a mode Worker, which always exits 0.
    """

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        code = asyncio.run(self.run(*self.args, *args, **{**self.kwargs, **kwargs}))
        raise SystemExit(code or 0)


def default_web_url(s: Settings) -> str:
    return f"http://127.0.0.1:{s.metrics_port}"


def broker_configured(s: Settings) -> bool:
    """KAFKA_BOOTSTRAP_SERVERS given in the environment or .env (not just the default)."""
    return "kafka_bootstrap_servers" in s.model_fields_set


def new_batch_id() -> str:
    return f"batch-{uuid.uuid4().hex[:8]}"


def batch_id_problem(batch_id: str) -> str | None:
    """Why an explicit --batch-id cannot be used (the event schema's id rules), or None."""
    from pydantic import TypeAdapter, ValidationError

    from simapp.schemas import Id

    try:
        TypeAdapter(Id).validate_python(batch_id)
    except ValidationError as exc:
        return f"--batch-id {batch_id!r} is not a valid batch id: {exc.errors()[0]['msg']}"
    return None


async def follow_batch(
    web_url: str,
    batch_id: str,
    *,
    sent: int | None,
    started: float,
    limit: float,
    should_stop: Any = None,
) -> int:
    """Follow to the end, print the report; 0 when every simulation was delivered."""
    last = await asyncio.to_thread(
        fl.follow, web_url, batch_id, timeout=limit, should_stop=should_stop
    )
    wall = None
    if last and last.get("done") and last.get("finished_at"):
        # from our first send to the last finish, measured with the workers' clock
        wall = max(float(last["finished_at"]) - started, 0.0) or None
    r = fl.report(last, sent=sent, wall=wall)
    fl.print_report(r)
    expected = sent if sent is not None else r["total"]
    ok = r["done"] and r["failed"] == 0 and r["delivered"] == expected
    print("RESULT:", "OK, every simulation delivered" if ok else "NOT all delivered")
    return 0 if ok else 1


# Options shared by loadtest, submit and progress (faust's `option` is a reusable decorator).
FOLLOW_OPTION = option(
    "--follow/--no-follow", default=False, help="show live progress and a report"
)
WEB_URL_OPTION = option(
    "--web-url",
    default=None,
    help="worker web URL(s), comma-separated (default http://127.0.0.1:$METRICS_PORT)",
)
FOLLOW_TIMEOUT_OPTION = option(
    "--timeout",
    "follow_timeout",
    type=float,
    default=3600.0,
    show_default=True,
    help="follow at most this many seconds",
)


ESTIMATE_OPTION = option(
    "--estimate/--no-estimate",
    default=False,
    help="print the expected LLM calls, time and cost, and send nothing",
)


async def print_estimate(events: list[dict], s: Settings, workers: int) -> int:
    """The estimate of a batch (nothing is sent); history from the results topic if any."""
    from simapp.estimate import Figures, estimate, figures_from_results, read_recent_results
    from simapp.schemas import SimulationEvent

    figures = Figures()
    if broker_configured(s):
        figures = figures_from_results(await read_recent_results(s)) or figures
    parsed = [SimulationEvent.model_validate(e) for e in events]
    result = estimate(parsed, s, figures, workers)
    print("\n".join(report_lines(result, s)))
    return 0


# ----- loadtest ---------------------------------------------------------------------------
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
    from simapp.catalogue import make_events

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


# ----- submit -----------------------------------------------------------------------------
def validate_lines(lines: list[str], s: Settings, batch_id: str) -> tuple[list[dict], list[str]]:
    """Decode every non-blank line; returns (events with batch id/size set, problems)."""
    decoder = EventDecoder(s)
    problems: list[str] = []
    raw: list[tuple[int, dict]] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        decoded = decoder.decode(line.encode("utf-8", "surrogatepass"))
        if isinstance(decoded, Rejection):
            problems.append(f"line {number}: {decoded.reason}: {decoded.detail}")
            continue
        if decoded.id in first_line:
            problems.append(
                f"line {number}: duplicate_id: id {decoded.id!r} already on line "
                f"{first_line[decoded.id]} (a batch counts each simulation once)"
            )
            continue
        first_line[decoded.id] = number
        raw.append((number, json.loads(line)))
    if not raw and not problems:
        problems.append("no events in the file")
    events = []
    for number, data in raw:
        data["batch_id"] = batch_id
        data["batch_size"] = len(raw)
        again = decoder.decode(json.dumps(data).encode())
        if isinstance(again, Rejection):  # e.g. an invalid --batch-id
            problems.append(f"line {number}: {again.reason}: {again.detail}")
        events.append(data)
    return events, problems


@app.command(
    argument("file", type=str),
    option("--batch-id", default=None, help="batch id (default: a new random one)"),
    FOLLOW_OPTION,
    WEB_URL_OPTION,
    ESTIMATE_OPTION,
    option(
        "--workers",
        type=int,
        default=1,
        show_default=True,
        help="workers sharing the load, for --estimate without LLM_GLOBAL_RATE_LIMIT_RPS",
    ),
    FOLLOW_TIMEOUT_OPTION,
    base=SimappCommand,
)
async def submit(
    self: AppCommand,
    file: str,
    batch_id: str | None,
    follow: bool,
    web_url: str | None,
    estimate: bool,
    workers: int,
    follow_timeout: float,
) -> int:
    """Validate every line of FILE.jsonl, then send them all as one batch."""
    try:
        text = await asyncio.to_thread(Path(file).read_text, encoding="utf-8")
        lines = text.splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read {file}: {exc}", file=sys.stderr)
        return 2
    if batch_id and (problem := batch_id_problem(batch_id)):
        print(problem, file=sys.stderr)
        return 2
    batch_id = batch_id or new_batch_id()
    events, problems = validate_lines(lines, settings, batch_id)
    if problems:
        for problem in problems:
            print(f"{file}: {problem}", file=sys.stderr)
        print(f"{len(problems)} bad line(s); nothing was sent", file=sys.stderr)
        return 2
    if estimate:
        return await print_estimate(events, settings, max(1, workers))
    started = time.time()
    sent = await produce(settings, (encode_event(e) for e in events))
    print(f"sent {sent} events, batch {batch_id}", flush=True)
    if sent != len(events):
        return 1
    if not follow:
        return 0
    return await follow_batch(
        web_url or default_web_url(settings),
        batch_id,
        sent=sent,
        started=started,
        limit=follow_timeout,
    )


# ----- progress ---------------------------------------------------------------------------
@app.command(
    option("--batch-id", default=None, help="only this batch (with details)"),
    WEB_URL_OPTION,
    option("--json", "as_json", is_flag=True, default=False, help="print the JSON answer"),
    base=SimappCommand,
)
async def progress(
    self: AppCommand, batch_id: str | None, web_url: str | None, as_json: bool
) -> int:
    """Print batch progress once (every batch, or one with --batch-id)."""
    url = web_url or default_web_url(settings)
    if batch_id:
        status, body = await asyncio.to_thread(fl.fetch_batch, url, batch_id)
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            print(f"batch {batch_id}: {error or f'HTTP {status}'} ({url})", file=sys.stderr)
            return 1
        if as_json:
            print(json.dumps(body, indent=2))
            return 0
        print(fl.table([body]))
        print(fl.progress_line(body))
        if body.get("failed_by_reason"):
            print("failed by reason:", json.dumps(body["failed_by_reason"], sort_keys=True))
        if body.get("end_reasons"):
            print("end reasons:", json.dumps(body["end_reasons"], sort_keys=True))
        return 0
    status, body = await asyncio.to_thread(fl.fetch_all, url)
    if status != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        print(f"no progress from {url}: {error or f'HTTP {status}'}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(body, indent=2))
        return 0
    batches = body.get("batches", [])
    print(fl.table(batches) if batches else "no batches yet")
    if not body.get("complete"):
        missing = [w["url"] for w in body.get("workers", []) if not w.get("ok")]
        print(f"(partial: no answer from {', '.join(missing) or 'an unassigned partition'})")
    return 0
