"""The batch export (simapp/observe/export.py): every summary of the batch once, written as it is
read (the reader is consumed lazily), and flat memory at 10,000 summaries of 5 KB each (50 MB
read, a few MB held). The real path (the results topic of a burst, the command from a fresh
directory) is tests/test_report_e2e.py."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import tracemalloc
from collections.abc import AsyncIterator

from simapp.observe.export import CSV_COLUMNS, batch_rows, write_rows

TRANSCRIPT = [{"role": "user", "content": "x" * 2400}, {"role": "assistant", "content": "y" * 2400}]


def value(sim: str, batch: str = "b1", **summary: object) -> bytes:
    s = {
        "simulation_id": sim,
        "batch_id": batch,
        "end_reason": "completed",
        "total_iterations": 2,
        "duration_ms": 100,
        "conversation_history": TRANSCRIPT,
        "usage": {"llm_calls": 3, "total_tokens": 30, "by_role": {"user": {"llm_calls": 1}}},
        **summary,
    }
    facts = {"persona": "Ann", "models": {"assistant": "m1"}, "scenario_id": "s-1"}
    record = {"summary": s, "batch_id": batch, "callback_url": "http://x", "facts": facts}
    return json.dumps(record, separators=(",", ":")).encode()


class Source:
    """An async stream of results-topic values that counts what it handed out."""

    def __init__(self, values: list[bytes] | None = None, n: int = 0) -> None:
        self.values, self.n, self.taken = values, n, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.values is not None:
            for v in self.values:
                self.taken += 1
                yield v
            return
        for i in range(self.n):  # made on the fly: the source holds nothing
            self.taken += 1
            yield value(f"sim-{i}") if i % 3 else value(f"other-{i}", batch="b2")
            if i % 1000 == 0:
                await asyncio.sleep(0)


class CountingOut(io.StringIO):
    """Remembers, at each write, how many values the source had handed out; keeps nothing."""

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.source, self.taken_at_write, self.chars = source, [], 0

    def write(self, s: str) -> int:
        self.taken_at_write.append(self.source.taken)
        self.chars += len(s)
        return len(s)


def export(values: list[bytes], fmt: str) -> str:
    out = io.StringIO()
    asyncio.run(write_rows(batch_rows(Source(values), "b1"), fmt, out))
    return out.getvalue()


def test_each_summary_of_the_batch_once_in_topic_order() -> None:
    values = [
        value("s1"),
        value("s2", batch="b10"),  # another batch whose id starts the same
        b"not json",
        json.dumps({"kind": "batch", "batch": "b1", "summary": {"batch_id": "b1"}}).encode(),
        value("s3", end_reason="timeout"),
        value("s1", end_reason="max_iterations"),  # a second summary after a crash
        b"",
    ]
    rows = [json.loads(line) for line in export(values, "jsonl").splitlines()]
    assert [(r["simulation_id"], r["end_reason"]) for r in rows] == [
        ("s1", "completed"),
        ("s3", "timeout"),
    ]
    assert rows[0]["facts"]["persona"] == "Ann" and rows[0]["conversation_history"]
    assert json.loads(export(values, "json")) == rows
    assert json.loads(export([], "json")) == []


def test_csv_has_fixed_columns_and_no_formula_cells() -> None:
    hostile = value(
        "s1",
        evaluation={"passed": False, "criteria": [{"criterion": "=HYPERLINK(1)", "passed": False}]},
    )
    hostile = hostile.replace(b'"persona":"Ann"', b'"persona":"@SUM(A1) <b>x</b>"')
    rows = list(csv.DictReader(io.StringIO(export([hostile], "csv"))))
    assert list(rows[0]) == CSV_COLUMNS
    assert rows[0]["persona"] == "'@SUM(A1) <b>x</b>"
    assert rows[0]["judge_failed_criteria"] == "'=HYPERLINK(1)"
    assert rows[0]["messages"] == "2" and rows[0]["user_calls"] == "1"


def test_the_reader_is_consumed_lazily() -> None:
    """The first summary is written when the source has handed out only its first values,
    not after reading the whole topic."""
    source = Source(n=3_000)
    out = CountingOut(source)
    count = asyncio.run(write_rows(batch_rows(source, "b1"), "jsonl", out))
    assert count == 2_000
    assert out.taken_at_write[0] <= 2  # the first row, written after the second value
    assert out.taken_at_write[len(out.taken_at_write) // 2] < 2_000


def test_memory_stays_flat_at_10000_summaries() -> None:
    """10,000 summaries of about 5 KB (and 5,000 of another batch): 75 MB read; the export
    holds the digests of the ids it wrote and one record at a time."""
    source = Source(n=15_000)
    out = CountingOut(source)
    tracemalloc.start()
    try:
        count = asyncio.run(write_rows(batch_rows(source, "b1"), "jsonl", out))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 10_000 and out.chars > 10_000 * 4_800
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MB"
