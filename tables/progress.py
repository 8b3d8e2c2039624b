"""The progress tables: one row per batch, and a seen-state per (batch, simulation).

Both are written only by the concurrency-1 progress agent (simapp/agents/progress.py) while it
processes a message of the progress topic, which is keyed by batch id. Faust writes a table's
changelog to the partition of the event being processed, so the batch row and every seen entry
of that batch live on the batch's progress partition: one worker owns all state of a batch, and
a restarted or new owner recovers both from the same changelog partition.

The seen table is what makes redelivered progress messages harmless (see simapp/observe/progress.py,
`apply_once`). It holds one short string per simulation, e.g. 10k entries per 10k batch.
"""

from __future__ import annotations

from simapp.observe.progress import BatchIndex
from simapp.worker.application import app, settings, table_options

progress_table = app.Table(
    "progress",
    default=None,
    key_type=str,
    partitions=settings.kafka_partitions,
    options=table_options(settings),
    help="Batch progress rows by batch id (see simapp/observe/progress.py)",
)

progress_seen_table = app.Table(
    "progress-seen",
    default=None,
    key_type=str,
    partitions=settings.kafka_partitions,
    options=table_options(settings),
    help="Last counted state of each simulation, keyed '{batch_id}/{simulation_id}'",
)


# Batches whose spend cap (max_cost_usd) was reached: batch id -> {"at", "spent_usd"}. Written
# by the progress agent of the batch's owner, read by every worker before each LLM call of the
# batch: a global table is on every worker, so a stop reaches every one of them. Buffers of one
# record: Faust applies a standby's changelog records 1000 at a time by default (its GlobalTable
# docstring asks for recovery_buffer_size=1), which held a stop back past the batch's end.
batch_stops = app.GlobalTable(
    "batch-stops",
    default=None,
    key_type=str,
    partitions=settings.kafka_partitions,
    options=table_options(settings),
    recovery_buffer_size=1,
    help="Batches whose max_cost_usd was reached (simapp/observe/progress.py apply_spend)",
)


def seen_key(batch_id: str, simulation_id: str) -> str:
    return f"{batch_id}/{simulation_id}"


def changelog_topic_name() -> str:
    return progress_table.changelog_topic.get_topic_name()


def active_partitions() -> set[int]:
    """Partitions of the progress changelog this worker owns now (standbys excluded)."""
    name = changelog_topic_name()
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name}


def members_owning() -> int:
    """Workers that own partitions of the progress changelog in the current assignment (the
    members a per-worker LLM budget is multiplied by); 0 before an assignment."""
    topic = changelog_topic_name()
    try:
        meta = app.router.table_metadata(progress_table.name)
    except Exception:  # noqa: BLE001 - no assignment yet
        return 0
    return sum(1 for tps in meta.values() if tps.get(topic))


# This worker's batches (simapp/observe/progress.py BatchIndex): noted by the progress agent
# and by the retention sweep (agents/retention.py), read by the views and the gauges.
batches = BatchIndex()


def local_rows(limit: int | None = None) -> list[dict]:
    """Rows of the newest `limit` (PROGRESS_BATCHES_SHOWN) batches this worker owns, read
    one by one through the index, never by walking the table."""
    mine = active_partitions()
    rows = []
    for batch_id in batches.newest(mine, limit or settings.progress_batches_shown):
        row = progress_table.get(batch_id)
        if isinstance(row, dict) and row.get("partition") in mine:
            rows.append(row)
    return rows
