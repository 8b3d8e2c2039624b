"""What a worker forgets: rows of its Faust tables past their retention, a slice at a time.

A week of bursts must not grow a worker: finished batches leave the progress table (and with
them their per-simulation "seen" entries), finished simulations leave the simulations table,
each after its retention period (BATCH_RETENTION, SIMULATION_RETENTION). A `TableSweeper`
walks one table's partitions that this worker owns, at most `per_tick` rows per call, resuming
where it stopped (a RocksDB iterator from the last key), so no timer ever walks all rows in
one go on the event loop; each full pass also tells how many rows the table holds
(`table_rows{table}`). An expired row is deleted locally and a tombstone goes to the table's
changelog partition, so a worker that recovers the partition later does not bring it back.

Deletes need no current event: the changelog partition is the row's own (like the owning
actor's writes, simapp/simulation/checkpoints.py), and RocksDB deletes go to the partition's
database directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

OFFSET_KEY = b"__faust\x00offset__"  # Faust's own key in every RocksDB partition database

Expired = Callable[[Any, Any], bool]  # (key, value) -> delete it?


@dataclass
class TableSweeper:
    """Walks one table `per_tick` rows per `sweep()` call; deletes the rows `expired` says.
    `partition_of(key)` is the key's changelog partition (the memory store keeps none)."""

    table: Any
    expired: Expired
    partition_of: Callable[[Any], int]
    per_tick: int = 500
    # seconds between full passes: a pass finds only what expired since the last one, and
    # walking the rows without a pause cost a fifth of a busy worker's CPU (docs/benchmarks.md)
    rest: float = 0.0
    rows_seen: dict[int, int] = field(default_factory=dict)  # partition -> rows this pass
    rows: int | None = None  # rows in the table at the end of the last full pass
    deleted: int = 0
    _partition: int | None = None
    _cursor: bytes | None = None  # the next key to look at in _partition
    _rest_until: float = 0.0  # time.monotonic() before which the next pass does not start

    def sweep(self, partitions: list[int]) -> int:
        """Look at up to `per_tick` rows of the owned `partitions`; the rows deleted."""
        if not partitions or time.monotonic() < self._rest_until:
            return 0
        if self._partition not in partitions:
            self._partition, self._cursor = min(partitions), None
            self.rows_seen.clear()
        budget, deleted = self.per_tick, 0
        while budget > 0:
            partition = self._partition
            assert partition is not None
            looked, gone, cursor = self._sweep_partition(partition, budget)
            self.rows_seen[partition] = self.rows_seen.get(partition, 0) + looked - gone
            budget -= max(looked, 1)
            deleted += gone
            if cursor is not None:
                self._cursor = cursor
                break
            self._next_partition(partitions)
            if self._rest_until > time.monotonic():
                break  # a full pass ended: rest
        self.deleted += deleted
        return deleted

    def _next_partition(self, partitions: list[int]) -> None:
        current = self._partition if self._partition is not None else -1
        later = [p for p in sorted(partitions) if p > current]
        if later:
            self._partition, self._cursor = later[0], None
            return
        self.rows = sum(self.rows_seen.get(p, 0) for p in partitions)  # a full pass
        self.rows_seen.clear()
        self._rest_until = time.monotonic() + self.rest
        self._partition, self._cursor = min(partitions), None

    def _sweep_partition(self, partition: int, budget: int) -> tuple[int, int, bytes | None]:
        """(rows looked at, rows deleted, the key to resume from or None at the end)."""
        looked = gone = 0
        for raw_key, raw_value in self._items(partition):
            if looked >= budget:
                return looked, gone, raw_key
            looked += 1
            key, value = self._decode(raw_key, raw_value)
            try:
                expired = self.expired(key, value)
            except Exception:  # a row we cannot judge is kept
                log.exception("could not judge row %r of %s", key, self.table.name)
                continue
            if expired:
                self._delete(partition, raw_key, key)
                gone += 1
        return looked, gone, None

    # -- the stores ----------------------------------------------------------------------

    def _items(self, partition: int) -> Iterator[tuple[Any, Any]]:
        store = self.table.data
        dbs = getattr(store, "_dbs", None)
        if dbs is not None:  # RocksDB: raw keys and values, ordered, resumable
            db = dbs.get(partition)
            if db is None:
                return
            items = db.items(from_key=self._cursor) if self._cursor else db.items()
            for raw_key, raw_value in items:
                if raw_key != OFFSET_KEY:
                    yield raw_key, raw_value
            return
        # the memory store (TABLE_STORE=memory://): python keys, no partitions of its own
        keys = sorted(k for k in list(store.data) if self._cursor is None or k >= self._cursor)
        for key in keys:
            if self.partition_of(key) == partition and store.data.get(key) is not None:
                yield key, store.data[key]

    @staticmethod
    def _decode(raw_key: Any, raw_value: Any) -> tuple[Any, Any]:
        """Keys are JSON strings (Faust's key serializer); values JSON (or JSON bytes)."""
        key, value = raw_key, raw_value
        if isinstance(raw_key, bytes):
            key = json.loads(raw_key)
        if isinstance(raw_value, bytes):
            try:
                value = json.loads(raw_value)
            except ValueError:
                pass
        return key, value

    def _delete(self, partition: int, raw_key: Any, key: Any) -> None:
        store = self.table.data
        dbs = getattr(store, "_dbs", None)
        if dbs is not None:
            dbs[partition].delete(raw_key)
            getattr(store, "_key_index", {}).pop(raw_key, None)
        else:
            store.data.pop(raw_key, None)
        self.table.send_changelog(partition, key, None, value_serializer="raw")  # tombstone
