"""`faust -A simapp report BATCH`: what a batch found, and its summaries for a notebook.

Without `--format` (or `--format text`) it prints the batch report from a worker's web view
(`GET /report/{batch}/`, any worker: it forwards to the owner, like `progress`); `--json`
prints the view's JSON. `--format json|jsonl|csv` exports the batch's summaries from the
results topic instead (every simulation once, written as read: simapp/observe/export.py), to
stdout or `--output FILE`; the count goes to stderr. Exit 1 when no worker answers or the
batch has no summaries on the results topic, 2 for bad options.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from faust.cli import AppCommand, argument, option

from simapp.commands.base import WEB_URL_OPTION, SimappCommand, batch_id_problem, default_web_url
from simapp.config import Settings
from simapp.kafka.reader import TopicReader
from simapp.observe import follow as fl
from simapp.observe.export import FORMATS, batch_rows, write_rows
from simapp.observe.report import report_lines
from simapp.worker.application import app, settings


def fetch_report(web_url: str, batch_id: str) -> tuple[int, object]:
    """The batch's report from the first worker that answers 200 or 404 (with the
    configured WEB_AUTH_TOKEN, if any)."""
    last: tuple[int, object] = (0, {"error": "no web URL"})
    for base in fl.split_urls(web_url):
        status, body = fl.get_json(f"{base}/report/{batch_id}/", token=settings.web_auth_token)
        if status in (200, 404):
            return status, body
        last = (status, body)
    return last


async def result_values(s: Settings) -> AsyncIterator[bytes | None]:
    """Every value of the results topic, from its start to its end, as fetched."""
    async with TopicReader(s) as reader:
        await reader.from_start(s.results_topic)
        async for record in reader.records():
            yield record.value


async def export(s: Settings, batch_id: str, fmt: str, out: IO[str]) -> int:
    return await write_rows(batch_rows(result_values(s), batch_id), fmt, out)


async def print_report(batch_id: str, web_url: str, as_json: bool) -> int:
    status, body = await asyncio.to_thread(fetch_report, web_url, batch_id)
    if status != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        print(f"batch {batch_id}: {error or f'HTTP {status}'} ({web_url})", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2) if as_json else "\n".join(report_lines(body)))
    return 0


@app.command(
    argument("batch_id", type=str),
    option(
        "--format",
        "fmt",
        type=str,
        default="text",
        show_default=True,
        help="text: the report; json, jsonl or csv: export the batch's summaries",
    ),
    option("--output", default=None, help="write the export to this file (default stdout)"),
    option("--json", "as_json", is_flag=True, default=False, help="print the report's JSON"),
    WEB_URL_OPTION,
    base=SimappCommand,
)
async def report(
    self: AppCommand,
    batch_id: str,
    fmt: str,
    output: str | None,
    as_json: bool,
    web_url: str | None,
) -> int:
    """Print the report of batch BATCH_ID, or export its summaries (--format json|jsonl|csv)."""
    problem = batch_id_problem(batch_id)
    if problem is not None or fmt not in ("text", *FORMATS):
        problem = problem.replace("--batch-id", "BATCH_ID") if problem else None
        print(problem or f"--format must be text, {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if fmt == "text":
        return await print_report(batch_id, web_url or default_web_url(settings), as_json)
    if output is None:
        count = await export(settings, batch_id, fmt, sys.stdout)
    else:
        # the command's own loop runs nothing else: a blocking write holds up only the read
        with Path(output).open("w", encoding="utf-8", newline="") as out:  # noqa: ASYNC230
            count = await export(settings, batch_id, fmt, out)
    print(f"{count} summaries of batch {batch_id} exported", file=sys.stderr)
    return 0 if count else 1
