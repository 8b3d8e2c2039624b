"""The reports table: one batch report row per batch (simapp/observe/report.py).

Written only by the concurrency-1 progress agent (agents/progress.py), on a counted final
progress message, so, like the progress row, a batch's report lives on the batch's partition
of the progress topic and one worker owns all state of a batch. Kept apart from the progress
row so that /progress/ stays small: the report row is a few KB (bounded by REPORT_TOP_N and
REPORT_FAILURES_KEPT, whatever the batch size) and is read only by the report views.
"""

from __future__ import annotations

from typing import Any

from simapp.worker.application import app, settings, table_options

reports_table = app.Table(
    "reports",
    default=None,
    key_type=str,
    partitions=settings.kafka_partitions,
    options=table_options(settings),
    help="Batch report rows by batch id (see simapp/observe/report.py)",
)


def report_row(batch_id: str) -> dict[str, Any] | None:
    row = reports_table.get(batch_id)
    return row if isinstance(row, dict) else None
