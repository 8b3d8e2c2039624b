"""`faust -A simapp dlq list|replay`: inspect and replay dead letters.

The record format and replay are in simapp/delivery/dead_letters.py.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from faust.cli import AppCommand, argument, option

from simapp.commands.base import SimappCommand
from simapp.delivery.dead_letters import read_dead_letters, replay, select
from simapp.worker.application import app, settings


@app.command(
    argument("action", type=str),
    option("--reason", default=None, help="only records with this reason"),
    option("--id", "simulation_id", default=None, help="only this simulation id"),
    option("--limit", type=int, default=50, show_default=True, help="list at most N records"),
    option("--json/--no-json", "as_json", default=False, help="list as JSON lines"),
    option("--force/--no-force", default=False, help="replay duplicate_id records too"),
    option("--dry-run/--no-dry-run", default=False, help="show what replay would do"),
    base=SimappCommand,
)
async def dlq(
    self: AppCommand,
    action: str,
    reason: str | None,
    simulation_id: str | None,
    limit: int,
    as_json: bool,
    force: bool,
    dry_run: bool,
) -> int:
    """Dead letters: `list` them (with counts by reason) or `replay` them."""
    if action not in {"list", "replay"}:
        print("usage: faust -A simapp dlq list|replay [--reason R] [--id SIM]")
        return 2
    records = select(await read_dead_letters(settings), reason, simulation_id)
    if action == "list":
        counts = Counter(r.get("reason") for r in records)
        print(f"{len(records)} dead letters on {settings.dlq_topic}: {dict(counts)}")
        for record in records[:limit]:
            if as_json:
                print(json.dumps(record, ensure_ascii=False))
            else:
                print(_line(record))
        return 0
    if dry_run:
        print(
            f"would replay {len(records)} dead letters: {dict(Counter(_kind(r) for r in records))}"
        )
        return 0
    counts = await replay(settings, records, force=force)
    print(f"replayed {len(records)} dead letters: {counts}")
    return 0 if counts["still_undeliverable"] == 0 else 1


def _kind(record: dict[str, Any]) -> str:
    return "re-POST summary" if record.get("summary") else "re-queue event"


def _line(record: dict[str, Any]) -> str:
    source = record.get("source") or {}
    where = f"{source.get('topic')}[{source.get('partition')}]@{source.get('offset')}"
    return (
        f"{record.get('timestamp', '?')}  {record.get('reason', '?'):<18} "
        f"{record.get('simulation_id') or '-':<40} {where}  {str(record.get('detail'))[:120]}"
    )
