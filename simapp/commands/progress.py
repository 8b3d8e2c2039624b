"""`faust -A simapp progress`: batch progress once, from a worker's web views."""

from __future__ import annotations

import asyncio
import json
import sys

from faust.cli import AppCommand, option

from simapp.commands.base import WEB_URL_OPTION, SimappCommand, default_web_url
from simapp.observe import follow as fl
from simapp.worker.application import app, settings


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
        status, body = await asyncio.to_thread(
            fl.fetch_batch, url, batch_id, token=settings.web_auth_token
        )
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
    status, body = await asyncio.to_thread(fl.fetch_all, url, token=settings.web_auth_token)
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
