"""A large conversation ends, it never ends a worker (issue 19's second witness), through the
real path: two workers, Tansu, the mock LLM answering 60,000 CJK characters a reply.

Before: Faust's JSON escaped every character to six bytes, the changelog row of the third turn
passed the producer's 1 MB limit, the producer buffer crashed, both workers exited and
nothing was delivered. Now the history has a budget (MAX_HISTORY_BYTES: `size_limit`),
records are compact UTF-8 and never larger than MAX_RECORD_BYTES.
"""

from __future__ import annotations

import json

import pytest

from simapp.embedded.stack import http_json
from tests.helpers import events_for, read_topic, send_events, wait_until

pytestmark = pytest.mark.slow


def test_a_verbose_model_ends_conversations_with_size_limit_and_no_worker_dies(
    stack, ns, workers
):
    http_json(f"{stack.mock_url}/admin/config", {"verbose_reply_chars": 60_000})
    started = [workers.start(wait=False) for _ in range(2)]
    stack.wait_workers_ready()
    events = events_for(stack, 10, max_iterations=10, seed=31)
    for event in events:
        event["max_iterations"] = event["min_iterations"] = 10
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)

    def delivered() -> list[dict]:
        return [i for i in stack.sink_items() if i["simulation_id"] in ids]

    assert wait_until(lambda: {i["simulation_id"] for i in delivered()} == ids, 180)
    assert all(w.alive() for w in started), "a worker exited"
    items = delivered()
    assert {i["end_reason"] for i in items} == {"size_limit"}
    for item in items:
        history = json.dumps(item["conversation_history"], ensure_ascii=False).encode()
        assert len(history) <= 512 * 1024  # MAX_HISTORY_BYTES' default
        assert item["total_iterations"] >= 2
    results = read_topic(stack.bootstrap, ns.overrides()["results_topic"], len(ids))
    assert {r["summary"]["simulation_id"] for r in results} == ids
