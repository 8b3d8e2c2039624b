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

from simapp.tables.progress import (
    active_partitions,
    batches,
    progress_seen_table,
    progress_table,
    seen_key,
)

from simapp.observe import metrics
from simapp.observe.progress import BadMessage, apply_once, parse_message, view
from simapp.worker.application import app, settings, topics

log = logging.getLogger(__name__)

GAUGE_REFRESH_SECONDS = 5.0
_gauged: set[str] = set()


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
    batches.note(row)
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
    """total_simulations / remaining_simulations for the newest GAUGED_BATCHES unfinished
    batches this worker owns (a bounded set of series, whatever the batch ids); series of
    batches that finished, expired or moved to another worker are dropped."""
    if app.rebalancing:
        return
    mine = active_partitions()
    shown = set()
    for batch_id in batches.newest(mine, settings.gauged_batches, unfinished=True):
        row = progress_table.get(batch_id)
        if not isinstance(row, dict):
            continue
        v = view(row)
        metrics.total_simulations.labels(batch_id).set(v["total"])
        metrics.remaining_simulations.labels(batch_id).set(v["remaining"])
        shown.add(batch_id)
    for batch in list(_gauged - shown):
        for gauge in (metrics.total_simulations, metrics.remaining_simulations):
            try:
                gauge.remove(batch)
            except KeyError:
                pass
    _gauged.clear()
    _gauged.update(shown)
