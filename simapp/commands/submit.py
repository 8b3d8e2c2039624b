"""`faust -A simapp submit FILE.jsonl`: a file of events as one batch, every line validated
before anything is sent."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from faust.cli import AppCommand, argument, option

from simapp.commands.base import (
    ESTIMATE_OPTION,
    FOLLOW_OPTION,
    FOLLOW_TIMEOUT_OPTION,
    MAX_REPEATS,
    REPEATS_OPTION,
    WEB_URL_OPTION,
    SimappCommand,
    batch_id_problem,
    default_web_url,
    follow_batch,
    new_batch_id,
    print_estimate,
    repeated,
)
from simapp.config import Settings
from simapp.kafka.producer import encode_event, produce
from simapp.simulation.schemas import EventDecoder, Rejection
from simapp.worker.application import app, settings


def validate_lines(
    lines: list[str],
    s: Settings,
    batch_id: str,
    repeats: int = 1,
    resolve_models: bool = True,
    max_cost: float | None = None,
) -> tuple[list[dict], list[str]]:
    """Decode every non-blank line; returns (events with batch id/size set, each scenario
    `repeats` times, problems). `resolve_models=False` (--estimate) leaves out where each
    model would be sent, which loads LiteLLM on its route. `max_cost` is the batch's spend
    cap, on every event (the first one the batch's owner hears of is the batch's)."""
    decoder = EventDecoder(s, resolve_models=resolve_models)
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
        for copy in repeated(data, repeats):
            copy["batch_id"] = batch_id
            copy["batch_size"] = len(raw) * repeats
            if max_cost is not None:
                copy["max_cost_usd"] = max_cost
            again = decoder.decode(json.dumps(copy).encode())
            if isinstance(again, Rejection):  # e.g. an invalid --batch-id, an id too long
                problems.append(f"line {number}: {again.reason}: {again.detail}")
            events.append(copy)
    return events, problems


@app.command(
    argument("file", type=str),
    option("--batch-id", default=None, help="batch id (default: a new random one)"),
    FOLLOW_OPTION,
    WEB_URL_OPTION,
    ESTIMATE_OPTION,
    REPEATS_OPTION,
    option(
        "--workers",
        type=int,
        default=1,
        show_default=True,
        help="workers sharing the load, for --estimate without LLM_GLOBAL_RATE_LIMIT_RPS",
    ),
    FOLLOW_TIMEOUT_OPTION,
    option(
        "--max-cost",
        type=float,
        default=None,
        help="the batch's spend cap in USD: once reached, its unfinished simulations end as "
        "budget_exhausted (sets max_cost_usd on every event)",
    ),
    base=SimappCommand,
)
async def submit(
    self: AppCommand,
    file: str,
    batch_id: str | None,
    follow: bool,
    web_url: str | None,
    estimate: bool,
    repeats: int,
    workers: int,
    follow_timeout: float,
    max_cost: float | None,
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
    if not 1 <= repeats <= MAX_REPEATS:
        print(f"--repeats must be 1..{MAX_REPEATS}", file=sys.stderr)
        return 2
    batch_id = batch_id or new_batch_id()
    events, problems = validate_lines(
        lines, settings, batch_id, repeats, resolve_models=not estimate, max_cost=max_cost
    )
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
        token=settings.web_auth_token,
    )
