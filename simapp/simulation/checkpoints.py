"""The simulations table's rows: where each simulation stands, so a crash re-bills no turn.

One row per simulation id: {"status": "running" | "done", "partition", "offset" (where its
event was read; another offset with the same id is a duplicate), "state" (the conversation
after its last finished turn, while running), "outcome" (when done), "updated", and "replay"
when the event was a `dlq replay` (its mark's attempt, simapp/simulation/ledger.py)}.

The simulate agent writes its own rows (`SimulationStore.put`): each simulation id is owned by
exactly one actor at a time (the ledger's claim), the event topic is keyed by simulation id
and co-partitioned with the table, and Faust writes a row's changelog to the partition of the
event being processed (a per-actor ContextVar). That is one changelog write per checkpoint
instead of a checkpoint topic plus a second agent's changelog write (docs/benchmarks.md,
"Kafka work per simulation"). Faust recovers the table of newly assigned partitions before
their events flow, so a redelivered event on a new owner sees every checkpoint written before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from simapp.kafka.records import fit

RUNNING = "running"
DONE = "done"


def running_row(
    partition: int, offset: int, state: dict[str, Any], replay: str | None = None
) -> dict[str, Any]:
    row = {
        "status": RUNNING,
        "partition": partition,
        "offset": offset,
        "state": state,
        "outcome": None,
        "updated": time.time(),
    }
    if replay is not None:
        row["replay"] = replay
    return row


def done_row(
    partition: int, offset: int, outcome: str, replay: str | None = None
) -> dict[str, Any]:
    row = {
        "status": DONE,
        "partition": partition,
        "offset": offset,
        "state": None,
        "outcome": outcome,
        "updated": time.time(),
    }
    if replay is not None:
        row["replay"] = replay
    return row


class SimulationStore(Protocol):
    """Where rows live: the Faust table in a worker, a dict in unit tests."""

    def get(self, simulation_id: str) -> dict[str, Any] | None: ...

    def put(self, simulation_id: str, row: dict[str, Any], partition: int) -> Awaitable[Any]:
        """Write the row; awaiting the result waits until it is durable."""
        ...


class TableStore:
    """The simulations Faust table, written from the actor that owns the simulation.

    Must be called from the actor's task while it processes the simulation's event: the
    RocksDB store picks its per-partition database from the current event. Rows are stored
    as compact JSON bytes (the table's value serializer is `raw`), at most `max_bytes` each
    (simapp/kafka/records.py): a row the broker would refuse would crash Faust's producer.
    """

    def __init__(self, table: Any, max_bytes: int = 900_000) -> None:
        self.table = table
        self.max_bytes = max_bytes

    def get(self, simulation_id: str) -> dict[str, Any] | None:
        row = self.table.get(simulation_id)
        if isinstance(row, bytes | bytearray | str):
            try:
                row = json.loads(row)
            except ValueError:
                return None
        return row if isinstance(row, dict) else None

    def put(self, simulation_id: str, row: dict[str, Any], partition: int) -> Awaitable[Any]:
        # What Table.__setitem__ does, keeping the changelog send's future to await.
        data = fit(row, self.max_bytes)
        self.table.data[simulation_id] = data
        return self.table.send_changelog(partition, simulation_id, data)
