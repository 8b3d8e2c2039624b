"""A progress message that comes back after a crash split its writes (simapp/observe/progress.py
`apply_at`): the agent writes the seen entry and the batch row as separate changelog records,
a SIGKILL can keep either one, and the uncommitted message is fetched again. Found by
tests/test_report_e2e.py: a batch stayed at 29 of 30 (the seen entry kept, the row lost), so
its webhook never went."""

from __future__ import annotations

import itertools

import pytest

from simapp.observe.progress import apply_at, seen_state, view


def messages(n: int) -> list[dict]:
    out = []
    for i in range(n):
        out.append({"batch_id": "b", "kind": "consumed", "simulation_id": f"s{i}", "at": 1.0,
                    "batch_size": n, "reason": None, "duration_ms": None})  # fmt: skip
    for i in range(n):
        kind = "failed" if i % 4 == 0 else "completed"
        out.append({"batch_id": "b", "kind": kind, "simulation_id": f"s{i}", "at": 2.0 + i,
                    "batch_size": n, "reason": "r", "duration_ms": 100})  # fmt: skip
    return out


def run(msgs: list[dict], crash_at: int | None = None, keep: str = "") -> dict:
    """Fold messages at offsets 0..; at `crash_at` only the write named in `keep` ("seen",
    "row", "") survives, and every message from there on comes again."""
    row, seen = None, {}
    offset = 0
    while offset < len(msgs):
        msg = msgs[offset]
        key = msg["simulation_id"]
        new_row, new_seen, counted = apply_at(row, seen.get(key), msg, 0, offset)
        if offset == crash_at:
            if keep == "seen" and counted:
                seen[key] = new_seen
            if keep == "row":
                row = new_row
            crash_at = None
            continue  # the same offset again: the message was not committed
        if counted:
            seen[key] = new_seen
        row = new_row
        offset += 1
    return view(row, now=1e9)


@pytest.mark.parametrize(
    ("crash_at", "keep"), list(itertools.product([0, 3, 8, 9, 13, 15], ["seen", "row", ""]))
)
def test_a_message_after_a_split_write_counts_once(crash_at: int, keep: str) -> None:
    msgs = messages(8)
    want = run(msgs)
    assert (want["completed"], want["failed"], want["done"]) == (6, 2, True)
    got = run(msgs, crash_at, keep)
    for field in ("consumed", "completed", "failed", "in_flight", "done", "end_reasons"):
        assert got[field] == want[field], (field, crash_at, keep)


def test_a_final_without_a_consumed_counts_both_also_when_it_comes_back() -> None:
    msgs = [m for m in messages(3) if m["kind"] != "consumed"]
    for crash_at, keep in itertools.product(range(3), ["seen", "row", ""]):
        got = run(msgs, crash_at, keep)
        assert (got["consumed"], got["completed"] + got["failed"]) == (3, 3), (crash_at, keep)


def test_seen_entries_old_and_new() -> None:
    assert seen_state("completed") == ("completed", None, False)
    assert seen_state("failed@12/c") == ("failed", 12, True)
    assert seen_state("completed@7") == ("completed", 7, False)
    assert seen_state(None) == (None, None, False)
    assert seen_state("completed@x") == ("completed", None, False)
