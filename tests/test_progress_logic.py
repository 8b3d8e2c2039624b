"""Unit tests of the pure progress arithmetic (simapp/observe/progress.py): no broker, no Faust."""

from __future__ import annotations

import math
import random

import pytest

from simapp.observe import progress as p


def msg(kind: str, sim: str, at: float, **kw: object) -> dict:
    base = {
        "batch_id": "b1",
        "kind": kind,
        "simulation_id": sim,
        "reason": None,
        "batch_size": None,
        "duration_ms": None,
        "at": at,
    }
    base.update(kw)
    return p.parse_message(base)


def fold(messages: list[dict], row: dict | None = None, seen: dict | None = None) -> dict:
    seen = {} if seen is None else seen
    for m in messages:
        row, state, _ = p.apply_once(row, seen.get(m["simulation_id"]), m, partition=3)
        seen[m["simulation_id"]] = state
    assert row is not None
    return row


def test_parse_message_rejects_garbage_and_normalises() -> None:
    bad_messages = (
        None,
        [],
        {"kind": "consumed"},
        {"batch_id": "b", "kind": "x", "simulation_id": "s"},
        {"batch_id": "b", "kind": "consumed"},
        {"batch_id": 3, "kind": "consumed", "simulation_id": "s"},
    )
    for bad in bad_messages:
        with pytest.raises(p.BadMessage):
            p.parse_message(bad)
    m = p.parse_message(
        {
            "batch_id": "b",
            "kind": "failed",
            "simulation_id": "s",
            "at": "soon",
            "batch_size": -1,
            "duration_ms": True,
            "reason": 5,
        },
        now=42.0,
    )
    assert m["at"] == 42.0 and m["batch_size"] is None and m["duration_ms"] is None
    assert m["reason"] == "5"


def test_counts_total_and_in_flight() -> None:
    row = fold(
        [
            msg("consumed", "s1", 100.0, batch_size=4),
            msg("consumed", "s2", 100.5, batch_size=4),
            msg("consumed", "s3", 101.0, batch_size=4),
            msg("completed", "s1", 102.0, reason="satisfied", batch_size=4, duration_ms=2000),
            msg("failed", "s2", 103.0, reason="llm_error", batch_size=4, duration_ms=3000),
        ]
    )
    assert (row["consumed"], row["completed"], row["failed"], row["in_flight"]) == (3, 1, 1, 1)
    assert row["total"] == 4 and row["total_known"] is True
    assert row["end_reasons"] == {"satisfied": 1}
    assert row["failed_by_reason"] == {"llm_error": 1}
    assert row["started_at"] == 100.0 and row["updated_at"] == 103.0
    assert row["partition"] == 3 and row["finished_at"] is None
    v = p.view(row, now=103.0)
    assert v["remaining"] == 2 and v["percent"] == 50.0 and not v["done"]
    assert v["eta_seconds"] is not None and v["eta_seconds"] > 0


def test_total_unknown_is_consumed_count() -> None:
    row = fold([msg("consumed", "a", 1.0), msg("consumed", "b", 2.0), msg("completed", "a", 3.0)])
    v = p.view(row, now=3.0)
    assert v["total"] == 2 and v["total_known"] is False and v["remaining"] == 1
    assert not v["done"]  # without a batch size we cannot know it is finished


def test_redelivered_messages_do_not_double_count() -> None:
    first = [msg("consumed", f"s{i}", float(i), batch_size=5) for i in range(5)]
    finish = [
        msg("completed", f"s{i}", 10.0 + i, reason="satisfied", batch_size=5, duration_ms=1000)
        for i in range(5)
    ]
    seen: dict = {}
    row = fold(first + finish[:3], seen=seen)
    # crash: the last events are redelivered and re-processed, progress messages repeat
    row = fold(first[2:] + finish[2:] + finish, row=row, seen=seen)
    assert (row["consumed"], row["completed"], row["failed"]) == (5, 5, 0)
    assert row["duplicates"] == 3 + 1 + 5
    v = p.view(row, now=100.0)
    assert v["remaining"] == 0 and v["done"] and v["percent"] == 100.0 and v["eta_seconds"] == 0.0
    assert row["finished_at"] == 14.0


def test_finish_without_consumed_counts_consumed_and_first_final_wins() -> None:
    seen: dict = {}
    row = fold([msg("failed", "s1", 5.0, reason="callback_failed", batch_size=2)], seen=seen)
    assert (row["consumed"], row["failed"], row["in_flight"]) == (1, 1, 0)
    row = fold([msg("completed", "s1", 6.0, reason="satisfied")], row=row, seen=seen)
    assert (row["completed"], row["failed"]) == (0, 1)
    assert seen["s1"] == "failed"


def test_counts_never_exceed_total_under_random_duplicates() -> None:
    rng = random.Random(7)
    n = 50
    stream = []
    for i in range(n):
        stream.append(msg("consumed", f"s{i}", float(i), batch_size=n))
        stream.append(
            msg(
                "completed",
                f"s{i}",
                float(i) + 5,
                reason="satisfied",
                batch_size=n,
                duration_ms=500,
            )
        )
    noisy = stream + rng.sample(stream, 60) + rng.sample(stream, 40)
    seen: dict = {}
    row = None
    for m in noisy:
        row, seen[m["simulation_id"]], _ = p.apply_once(row, seen.get(m["simulation_id"]), m)
        assert row["completed"] + row["failed"] <= n
        assert row["in_flight"] >= 0
    assert row is not None and row["completed"] == n and row["total"] == n


def test_rate_steady_stream_converges_to_true_rate() -> None:
    row = None
    seen: dict = {}
    # 5 finishes per second for 5 minutes, batch started at t=0
    for i in range(1500):
        t = i * 0.2
        row = fold(
            [
                msg("consumed", f"s{i}", t, batch_size=3000),
                msg("completed", f"s{i}", t, duration_ms=800),
            ],
            row=row,
            seen=seen,
        )
    assert row is not None
    v = p.view(row, now=299.8)
    assert v["rate"] == pytest.approx(5.0, rel=0.05)
    assert v["eta_seconds"] == pytest.approx(1500 / 5.0, rel=0.05)


def test_rate_early_is_finishes_over_elapsed_not_biased_low() -> None:
    row = fold([msg("consumed", f"s{i}", 0.0, batch_size=100) for i in range(20)])
    row = fold(
        [msg("completed", f"s{i}", 1.0 + i * 0.5) for i in range(10)],
        row=row,
        seen={f"s{i}": "consumed" for i in range(20)},
    )
    # 10 finishes in the first 5.5 s: about 10/5.5 = 1.8/s (a plain EWMA would say ~0.15)
    assert p.rate_at(row, 5.5) == pytest.approx(10 / 5.5, rel=0.1)


def test_burst_does_not_explode_rate() -> None:
    seen: dict = {}
    row = fold([msg("consumed", f"s{i}", 0.0, batch_size=1000) for i in range(200)], seen=seen)
    # 200 simultaneous finishes (same timestamp) 30 s in
    row = fold([msg("completed", f"s{i}", 30.0) for i in range(200)], row=row, seen=seen)
    rate = p.rate_at(row, 30.0)
    # an EWMA weighs the burst fully against a window that is partly decayed: 200 / 23.6 s
    window = p.RATE_TAU * (1 - math.exp(-30.0 / p.RATE_TAU))
    assert math.isfinite(rate) and rate == pytest.approx(200 / window)
    # and a burst right at the start is measured over at least MIN_WINDOW
    seen2: dict = {}
    row2 = fold([msg("completed", f"x{i}", 100.0, batch_size=1000) for i in range(50)], seen=seen2)
    assert p.rate_at(row2, 100.0) == pytest.approx(50 / p.MIN_WINDOW, rel=0.02)


def test_rate_decays_when_stalled_and_eta_grows() -> None:
    seen: dict = {}
    msgs = [msg("consumed", f"s{i}", 0.0, batch_size=100) for i in range(100)]
    msgs += [msg("completed", f"s{i}", 1.0 + i) for i in range(50)]
    row = fold(msgs, seen=seen)
    v1 = p.view(row, now=51.0)
    v2 = p.view(row, now=171.0)
    assert v2["rate"] < v1["rate"] * 0.5
    assert v2["eta_seconds"] > v1["eta_seconds"]


def test_out_of_order_timestamps_are_harmless() -> None:
    seen: dict = {}
    row = fold([msg("consumed", f"s{i}", 0.0, batch_size=10) for i in range(10)], seen=seen)
    row = fold(
        [msg("completed", "s0", 10.0), msg("completed", "s1", 9.0), msg("completed", "s2", 11.0)],
        row=row,
        seen=seen,
    )
    assert row["last_finish_at"] == 11.0
    # the late s1 (t=9 after t=10) is added undecayed; s2 then decays both by 1 s
    assert row["rate_weight"] == pytest.approx(2 * math.exp(-1 / p.RATE_TAU) + 1, rel=1e-9)


def test_zero_rate_gives_no_eta() -> None:
    row = fold([msg("consumed", "s1", 0.0, batch_size=3)])
    v = p.view(row, now=10.0)
    assert v["rate"] == 0.0 and v["eta_seconds"] is None and v["remaining"] == 3


def test_finished_batch_keeps_its_final_rate() -> None:
    seen: dict = {}
    row = fold([msg("consumed", f"s{i}", 0.0, batch_size=4) for i in range(4)], seen=seen)
    row = fold([msg("completed", f"s{i}", 2.0 + i) for i in range(4)], row=row, seen=seen)
    assert p.view(row, now=5.0)["rate"] == p.view(row, now=5000.0)["rate"] > 0
    v = p.view(row, now=5000.0)
    assert v["elapsed_seconds"] == 5.0 and v["throughput"] == pytest.approx(0.8)


def test_histogram_quantiles() -> None:
    assert p.quantile_ms([0] * (len(p.DURATION_BUCKETS_MS) + 1), 0.5) is None
    hist = [0] * (len(p.DURATION_BUCKETS_MS) + 1)
    for d in [150] * 50 + [900] * 45 + [9000] * 5:
        hist[p.bucket_index(d)] += 1
    p50 = p.quantile_ms(hist, 0.5)
    p95 = p.quantile_ms(hist, 0.95)
    assert p50 is not None and 100 <= p50 <= 200
    assert p95 is not None and 750 <= p95 <= 1000
    assert p.quantile_ms(hist, 0.99) is not None and 7500 <= p.quantile_ms(hist, 0.99) <= 10_000
    top = [0] * (len(p.DURATION_BUCKETS_MS) + 1)
    top[-1] = 3
    assert p.quantile_ms(top, 0.5) == p.DURATION_BUCKETS_MS[-1]
    assert p.bucket_index(100) == 0 and p.bucket_index(101) == 1


def test_view_reports_p50_p95_seconds() -> None:
    seen: dict = {}
    row = fold(
        [
            msg("completed", f"s{i}", float(i), batch_size=20, duration_ms=400 + 10 * i)
            for i in range(20)
        ],
        seen=seen,
    )
    v = p.view(row, now=20.0)
    assert 0.3 <= v["duration_p50_s"] <= 0.75 and v["duration_p95_s"] <= 0.75


def test_merge_views_keeps_one_per_batch_most_advanced() -> None:
    a = {"batch_id": "x", "completed": 3, "failed": 0, "updated_at": 5.0, "started_at": 1.0}
    b = {"batch_id": "x", "completed": 4, "failed": 0, "updated_at": 4.0, "started_at": 1.0}
    c = {"batch_id": "y", "completed": 1, "failed": 0, "updated_at": 1.0, "started_at": 0.5}
    merged = p.merge_views([a, c, b])
    assert [v["batch_id"] for v in merged] == ["y", "x"]
    assert merged[1]["completed"] == 4


def test_rows_are_json_roundtrippable() -> None:
    import json

    row = fold([msg("completed", "s1", 1.0, reason="satisfied", batch_size=2, duration_ms=10)])
    again = json.loads(json.dumps(row))
    assert p.view(again, now=2.0) == p.view(row, now=2.0)
    # apply never mutates its input
    before = json.dumps(again, sort_keys=True)
    p.apply(again, msg("consumed", "s2", 2.0))
    assert json.dumps(again, sort_keys=True) == before
