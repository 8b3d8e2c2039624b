"""A batch's spend cap (max_cost_usd, issue 22 point 3) through the real path: two workers,
Tansu, the mock LLM priced by LiteLLM's cost map (gpt-4), the sink.

Once the batch's cost to date reaches its cap, the batch's owner writes the global stop
table; both workers then make no more LLM call for that batch, and every simulation still
ends delivered: those cut short (or never started) as budget_exhausted. On the old code the
field is ignored and every simulation completes, at the full cost.

The bound: a call's cost is reported when it returns, so what a batch spends past its cap is
the calls in flight when the cost to date reached it (at most one per conversation slot of the
group: 20 here) plus the calls started before the stop reached each worker (the spend message's
trip to the owner and the global table's to the worker: 0.3-1.2 s in the workers' "stopped on
this worker ... after the cap was reached" lines, at most 20 calls/s here). Measured: 9 to 19
calls' worth past a cap of 30 calls' worth (1.31x-1.63x). The assertion below is what must hold
whatever the timing: most of the batch was never run.
"""

from __future__ import annotations

import json

import pytest

from simapp.embedded.stack import http_json
from tests.helpers import events_for, send_events, wait_until
from tests.test_readme_commands import run, user_env

pytestmark = pytest.mark.slow

WORKER = {"llm_rate_limit_rps": 10, "concurrent_conversations": 10}


def summaries(stack, ids: set[str]) -> dict[str, dict]:
    return {i["simulation_id"]: i for i in stack.sink_items() if i["simulation_id"] in ids}


def test_a_capped_batch_stops_on_every_worker_and_every_simulation_comes_back(
    stack, ns, workers, tmp_path
):
    first, second = workers.start(**WORKER), workers.start(**WORKER)
    # the price of a call here: a small uncapped probe batch
    probe = events_for(stack, 4, max_iterations=6, seed=61)
    probe_ids = {e["id"] for e in probe}
    send_events(stack, ns, probe)
    assert wait_until(lambda: len(summaries(stack, probe_ids)) == 4, 120)
    done = summaries(stack, probe_ids).values()
    calls = sum(s["usage"]["llm_calls"] for s in done)
    per_call = sum(s["usage"]["cost_usd"] for s in done) / calls
    per_conversation = sum(s["usage"]["cost_usd"] for s in done) / 4
    assert per_call > 0

    events = events_for(stack, 30, max_iterations=6, seed=62)
    cap = round(30 * per_call, 6)  # about a tenth of what the batch would cost
    batch = f"capped-{ns.tag}"
    ids = {e["id"] for e in events}
    # as a user types it: the file, then submit --max-cost (hostile caps refused whole)
    file = tmp_path / "events.jsonl"
    file.write_text("".join(json.dumps(_unbatched(e)) + "\n" for e in events))
    env = user_env(
        KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap,
        KAFKA_PARTITIONS=stack.partitions,
        CALLBACK_ALLOWED_HOSTS="127.0.0.1",
        **{k.upper(): v for k, v in ns.overrides().items()},
    )
    submit = ["faust", "-A", "simapp", "submit", str(file), "--batch-id", batch]
    refused = run([*submit, "--max-cost", "-1"], tmp_path, env, 120)  # the rest: test_spend_cap
    assert refused.returncode == 2 and "nothing was sent" in refused.stderr, refused.stderr
    estimated = run([*submit, "--max-cost", str(cap), "--estimate"], tmp_path, env, 120)
    assert estimated.returncode == 0, estimated.stderr[-2000:]
    assert f"spend cap: ${cap:.2f}" in estimated.stdout, estimated.stdout
    sent = run([*submit, "--max-cost", str(cap)], tmp_path, env, 120)
    assert sent.returncode == 0 and f"sent 30 events, batch {batch}" in sent.stdout, sent.stderr
    assert wait_until(lambda: len(summaries(stack, ids)) == 30, 240), len(summaries(stack, ids))

    got = summaries(stack, ids)
    ends = [s["end_reason"] for s in got.values()]
    spent = sum(s["usage"].get("cost_usd") or 0.0 for s in got.values())
    assert ends.count("budget_exhausted") >= 10, (ends, spent / per_call, calls)
    exhausted = [s for s in got.values() if s["end_reason"] == "budget_exhausted"]
    assert all("max_cost_usd" in s["error"] for s in exhausted)
    assert spent >= cap, "the cap was reached before anything stopped"
    print(f"spent {spent / per_call:.1f} calls' worth against a cap of 30 ({spent / cap:.2f}x)")
    # a worker that never heard of the stop would have run its half of the batch to the end
    assert spent < 0.4 * 30 * per_conversation, (spent, cap, per_conversation)
    for worker in (first, second):
        assert "end_reason=budget_exhausted" in worker.log_path.read_text()
        web = f"http://127.0.0.1:{worker.port}"
        shown = wait_until(lambda web=web: _capped(web, batch), 30)
        assert shown, http_json(f"{web}/progress/{batch}/")
        assert shown["spent_usd"] == pytest.approx(spent, rel=1e-6), "the fold adds up"
        assert shown["max_cost_usd"] == cap and shown["failed"] >= 10
        assert shown["completed"] + shown["failed"] == 30


def _unbatched(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in ("batch_id", "batch_size")}


def _capped(web: str, batch: str) -> dict | None:
    view = http_json(f"{web}/progress/{batch}/")
    return view if view.get("capped") and view.get("done") else None
