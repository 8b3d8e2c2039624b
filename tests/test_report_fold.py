"""The batch report's fold (simapp/observe/report.py), without a broker: the facts of a results
record, the counts against the summaries they came from, the bounds whatever the batch (many
names, a long batch, many failures), and what a malformed message does (nothing)."""

from __future__ import annotations

import json
import random
from typing import Any

from simapp.observe import report as rp

CRITERIA = ["answers the question", "stays polite", "never promises a refund (fail)"]


def summary(i: int, rng: random.Random, *, criteria: list[str] | None = None) -> dict:
    calls = {"assistant": rng.randint(1, 6), "user": rng.randint(1, 5)}
    by_role = {
        role: {
            "llm_calls": n,
            "prompt_tokens": 100 * n,
            "completion_tokens": 20 * n,
            "total_tokens": 120 * n,
            "cost_usd": 0.001 * n,
        }
        for role, n in calls.items()
    }
    out: dict[str, Any] = {
        "simulation_id": f"sim-{i}",
        "end_reason": rng.choice(["completed", "completed", "max_iterations", "timeout"]),
        "total_iterations": rng.randint(1, 12),
        "duration_ms": rng.randint(200, 9_000),
        "usage": {"llm_calls": sum(calls.values()), "by_role": by_role},
    }
    if criteria:
        verdicts = [
            {"criterion": c, "passed": "(fail)" not in c, "reasoning": "r"} for c in criteria
        ]
        out["evaluation"] = {
            "passed": all(v["passed"] for v in verdicts),
            "criteria": verdicts,
            "model": "judge-m",
        }
        by_role["judge"] = {
            "llm_calls": 1,
            "prompt_tokens": 300,
            "completion_tokens": 50,
            "total_tokens": 350,
            "cost_usd": None,
        }
    return out


def record(i: int, rng: random.Random, *, persona: str, model: str = "m-a", **kw: Any) -> dict:
    s = summary(i, rng, **kw)
    endpoint = "acme" if i % 5 == 0 else None
    return {
        "summary": s,
        "failed": s["end_reason"] == "llm_error",
        "callback_url": "http://rx/cb",
        "batch_callback_url": "http://rx/batch",
        "batch_id": "b1",
        "batch_size": 100,
        "summarized_at": 1_000.0 + i,
        "facts": {
            "persona": persona,
            "scenario_id": f"s-{i % 7}",
            "endpoint": endpoint,
            "models": {"assistant": model, "user": "m-u", "judge": "judge-m"},
        },
    }


def message(rec: dict, offset: int, *, dead: bool = False) -> dict:
    facts = rp.simulation_facts(rec, 3, offset, dead=dead)
    kind = "failed" if rec["failed"] or dead else "completed"
    return {
        "batch_id": "b1",
        "kind": kind,
        "simulation_id": rec["summary"]["simulation_id"],
        "reason": "callback_failed" if dead else rec["summary"]["end_reason"],
        "at": rec["summarized_at"] + 0.5,
        "facts": json.loads(json.dumps(facts)),  # as the progress topic carries it
    }


def folded(messages: list[dict], top_n: int = 30, kept: int = 50) -> dict:
    report = rp.new_report("b1")
    for m in messages:
        rp.fold(report, m, top_n=top_n, kept=kept, started_at=990.0)
    return report


def test_facts_are_compact_and_point_at_the_transcript_of_a_failing_one() -> None:
    rng = random.Random(1)
    rec = record(1, rng, persona="P" * 500, criteria=CRITERIA)
    facts = rp.simulation_facts(rec, 3, 42, dead=False)
    assert len(facts["persona"]) == rp.NAME_CHARS and facts["persona"].startswith("PPP")
    assert facts["judge"]["passed"] is False  # the "(fail)" criterion
    assert facts["ref"] == [3, 42]
    assert facts["batch_callback_url"] == "http://rx/batch"
    assert "conversation_history" not in json.dumps(facts)
    ok = record(2, random.Random(5), persona="Q", criteria=CRITERIA[:2])
    ok["summary"]["end_reason"] = "completed"
    assert "ref" not in rp.simulation_facts(ok, 3, 43, dead=False)
    assert rp.simulation_facts(ok, 3, 43, dead=True)["ref"] == [3, 43]  # dead-lettered
    assert len(json.dumps(facts)) < 1500


def test_counts_match_the_summaries_per_persona_criterion_role_and_model() -> None:
    rng = random.Random(7)
    personas = ["Ann", "Bob", "<b>Eve</b>"]
    records = []
    for i in range(200):
        crit = rng.sample(CRITERIA, rng.randint(1, 3)) if i % 4 else None
        model = "m-a" if i % 3 else "m-b"
        records.append(record(i, rng, persona=personas[i % 3], model=model, criteria=crit))
    records[10]["summary"]["end_reason"] = "llm_error"
    records[10]["failed"] = True
    report = folded([message(r, i) for i, r in enumerate(records)])
    view = rp.report_view(report)

    assert view["simulations"] == 200
    expect_reasons: dict[str, int] = {}
    for r in records:
        reason = r["summary"]["end_reason"]
        expect_reasons[reason] = expect_reasons.get(reason, 0) + 1
    assert view["end_reasons"] == expect_reasons
    by_persona = {row["name"]: row for row in view["personas"]}
    for name in personas:
        mine = [r for r in records if r["facts"]["persona"] == name]
        judged = [r for r in mine if r["summary"].get("evaluation")]
        assert by_persona[name]["simulations"] == len(mine)
        assert by_persona[name]["judged"] == len(judged)
        assert by_persona[name]["passed"] == sum(
            r["summary"]["evaluation"]["passed"] for r in judged
        )
    for row in view["criteria"]:
        verdicts = [
            v
            for r in records
            for v in (r["summary"].get("evaluation") or {}).get("criteria", [])
            if v["criterion"] == row["criterion"]
        ]
        assert (row["judged"], row["passed"]) == (len(verdicts), sum(v["passed"] for v in verdicts))
    for role in ("assistant", "user", "judge"):
        usages = [r["summary"]["usage"]["by_role"].get(role) for r in records]
        usages = [u for u in usages if u]
        got = view["usage"]["by_role"][role]
        assert got["llm_calls"] == sum(u["llm_calls"] for u in usages)
        assert got["total_tokens"] == sum(u["total_tokens"] for u in usages)
        assert abs(got["cost_usd"] - sum(u["cost_usd"] or 0 for u in usages)) < 1e-9
    endpoint_runs = [r for r in records if r["facts"]["endpoint"]]
    assert view["endpoints"][0]["endpoint"] == "acme"
    assert view["endpoints"][0]["simulations"] == len(endpoint_runs)
    assert sum(m["simulations"] for m in view["models"]) == 200 - len(endpoint_runs)
    assert sum(view["turns"]["counts"]) == sum(view["duration"]["counts"]) == 200
    total_calls = sum(
        u["llm_calls"] for r in records for u in r["summary"]["usage"]["by_role"].values()
    )
    assert view["usage"]["total"]["llm_calls"] == total_calls
    endpoint_calls = sum(
        r["summary"]["usage"]["by_role"]["assistant"]["llm_calls"] for r in endpoint_runs
    )
    series = report["timeline"]  # the view rounds rates to 3 decimals; the row keeps 6
    assert abs(sum(series["calls"]) - (total_calls - endpoint_calls)) < 0.001
    assert abs(sum(series["endpoint"]) - endpoint_calls) < 0.001
    assert sum(series["done"]) == 200
    # failing: judged failing, timed out, or failed; the newest first, with the transcript's place
    failing = [
        r
        for r in records
        if r["failed"]
        or r["summary"]["end_reason"] == "timeout"
        or (r["summary"].get("evaluation") or {}).get("passed") is False
    ]
    assert view["failing_total"] == len(failing)
    assert [f["id"] for f in view["failing"]] == [
        r["summary"]["simulation_id"] for r in reversed(failing)
    ][:50]
    assert all(f["ref"][0] == 3 for f in view["failing"])
    lines = "\n".join(rp.report_lines(view))
    assert "<b>Eve</b>" in lines and "judge:" in lines


def test_the_row_stays_small_with_many_names_and_many_failures() -> None:
    """10,000 simulations, each with its own persona, model, endpoint and criteria: the named
    entries stop at REPORT_TOP_N, the rest is summed under other, nothing is lost."""
    rng = random.Random(3)
    sizes = []
    report = rp.new_report("b1")
    for i in range(10_000):
        rec = record(i, rng, persona=f"persona {i} " + "x" * 150, model=f"model-{i}",
                     criteria=[f"criterion {i} (fail)", f"criterion {i + 1}"])  # fmt: skip
        rec["facts"]["endpoint"] = f"endpoint-{i}" if i % 2 else None
        rp.fold(report, message(rec, i), top_n=30, kept=50, started_at=990.0)
        if i + 1 in (1_000, 10_000):
            sizes.append(len(json.dumps(report)))
    assert sizes[1] < 40_000 and sizes[1] < sizes[0] * 1.2, sizes
    view = rp.report_view(report)
    assert len([p for p in view["personas"] if not p["other"]]) == 30
    assert sum(p["simulations"] for p in view["personas"]) == 10_000
    assert (
        sum(m["simulations"] for m in view["models"])
        + sum(e["simulations"] for e in view["endpoints"])
        == 10_000
    )
    assert len(view["criteria"]) == 31 and view["criteria"][-1]["other"]
    assert sum(c["judged"] for c in view["criteria"]) == 20_000
    assert len(view["failing"]) == 50 and view["failing_total"] == 10_000
    assert view["usage"]["by_model"][-1]["other"]


def test_the_time_series_coarsens_and_keeps_every_completion_and_call() -> None:
    report = rp.new_report("b1")
    calls = 0
    for i in range(3_000):  # one finish every 12 s: a 10-hour batch
        at = 1_000.0 + 12 * i
        facts = {"persona": "p", "models": {"assistant": "m"}, "end_reason": "completed",
                 "iterations": 3, "duration_ms": 30_000, "end_at": at,
                 "usage": {"assistant": [4, 1, 1, None], "user": [3, 1, 1, None]}}  # fmt: skip
        calls += 7
        rp.fold(
            report,
            {"kind": "completed", "simulation_id": f"s{i}", "at": at, "facts": facts},
            top_n=5,
            kept=5,
            started_at=1_000.0 - 31,
        )
    series = report["timeline"]
    assert len(series["done"]) <= rp.TIMELINE_POINTS and len(series["calls"]) <= rp.TIMELINE_POINTS
    assert series["step"] >= 36_000 / rp.TIMELINE_POINTS
    assert round(sum(series["done"])) == 3_000
    assert abs(sum(series["calls"]) - calls) < 0.01
    view = rp.report_view(report, budget=rp.budget_of(None, 10, 2))
    assert view["llm_rate"]["budget_rps"] == 20.0 and "2 worker" in view["llm_rate"]["budget"]
    assert 0.5 < view["llm_rate"]["achieved_rps"] < 0.6  # 7 calls per 12 s


def test_messages_without_facts_or_with_garbage_count_unattributed() -> None:
    report = rp.new_report("b1")
    rp.fold(report, {"kind": "failed", "simulation_id": "s1", "reason": "invalid_field",
                     "at": 5.0, "facts": None}, top_n=3, kept=3)  # fmt: skip
    for garbage in ({"usage": "x"}, {"judge": {"criteria": 5}}, {"iterations": "many"}):
        rp.fold(report, {"kind": "completed", "simulation_id": "s2", "at": 6.0,
                         "facts": garbage}, top_n=3, kept=3)  # fmt: skip
    view = rp.report_view(report)
    assert view["unattributed"] + view["simulations"] == 4
    assert view["failing"][-1] == {"id": "s1", "reason": "invalid_field", "at": 5.0, "dead": True}


def test_the_webhook_is_due_once_the_batch_finished_and_the_first_url_wins() -> None:
    rng = random.Random(2)
    msgs = []
    for i in range(3):
        rec = record(i, rng, persona="p")
        if i == 2:
            rec["batch_callback_url"] = "http://other/batch"
        msgs.append(message(rec, i))
    report = folded(msgs)
    assert report["webhook"] == {"url": "http://rx/batch", "conflicts": 1, "sent_at": None}
    row = {"total_known": True, "total": 3, "completed": 2, "failed": 0}
    assert not rp.webhook_due(report, row)
    row["failed"] = 1
    assert rp.webhook_due(report, row)
    view = rp.report_view(report)
    rec = rp.batch_record(report, view, 123.0)
    assert rec["kind"] == "batch" and rec["batch"] == "b1" and "batch_id" not in rec
    assert rec["callback_url"] == "http://rx/batch" and rec["summary"]["simulations"] == 3
    report["webhook"]["sent_at"] = 123.0
    assert not rp.webhook_due(report, row)
    assert not rp.webhook_due(folded([]), row)  # no batch_callback_url: no webhook
