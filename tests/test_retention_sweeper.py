"""The retention sweep rests between full passes (pure logic, the memory store's shape): a
pass walking every row without a pause cost 22 % of a busy worker's CPU (py-spy, make bench;
docs/benchmarks.md), while a row only needs to be found within its retention period."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from simapp.worker import retention
from simapp.worker.retention import TableSweeper


class Table:
    name = "t"

    def __init__(self, rows: dict[str, Any]) -> None:
        self.data = SimpleNamespace(data=dict(rows))
        self.tombstones: list[Any] = []

    def send_changelog(self, partition: int, key: Any, value: Any, **_: Any) -> None:
        self.tombstones.append(key)


def test_a_full_pass_then_a_rest_then_the_next_pass(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(retention.time, "monotonic", lambda: now[0])
    table = Table({f"k{i:02d}": {"old": i < 3} for i in range(10)})
    looked: list[str] = []

    def expired(key: Any, value: Any) -> bool:
        looked.append(key)
        return value["old"]

    sweeper = TableSweeper(table, expired, lambda key: 0, per_tick=4, rest=30.0)
    assert sweeper.sweep([0]) == 3  # k00-k03: three old ones
    assert sweeper.sweep([0]) == 0  # k04-k07
    sweeper.sweep([0])  # k08-k09: the pass ends, and so does this call
    assert len(looked) == 10 and sweeper.rows == 7
    table.data.data["k99"] = {"old": True}
    now[0] += 29.0
    assert sweeper.sweep([0]) == 0 and len(looked) == 10  # resting: nothing looked at
    now[0] += 1.0
    assert sweeper.sweep([0]) == 0 and len(looked) == 14  # the next pass starts
    assert sweeper.sweep([0]) == 1 and table.tombstones[-1] == "k99"  # k07-k09, k99
    assert sweeper._rest_until == now[0] + 30.0  # and the next rest


def test_without_a_rest_the_sweep_goes_on_at_once(monkeypatch) -> None:
    monkeypatch.setattr(retention.time, "monotonic", lambda: 5.0)
    table = Table({f"k{i}": {} for i in range(3)})
    calls: list[str] = []
    sweeper = TableSweeper(table, lambda k, v: calls.append(k) or False, lambda key: 0, 2)
    for _ in range(3):
        sweeper.sweep([0])
    assert len(calls) >= 5  # k0 k1 | k2 (pass ends) k0 | k1 k2 ...
