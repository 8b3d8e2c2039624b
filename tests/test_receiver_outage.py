"""A receiver restart must not dead-letter a burst (issue 19's first witness), through the
real path: a worker, Tansu, the mock LLM over HTTP, the sink answering 503 for 60 s.

Summaries wait in the outbox (simapp/delivery/outbox.py) behind the receiver's breaker and are
delivered when it is back; conversations go on meanwhile, because a summary holds no
conversation slot; the progress views say how many summaries wait for which receiver.
"""

from __future__ import annotations

import time

import pytest

from simapp.embedded.stack import http_json
from tests.helpers import events_for, read_topic, send_events, wait_until

pytestmark = pytest.mark.slow

OUTAGE_S = 60


def test_a_minute_of_503s_mid_burst_loses_nothing_and_holds_no_conversation(
    stack, ns, workers
):
    worker = workers.start(llm_rate_limit_rps=40, callback_breaker_reset=2)
    first = events_for(stack, 60, max_iterations=3, seed=21)
    ids = {e["id"] for e in first}
    send_events(stack, ns, first)
    assert wait_until(lambda: len(delivered(stack, ids)) >= 10, 120)

    refused_before = refused_posts(stack)  # the sink is shared by the session's tests
    http_json(f"{stack.sink_url}/admin/config", {"down": True, "down_status": 503})
    down_at = time.monotonic()
    calls_at_down = llm_calls(stack)
    # a second burst during the outage: its conversations must run, not wait for the sink
    second = events_for(stack, 40, max_iterations=2, seed=22)
    ids |= {e["id"] for e in second}
    send_events(stack, ns, second)
    web = f"http://127.0.0.1:{worker.port}/progress/"
    waiting = wait_until(lambda: http_json(web).get("waiting_by_receiver"), 40)
    assert waiting and sum(waiting.values()) > 0, waiting  # shown while the receiver is down
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    calls_in_outage = llm_calls(stack) - calls_at_down
    refused = refused_posts(stack) - refused_before
    http_json(f"{stack.sink_url}/admin/config", {"down": False})

    assert wait_until(lambda: {i["simulation_id"] for i in delivered(stack, ids)} == ids, 120)
    assert read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], 1, timeout=3) == []
    assert calls_in_outage >= 40 * 2  # the second burst's conversations ran in the outage
    # probes, one per CALLBACK_BREAKER_RESET (2 s) after the breaker opened, not a storm
    assert refused <= 5 + OUTAGE_S / 2 + 10, refused


def delivered(stack, ids: set[str]) -> list[dict]:
    return [i for i in stack.sink_items() if i["simulation_id"] in ids]


def refused_posts(stack) -> int:
    stats = http_json(f"{stack.sink_url}/received?limit=0")
    return int(stats["responses_by_status"].get("503", 0))


def llm_calls(stack) -> int:
    return int(stack.mock_stats().get("responses_by_status", {}).get("200", 0))
