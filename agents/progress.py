"""The progress agent: folds progress messages into the progress tables (concurrency 1).

The pipeline sends one message per simulation state change to the progress topic, keyed by
batch id, so every message of a batch lands on one partition and this agent, on the worker owning
that partition, is the only writer of the batch's row (docs/architecture.md, "Who writes which
table"). It also keeps the per-batch Prometheus gauges of the batches it owns.
The topic is declared raw (simapp/worker/application.py) and decoded here, so a malformed message is
logged and skipped instead of stopping the agent; an already decoded dict is accepted too.

A counted final message (completed or failed) is also folded into the batch's report row
(tables/reports.py, simapp/observe/report.py): one more row write per simulation.

The batch webhook. When the batch's row has finished (its total known and counted), its
report has a batch_callback_url and has not been sent, the agent writes a batch record to the
results topic (keyed by batch id), awaits its ack, then marks the report sent and awaits that
row's changelog write; the outbox delivers the record like a summary (URL policy, signing,
breaker, pace, retries, Idempotency-Key = batch id). The check runs on every message of a
finished batch, repeats included, and the message is acked only after both awaits, so:
- a crash before the record's ack: the message was not committed (Faust flushes and commits
  only what was processed), it comes back, the report still says unsent, the record is sent;
- a crash after the "sent" mark is durable: the report says sent, nothing is sent again;
- a crash between the two (one changelog round trip): the record is written twice; the outbox
  drops a repeat of a batch it already delivered, otherwise the receiver gets the same
  Idempotency-Key twice, as with any summary after a crash;
- the record could not be sent (broker): the message is handed back and fetched again.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from simapp.agents.wiring import give_back
from simapp.tables.progress import (
    active_partitions,
    batch_stops,
    batches,
    members_owning,
    progress_seen_table,
    progress_table,
    seen_key,
)
from simapp.tables.reports import report_row, reports_table

from simapp.observe import metrics
from simapp.observe.progress import FINAL, BadMessage, apply_at, parse_message, view
from simapp.observe.report import (
    batch_record,
    budget_of,
    fold,
    new_report,
    report_view,
    webhook_due,
)
from simapp.worker.application import app, settings, topics
from simapp.worker.parts import record_sender
from simapp.worker.testhooks import crash_point

log = logging.getLogger(__name__)

GAUGE_REFRESH_SECONDS = 5.0
_gauged: set[str] = set()


send_batch_record = record_sender(topics.results, settings.max_record_bytes)


def record(value: Any, partition: int, offset: int) -> dict[str, Any] | None:
    """Apply one raw progress message (at `offset` of the progress topic) to the tables;
    returns the batch's report when its batch webhook is due (see the module docstring), else
    None. `apply_at` and the report's `applied_offset` make a message that comes back after a
    crash complete what the crash cut short, never count twice."""
    if isinstance(value, bytes | bytearray | str):
        value = json.loads(value)
    msg = parse_message(value)
    batch_id = msg["batch_id"]
    key = seen_key(batch_id, msg["simulation_id"])
    seen = progress_seen_table.get(key)
    row, new_seen, counted = apply_at(progress_table.get(batch_id), seen, msg, partition, offset)
    if msg["kind"] == "spend":
        progress_table[batch_id] = row
        stop_if_capped(batch_id, row)
        return None
    if counted:
        progress_seen_table[key] = new_seen
    else:
        log.debug("duplicate progress %s for %s (seen %s)", msg["kind"], key, seen)
    progress_table[batch_id] = row
    batches.note(row)
    report = None
    if counted and msg["kind"] in FINAL:
        report = fold_report(batch_id, msg, row, offset)
    if row.get("finished_at") is None:
        return None
    report = report if report is not None else report_row(batch_id)
    return report if webhook_due(report, row) else None


def stop_if_capped(batch_id: str, row: dict[str, Any]) -> None:
    """Tell every worker (the global table) that the batch reached its spend cap, once."""
    if row.get("capped_at") and batch_stops.get(batch_id) is None:
        batch_stops[batch_id] = {"at": row["capped_at"], "spent_usd": row.get("spent_usd")}
        log.warning(
            "batch %s reached its max_cost_usd %s (spent %.4f USD): its remaining simulations "
            "end as budget_exhausted",
            batch_id, row.get("max_cost_usd"), row.get("spent_usd") or 0.0,
        )  # fmt: skip


def fold_report(
    batch_id: str, msg: dict[str, Any], row: dict[str, Any], offset: int
) -> dict[str, Any] | None:
    """The batch's report row with the message folded in and written (unless the row already
    holds it: the message came back after a crash); None (logged) when the stored row cannot
    take it: the progress counts go on whatever happens to the report."""
    report = report_row(batch_id) or new_report(batch_id)
    if int(report.get("applied_offset", -1)) >= offset:
        return report
    try:
        fold(
            report,
            msg,
            top_n=settings.report_top_n,
            kept=settings.report_failures_kept,
            started_at=row.get("started_at"),
        )
    except Exception:  # noqa: BLE001 - a row of another version, say; never stop the agent
        log.exception("batch report of %s: %s not folded", batch_id, msg["simulation_id"])
        return None
    report["applied_offset"] = offset
    reports_table[batch_id] = report
    return report


def current_budget() -> tuple[float, str]:
    return budget_of(
        settings.llm_global_rate_limit_rps, settings.llm_rate_limit_rps, members_owning()
    )


async def send_report(report: dict[str, Any], partition: int) -> None:
    """The batch record on the results topic (acked), then the report marked sent (its
    changelog write acked): at most a changelog round trip in which a crash sends it twice."""
    batch_id = report["batch_id"]
    row = progress_table.get(batch_id)
    now = time.time()
    shown = report_view(report, view(row, now) if row else None, budget=current_budget())
    crash_point("kill_before_batch_report")
    await send_batch_record(batch_id.encode(), batch_record(report, shown, now))
    report["webhook"]["sent_at"] = now
    reports_table.data[batch_id] = report
    await reports_table.send_changelog(partition, batch_id, report)
    log.info("batch %s finished: its report is on its way to its batch_callback_url", batch_id)


@app.agent(topics.progress, concurrency=1)
async def track_progress(stream: Any) -> None:
    async for event in stream.events():
        message = event.message
        try:
            due = record(event.value, message.partition, message.offset)
        except (BadMessage, ValueError, TypeError) as exc:
            log.warning(
                "skipping bad progress message at %s[%s]@%s: %s",
                message.topic,
                message.partition,
                message.offset,
                exc,
            )
            continue
        if due is None:
            continue
        try:
            await send_report(due, message.partition)
        except Exception:  # the broker: fetch the message again, the report is still due
            log.exception("batch report of %s not sent; the message comes back", due["batch_id"])
            give_back(message)


@app.timer(GAUGE_REFRESH_SECONDS)
async def refresh_progress_gauges() -> None:
    """total_simulations / remaining_simulations for the GAUGED_BATCHES most recently updated
    batches this worker owns (a bounded set of series, whatever the batch ids); a finished
    batch keeps its series until newer batches push it out or it expires (BATCH_RETENTION);
    series of batches that expired or moved to another worker are dropped."""
    if app.rebalancing:
        return
    mine = active_partitions()
    shown = set()
    for batch_id in batches.newest(mine, settings.gauged_batches):
        row = progress_table.get(batch_id)
        if not isinstance(row, dict):
            continue
        v = view(row)
        metrics.total_simulations.labels(batch_id).set(v["total"])
        metrics.remaining_simulations.labels(batch_id).set(v["remaining"])
        shown.add(batch_id)
    for batch in _gauged - shown:
        metrics.forget_batch(batch)
    _gauged.clear()
    _gauged.update(shown)
