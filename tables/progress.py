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

from simapp.worker.application import app, settings

progress_table = app.Table(
    "progress",
    default=None,
    key_type=str,
    partitions=settings.kafka_partitions,
    help="Batch progress rows by batch id (see simapp/observe/progress.py)",
)

progress_seen_table = app.Table(
    "progress-seen",
    default=None,
    key_type=str,
    partitions=settings.kafka_partitions,
    help="Last counted state of each simulation, keyed '{batch_id}/{simulation_id}'",
)


def seen_key(batch_id: str, simulation_id: str) -> str:
    return f"{batch_id}/{simulation_id}"


def changelog_topic_name() -> str:
    return progress_table.changelog_topic.get_topic_name()


def active_partitions() -> set[int]:
    """Partitions of the progress changelog this worker owns now (standbys excluded)."""
    name = changelog_topic_name()
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name}


def local_rows() -> list[dict]:
    """Rows of the batches this worker owns.

    The RocksDB store already iterates active partitions only; the memory store also holds
    standby rows, so rows are filtered by the partition the agent recorded in them.
    """
    mine = active_partitions()
    rows = []
    for _key, row in list(progress_table.items()):
        if isinstance(row, dict) and row.get("partition") in mine:
            rows.append(row)
    return rows
