"""`faust -A simapp dlq list|replay`: inspect and replay dead letters.

The record format is in simapp/delivery/dead_letters.py; what replay does, and how it remembers
what it replayed (its consumer group and its log), in simapp/delivery/replay.py.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from faust.cli import AppCommand, argument, option

from simapp.commands.base import SimappCommand
from simapp.delivery.replay import Selection, list_dead_letters, replay
from simapp.worker.application import app, settings

USAGE = "usage: faust -A simapp dlq list|replay [--reason R] [--id SIM] [--force] [--dry-run]"


@app.command(
    argument("action", type=str),
    option("--reason", default=None, help="only records with this reason"),
    option("--id", "simulation_id", default=None, help="only this simulation id"),
    option("--limit", type=int, default=50, show_default=True, help="list at most N records"),
    option("--json/--no-json", "as_json", default=False, help="list as JSON lines"),
    option(
        "--force/--no-force",
        default=False,
        help="replay duplicate_id records too, and re-simulate ids already done "
        "(needs DLQ_REPLAY_SECRET)",
    ),
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
    """Dead letters: `list` them (with counts by reason, and which were replayed) or `replay`
    those not replayed yet (internal_error only with --reason internal_error, duplicate_id
    only with --force)."""
    if action not in {"list", "replay"}:
        print(USAGE)
        return 2
    selection = Selection(reason=reason, simulation_id=simulation_id, force=force)
    if action == "list":
        return await _list(selection, limit, as_json)
    if force and settings.dlq_replay_secret is None:
        print("error: --force needs DLQ_REPLAY_SECRET (set the workers' too)")
        return 2
    report = await replay(settings, selection, dry_run=dry_run)
    counts = dict(sorted(report.counts.items()))
    if dry_run:
        print(f"would replay (nothing replayed): {counts}")
    else:
        done = report.counts["redelivered"] + report.counts["requeued"]
        print(f"replayed {done} dead letters: {counts}")
    left = report.left_alone
    if left.get("internal_error"):
        print(
            f"left alone: {left['internal_error']} internal_error (re-queued, they would meet "
            "the same bug; replay them with --reason internal_error once it is fixed)"
        )
    if left.get("duplicate_id"):
        print(
            f"left alone: {left['duplicate_id']} duplicate_id (their ids were simulated "
            "already; --force re-simulates them)"
        )
    return 1 if report.failed else 0


async def _list(selection: Selection, limit: int, as_json: bool) -> int:
    records = await list_dead_letters(settings, selection)
    counts = Counter(r.get("reason") for r in records)
    statuses = Counter(r["_replay"]["status"] for r in records)
    print(
        f"{len(records)} dead letters on {settings.dlq_topic}: {dict(counts)}; "
        f"replay: {dict(statuses)}"
    )
    for record in records[:limit]:
        print(json.dumps(record, ensure_ascii=False) if as_json else _line(record))
    return 0


def _line(record: dict[str, Any]) -> str:
    source = record.get("source") or {}
    where = f"{source.get('topic')}[{source.get('partition')}]@{source.get('offset')}"
    state = record["_replay"]
    status = state["status"]
    if status == "replayed":
        status = f"replayed ({state.get('action')})"
    elif state.get("needs"):
        status = f"pending (needs {state['needs']})"
    return (
        f"{record.get('timestamp', '?')}  {record.get('reason', '?'):<18} "
        f"{record.get('simulation_id') or '-':<40} {where}  {status:<28} "
        f"{str(record.get('detail'))[:100]}"
    )
