"""The progress agent: folds progress messages into the progress tables (concurrency 1).

The pipeline sends one message per simulation state change to the progress topic, keyed by
batch id, so every message of a batch lands on one partition and this agent, on the worker owning
that partition, is the only writer of the batch's row (docs/architecture.md, "Who writes which
table"). It also keeps the per-batch Prometheus gauges of the batches it owns.
The topic is declared raw (simapp/worker/application.py) and decoded here, so a malformed message is
logged and skipped instead of stopping the agent; an already decoded dict is accepted too.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from simapp.tables.progress import local_rows, progress_seen_table, progress_table, seen_key

from simapp.observe import metrics
from simapp.observe.progress import BadMessage, apply_once, parse_message, view
from simapp.worker.application import app, topics

log = logging.getLogger(__name__)

GAUGE_REFRESH_SECONDS = 5.0
_gauged: set[str] = set()


def set_gauges(row: dict[str, Any]) -> None:
    v = view(row)
    batch = str(v["batch_id"])
    metrics.total_simulations.labels(batch).set(v["total"])
    metrics.remaining_simulations.labels(batch).set(v["remaining"])
    _gauged.add(batch)


def record(value: Any, partition: int) -> bool:
    """Apply one raw progress message to the tables; returns whether it counted."""
    if isinstance(value, bytes | bytearray | str):
        value = json.loads(value)
    msg = parse_message(value)
    batch_id = msg["batch_id"]
    key = seen_key(batch_id, msg["simulation_id"])
    seen = progress_seen_table.get(key)
    row, new_seen, counted = apply_once(progress_table.get(batch_id), seen, msg, partition)
    if counted:
        progress_seen_table[key] = new_seen
    else:
        log.debug("duplicate progress %s for %s (seen %s)", msg["kind"], key, seen)
    progress_table[batch_id] = row
    set_gauges(row)
    return counted


@app.agent(topics.progress, concurrency=1)
async def track_progress(stream: Any) -> None:
    async for event in stream.events():
        try:
            record(event.value, event.message.partition)
        except (BadMessage, ValueError, TypeError) as exc:
            log.warning(
                "skipping bad progress message at %s[%s]@%s: %s",
                event.message.topic,
                event.message.partition,
                event.message.offset,
                exc,
            )


@app.timer(GAUGE_REFRESH_SECONDS)
async def refresh_progress_gauges() -> None:
    """Gauges follow ownership: set them for every batch we own (also rows recovered after a
    rebalance), drop the ones whose partition moved to another worker."""
    if app.rebalancing:
        return
    try:
        rows = local_rows()
    except Exception:  # noqa: BLE001 - a store hiccup must not kill the timer
        log.exception("could not read the progress table")
        return
    owned = set()
    for row in rows:
        set_gauges(row)
        owned.add(str(row.get("batch_id")))
    for batch in list(_gauged - owned):
        for gauge in (metrics.total_simulations, metrics.remaining_simulations):
            try:
                gauge.remove(batch)
            except KeyError:
                pass
        _gauged.discard(batch)
