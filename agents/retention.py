"""The retention sweep: a timer that forgets expired rows of the worker's tables.

Every second each table's sweeper (simapp/worker/retention.py) looks at up to
RETENTION_SWEEP_ROWS rows of the partitions this worker owns: progress rows of batches that
finished (or heard nothing) more than BATCH_RETENTION ago, the "seen" entries and report rows
(and spend-cap stops) of batches whose progress row is gone, and simulation rows older than
SIMULATION_RETENTION.
The progress sweep also notes every row it walks in the batch index, so batches recovered
after a rebalance are listed without reading the whole table at once. Rows per table after
each full pass are the `table_rows{table}` gauge; `make soak` reads it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from simapp.tables.progress import (
    active_partitions,
    batch_stops,
    batches,
    progress_seen_table,
    progress_table,
)
from simapp.tables.reports import reports_table
from simapp.tables.simulations import simulations

from simapp.observe import metrics
from simapp.observe.progress import batch_expired, key_partition
from simapp.worker.application import app, settings
from simapp.worker.retention import TableSweeper

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0
MAX_REST_SECONDS = 60.0  # the longest pause between two full passes of a table
N = settings.kafka_partitions


def _progress_expired(batch_id: Any, row: Any) -> bool:
    if not isinstance(row, dict):
        return True
    if batch_expired(row, time.time(), settings.batch_retention):
        batches.forget(str(batch_id))
        metrics.forget_batch(str(batch_id))  # its series leave /metrics with its row
        return True
    batches.note(row)
    return False


def _seen_expired(key: Any, value: Any) -> bool:
    batch_id = str(key).split("/", 1)[0]
    return progress_table.data.get(batch_id) is None  # its batch expired


def _report_expired(batch_id: Any, row: Any) -> bool:
    return progress_table.data.get(str(batch_id)) is None  # its batch expired


def _simulation_expired(simulation_id: Any, row: Any) -> bool:
    updated = row.get("updated") if isinstance(row, dict) else None
    return not isinstance(updated, int | float) or (
        updated < time.time() - settings.simulation_retention
    )


def _batch_partition(key: Any) -> int:
    return key_partition(str(key).split("/", 1)[0], N)


per_tick = max(1, int(settings.retention_sweep_rows * SWEEP_SECONDS))
# a pass every tenth of the retention period, at most every minute: a row outlives its
# retention by at most that pause and one pass
batch_rest = min(MAX_REST_SECONDS, settings.batch_retention / 10)
simulation_rest = min(MAX_REST_SECONDS, settings.simulation_retention / 10)
sweepers = {
    "progress": TableSweeper(
        progress_table, _progress_expired, _batch_partition, per_tick, rest=batch_rest
    ),
    "progress-seen": TableSweeper(
        progress_seen_table, _seen_expired, _batch_partition, per_tick, rest=batch_rest
    ),
    "reports": TableSweeper(
        reports_table, _report_expired, _batch_partition, per_tick, rest=batch_rest
    ),
    # a global table: every worker holds it, the batch's owner deletes (tombstones reach all)
    "batch-stops": TableSweeper(
        batch_stops, _report_expired, _batch_partition, per_tick, rest=batch_rest
    ),
    "simulations": TableSweeper(
        simulations,
        _simulation_expired,
        lambda key: key_partition(str(key), N),
        per_tick,
        rest=simulation_rest,
    ),
}
metrics.table_rows_source(sweepers)


def _owned(table: Any) -> list[int]:
    name = table.changelog_topic.get_topic_name()
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name)


@app.timer(SWEEP_SECONDS)
async def forget_expired_rows() -> None:
    """One slice of each table's sweep (nothing while partitions move)."""
    if app.rebalancing or getattr(app, "in_recovery", False):
        return
    mine = active_partitions()
    batches.keep_only(mine)
    for name, sweeper in sweepers.items():
        table = sweeper.table
        partitions = sorted(mine) if table.name != simulations.name else _owned(table)
        try:
            deleted = sweeper.sweep(partitions)
        except Exception:  # a store hiccup must not kill the timer
            log.exception("retention sweep of %s failed", name)
            continue
        if deleted:
            metrics.table_rows_expired.labels(name).inc(deleted)
            log.info("retention: %d expired rows of %s deleted", deleted, name)
