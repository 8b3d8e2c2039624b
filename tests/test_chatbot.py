"""Simulating against the user's own chatbot, through the real path: a worker, Tansu, the mock
provider, the mock endpoint ("acme-support", a second mock process, configured on the worker by
ASSISTANT_ENDPOINTS), summaries POSTed to the sink.

What each event field must do on the wire: the assistant's system prompt, model and sampling
reach the provider; user turns use the user model; an endpoint event's assistant turns go to
the endpoint under its own budget while the user turns stay on the default backend; judge
verdicts arrive in the summary, a failing judge gives `evaluation.error` and still delivers;
`min_iterations` is honoured; an empty simulated-user reply is retried, then `user_error`; a
context-window error ends with `context_window_exceeded` and the partial history.
"""

from __future__ import annotations

from typing import Any

import pytest

from simapp.embedded.stack import http_json
from tests.conftest import ENDPOINT
from tests.helpers import events_for, read_topic, send_events, wait_until
from tests.test_llm_resilience import metric

pytestmark = pytest.mark.slow

SYSTEM_PROMPT = "You are Acme's support agent. Never promise refunds; offer a ticket instead."


def delivered(stack: Any, ids: set[str]) -> dict[str, dict]:
    got = {}
    for item in stack.sink_items():
        if item["simulation_id"] in ids:
            got.setdefault(item["simulation_id"], item)
    return got


def requests(url: str) -> list[dict]:
    return http_json(f"{url}/requests")["requests"]


def test_assistant_user_endpoint_and_judge_fields_reach_the_wire(stack, ns, workers):
    worker = workers.start()
    base = events_for(stack, 6, seed=31)
    own, endpoint, garbage, missing, slow, unknown = base
    own.update(
        assistant={"system_prompt": SYSTEM_PROMPT, "model": "gpt-4o", "temperature": 0.2,
                   "max_tokens": 99},
        user={"model": "gpt-4o-mini", "temperature": 0.9, "instructions": "You are in a hurry."},
        judge={"criteria": ["The assistant answered", "The assistant offered a discount (fail)"],
               "model": "gpt-4"},
    )  # fmt: skip
    endpoint.update(assistant={"endpoint": ENDPOINT}, judge={"criteria": ["It helped"]})
    garbage.update(judge={"criteria": ["It helped"], "model": "mock-judge-garbage"})
    missing.update(judge={"criteria": ["It helped"], "model": "mock-unknown"})  # the mock: 404
    slow.update(max_iterations=4, min_iterations=3)
    unknown.update(assistant={"endpoint": "no-such-endpoint"})
    ids = {e["id"] for e in base} - {unknown["id"]}
    send_events(stack, ns, base)
    assert wait_until(lambda: set(delivered(stack, ids)) == ids, 120)
    got = delivered(stack, ids)

    # the system under test: prompt first in the history, model and sampling on the wire
    assert got[own["id"]]["conversation_history"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    provider = requests(stack.mock_url)
    own_turns = [r for r in provider if r["system"] == SYSTEM_PROMPT]
    assert own_turns and {(r["model"], r["temperature"], r["max_tokens"]) for r in own_turns} == {
        ("gpt-4o", 0.2, 99)
    }
    user_turns = [r for r in provider if "You are in a hurry." in r["system"]]
    assert user_turns and {(r["model"], r["temperature"]) for r in user_turns} == {
        ("gpt-4o-mini", 0.9)
    }
    assert all(r["simulated_user"] for r in user_turns)

    # the judge: a verdict per criterion, passed only if all passed; usage by role
    evaluation = got[own["id"]]["evaluation"]
    assert evaluation["model"] == "gpt-4" and evaluation["passed"] is False
    assert [c["passed"] for c in evaluation["criteria"]] == [True, False]
    assert [c["criterion"] for c in evaluation["criteria"]] == own["judge"]["criteria"]
    roles = got[own["id"]]["usage"]["by_role"]
    assert roles["judge"]["llm_calls"] == 1
    assert roles["assistant"]["llm_calls"] == got[own["id"]]["total_iterations"]
    assert sum(r["llm_calls"] for r in roles.values()) == got[own["id"]]["usage"]["llm_calls"]
    assert roles["assistant"]["cost_usd"] > 0  # gpt-4o is in LiteLLM's cost map

    # the endpoint: its assistant turns went to the endpoint's server, the user's did not
    at_endpoint = requests(stack.endpoint_url)
    assert len(at_endpoint) == got[endpoint["id"]]["total_iterations"]
    assert all(not r["simulated_user"] and r["model"] == "default" for r in at_endpoint)
    assert got[endpoint["id"]]["evaluation"]["passed"] is True
    # under its own budget: the endpoint's 40 rps for the group, less the margin
    assert wait_until(
        lambda: metric(worker, "llm_rate_limit_rps", budget=ENDPOINT) == pytest.approx(40 * 0.95),
        15,
    )

    # a judge that answers nonsense, or fails: evaluation.error, the summary still delivered
    for event in (garbage, missing):
        item = got[event["id"]]
        assert item["end_reason"] in {"completed", "max_iterations"}
        assert item["evaluation"]["error"] and "passed" not in item["evaluation"]
    assert "unparseable" in got[garbage["id"]]["evaluation"]["error"]
    assert "404" in got[missing["id"]]["evaluation"]["error"]

    # min_iterations: the simulated user's early goodbye is not honoured
    assert got[slow["id"]]["total_iterations"] >= 3

    # an endpoint the worker does not know: a dead letter naming it
    (dead,) = read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], 1)
    assert dead["reason"] == "invalid_field" and "no-such-endpoint" in dead["detail"]
    assert dead["simulation_id"] == unknown["id"]


def test_empty_user_replies_and_context_window(stack, ns, workers):
    workers.start(concurrent_conversations=1)
    mock = stack.mock_url

    def one(**fields: Any) -> dict:
        (event,) = events_for(stack, 1)
        event.update(fields)
        send_events(stack, ns, [event])
        assert wait_until(lambda: event["id"] in delivered(stack, {event["id"]}), 60)
        return delivered(stack, {event["id"]})[event["id"]]

    http_json(f"{mock}/admin/config", {"empty_user_replies": 1})  # one empty: retried
    retried = one(max_iterations=6)
    assert retried["end_reason"] in {"completed", "max_iterations"}
    assert retried["usage"]["by_role"]["user"]["llm_calls"] >= 2

    http_json(f"{mock}/admin/config", {"empty_user_replies": 2})  # empty twice: user_error
    failed = one(max_iterations=6)
    assert failed["end_reason"] == "user_error"
    assert failed["total_iterations"] == 1
    assert failed["usage"]["by_role"]["user"]["llm_calls"] == 2
    assert [m["role"] for m in failed["conversation_history"]] == ["system", "user", "assistant"]

    http_json(f"{mock}/admin/config", {"empty_user_replies": 0, "context_window_tokens": 12})
    long_intent = " ".join(["Please help me with my very long question"] * 3)
    window = one(intent=long_intent)
    assert window["end_reason"] == "context_window_exceeded"
    assert "maximum context length" in window["error"]
    assert [m["role"] for m in window["conversation_history"]] == ["system", "user"]
    assert window["usage"]["llm_calls"] == 0  # refused at once, not retried
