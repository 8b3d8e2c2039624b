"""End-to-end pipeline through the real path: Tansu, LiteLLM over HTTP to the mock, real POSTs."""

from __future__ import annotations

import json

import pytest

from simapp.embedded.stack import http_json
from simapp.simulation.schemas import Summary
from tests.helpers import events_for, read_topic, send_events, send_raw, wait_until

pytestmark = pytest.mark.slow


def _check_roles(history: list[dict]) -> None:
    assert history[0]["role"] == "system"
    roles = [m["role"] for m in history[1:]]
    assert roles[0] == "user"
    for a, b in zip(roles, roles[1:], strict=False):
        assert a != b, f"roles do not alternate: {roles}"


def test_events_become_summaries(stack, ns, workers):
    workers.start()
    events = events_for(stack, 40, max_iterations=6, seed=7)
    by_id = {e["id"]: e for e in events}
    assert send_events(stack, ns, events) == 40

    got = wait_until(
        lambda: len({i["simulation_id"] for i in stack.sink_items()} & set(by_id)) == 40, 120
    )
    assert got, "not every summary arrived"
    items = [i for i in stack.sink_items() if i["simulation_id"] in by_id]
    reasons = set()
    for item in items:
        summary = Summary.model_validate(item)  # the seed's output schema (+ usage)
        event = by_id[summary.simulation_id]
        history = [m.model_dump() for m in summary.conversation_history]
        _check_roles(history)
        assert history[1]["content"] == event["intent"]
        assert 1 <= summary.total_iterations <= event["max_iterations"]
        assert summary.total_iterations == sum(1 for m in history if m["role"] == "assistant")
        assert all("<<END>>" not in m["content"] for m in history)
        if summary.end_reason == "max_iterations":
            assert summary.total_iterations == event["max_iterations"]
            assert history[-1]["role"] == "assistant"  # no user turn after the last assistant turn
        else:
            assert summary.end_reason == "completed"
            assert summary.total_iterations <= event["max_iterations"]
        assert summary.usage.llm_calls >= 2 * summary.total_iterations - 1
        assert summary.usage.total_tokens > 0
        assert list(item)[:5] == [
            "simulation_id",
            "conversation_history",
            "total_iterations",
            "end_reason",
            "duration_ms",
        ]
        reasons.add(summary.end_reason)
    assert reasons == {"completed", "max_iterations"}  # the seed 7 batch has both
    # the durable record: every summary is also on the results topic
    results = read_topic(stack.bootstrap, ns.overrides()["results_topic"], 40)
    assert {r["summary"]["simulation_id"] for r in results} >= set(by_id)
    # Idempotency-Key on every delivery
    one = http_json(f"{stack.sink_url}/received/{events[0]['id']}")
    assert one["deliveries"][0]["headers"]["Idempotency-Key"] == events[0]["id"]


def test_timeout_delivers_partial_history(stack, ns, workers):
    http_json(f"{stack.mock_url}/admin/config", {"latency_ms": 400, "latency_jitter_ms": 0})
    workers.start(conversation_timeout=1.0)
    events = events_for(stack, 5, max_iterations=10)
    events = [{**e, "max_iterations": 10} for e in events]
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    assert wait_until(lambda: len({i["simulation_id"] for i in stack.sink_items()} & ids) == 5, 90)
    for item in (i for i in stack.sink_items() if i["simulation_id"] in ids):
        assert item["end_reason"] in {"timeout", "completed"}
        if item["end_reason"] == "timeout":
            history = item["conversation_history"]
            assert history[0]["role"] == "system" and history[1]["role"] == "user"
            assert item["total_iterations"] < 10
            assert item["duration_ms"] >= 900
    assert any(
        i["end_reason"] == "timeout" for i in stack.sink_items() if i["simulation_id"] in ids
    )


def test_malformed_messages_are_skipped_and_good_ones_delivered(stack, ns, workers):
    worker = workers.start()
    good = events_for(stack, 4)
    bad_missing = {k: v for k, v in events_for(stack, 1)[0].items() if k != "persona"}
    records = [
        (b"bad-1", b"this is not json {"),
        (bad_missing["id"].encode(), json.dumps(bad_missing).encode()),
    ] + [(e["id"].encode(), json.dumps(e).encode()) for e in good]
    send_raw(stack, ns, records)
    ids = {e["id"] for e in good}
    assert wait_until(lambda: len({i["simulation_id"] for i in stack.sink_items()} & ids) == 4, 90)
    dead = read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], 2)
    by_reason = {d["reason"]: d for d in dead}
    assert set(by_reason) == {"not_json", "invalid_field"}
    assert "persona" in by_reason["invalid_field"]["detail"]
    assert by_reason["not_json"]["original"]["value"] == "this is not json {"
    assert by_reason["invalid_field"]["simulation_id"] == bad_missing["id"]
    assert worker.alive()
    log = worker.log_path.read_text()
    assert '"outcome": "rejected"' in log and '"reason": "not_json"' in log
