"""The budget, not a guessed concurrency, limits a burst (simapp/limits/concurrency.py),
through the real path: a worker, Tansu, the mock LLM over HTTP, the sink.

Counts, not times: how many calls the provider had in flight at once, how many
conversations ended in `timeout`, what the worker's gauges say.
"""

from __future__ import annotations

import pytest

from simapp.embedded.session import parse_prometheus
from simapp.embedded.stack import http_json, http_text
from tests.helpers import events_for, send_events, wait_until

pytestmark = pytest.mark.slow


def delivered(stack, ids: set[str]) -> list[dict]:
    return [i for i in stack.sink_items() if i["simulation_id"] in ids]


def test_slow_calls_get_enough_conversations_with_default_settings(stack, ns, workers):
    """1.5 s calls, a 20/s budget: about 20 x 1.5 = 30 calls must be in flight to use it. The
    seed's default of 20 conversations kept at most 20 in flight (13 calls/s); the worker now
    sizes itself from the measured latency."""
    http_json(f"{stack.mock_url}/admin/config", {"latency_ms": 1500, "latency_jitter_ms": 0})
    http_json(f"{stack.mock_url}/admin/reset", {})
    worker = workers.start(concurrent_conversations=None, llm_rate_limit_rps=20)
    events = events_for(stack, 80, max_iterations=2, seed=3)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    assert wait_until(lambda: len(delivered(stack, ids)) >= len(ids), 240)

    mock = stack.mock_stats()
    assert mock["max_in_flight"] >= 25, mock  # the old default held it at 20
    assert mock["max_1s_window"] <= 20 and mock["rate_limited"] == 0, mock
    assert not [i for i in delivered(stack, ids) if i["end_reason"] == "timeout"]
    gauges = parse_prometheus(http_text(f"http://127.0.0.1:{worker.port}/metrics"))
    assert 25 <= gauges["conversations_target"] <= 60, gauges["conversations_target"]
    assert gauges["conversation_call_cycle_seconds"] >= 1.4


def test_a_small_budget_starts_few_conversations_and_none_times_out(stack, ns, workers):
    """A ceiling of 200 (a user who raised CONCURRENT_CONVERSATIONS by hand) and a 10/s budget:
    started all at once, 30 conversations of 6 calls share 9.5 calls/s and each needs about
    19 s, past an 8 s CONVERSATION_TIMEOUT. Sized from the budget, few run at a time, each at
    full speed, and the others wait at the door, where no timeout runs."""
    worker = workers.start(
        concurrent_conversations=200, llm_rate_limit_rps=10, conversation_timeout=8
    )
    events = events_for(stack, 30, max_iterations=3, seed=5)
    for event in events:  # 3 assistant turns each: 5-6 calls
        event["max_iterations"] = event["min_iterations"] = 3
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    url = f"http://127.0.0.1:{worker.port}/metrics"
    seen_waiting = []

    def done() -> bool:
        seen_waiting.append(parse_prometheus(http_text(url)).get("conversations_waiting", 0))
        return len(delivered(stack, ids)) >= len(ids)

    assert wait_until(done, 180)
    items = delivered(stack, ids)
    assert [i["end_reason"] for i in items if i["end_reason"] == "timeout"] == []
    assert max(seen_waiting) > 0  # the others waited at the door, not at the budget
    gauges = parse_prometheus(http_text(url))
    assert gauges["conversations_target"] <= 5


def test_events_waiting_at_the_door_go_back_on_a_rebalance(stack, ns, workers):
    """A second worker joins while most of a burst waits at the first one's door (a 6/s
    budget, few slots). Faust revokes every partition; the waiting events were never started,
    so they are handed back and each runs once, on whichever worker owns it next: every
    simulation delivered exactly once, none timed out."""
    settings = {
        "concurrent_conversations": 200,
        "llm_rate_limit_rps": 6,
        "conversation_timeout": 20,
    }
    workers.start(**settings)
    events = events_for(stack, 60, max_iterations=2, seed=11)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    assert wait_until(lambda: len(delivered(stack, ids)) >= 3, 120)
    workers.start(**settings)
    assert wait_until(lambda: {i["simulation_id"] for i in delivered(stack, ids)} == ids, 240)
    items = delivered(stack, ids)
    repeats = len(items) - len({i["simulation_id"] for i in items})
    assert repeats == 0, f"{repeats} simulations delivered twice"
    assert not [i for i in items if i["end_reason"] == "timeout"]
