"""Nothing lost through SIGKILL, SIGTERM and flaky or dead callback receivers."""

from __future__ import annotations

import json
import time

import pytest

from simapp.embedded.stack import http_json
from tests.helpers import events_for, read_topic, send_events, wait_until

pytestmark = pytest.mark.slow

N = 200


def mock_calls(stack) -> int:
    return stack.mock_stats()["responses_by_status"].get("200", 0)


def delivered_ids(stack, ids: set[str]) -> list[str]:
    return [i["simulation_id"] for i in stack.sink_items() if i["simulation_id"] in ids]


def rebilled_calls(stack, ids: set[str]) -> int:
    """LLM calls the provider answered beyond what the delivered conversations needed: each
    summary's usage counts every call of its conversation, across a crash and resume too."""
    needed: dict[str, int] = {}
    for item in stack.sink_items():
        if item["simulation_id"] in ids:
            needed.setdefault(item["simulation_id"], item["usage"]["llm_calls"])
    return mock_calls(stack) - sum(needed.values())


def run_burst(stack, ns, workers, kill: bool) -> dict:
    http_json(f"{stack.mock_url}/admin/reset", {})
    params = {"concurrent_conversations": 40, "llm_rate_limit_rps": 150, "commit_interval": 1.0}
    first = workers.start(**params)
    workers.start(**params)
    events = events_for(stack, N, seed=11)
    ids = {e["id"] for e in events}
    started = time.monotonic()
    send_events(stack, ns, events)
    if kill:
        assert wait_until(lambda: len(delivered_ids(stack, ids)) >= N * 0.3, 180)
        first.kill()  # SIGKILL mid-burst: no commit, no goodbye
    assert wait_until(lambda: set(delivered_ids(stack, ids)) >= ids, 300), "summaries missing"
    time.sleep(2)  # let stragglers (duplicates) land before counting
    got = delivered_ids(stack, ids)
    return {
        "sent": N,
        "delivered": len(set(got)),
        "missing": len(ids - set(got)),
        "duplicates": len(got) - len(set(got)),
        "llm_calls": mock_calls(stack),
        "rebilled_calls": rebilled_calls(stack, ids),
        "wall_s": round(time.monotonic() - started, 1),
    }


def test_sigkill_one_of_two_workers_mid_burst_loses_nothing(stack, ns, workers):
    figures = run_burst(stack, ns, workers, kill=True)
    print("kill run:", json.dumps(figures))
    assert figures["missing"] == 0
    # resumed conversations re-bill no checkpointed turn: at most the call each of the killed
    # worker's 40 conversations had in flight, and one whose checkpoint was not yet written
    assert figures["rebilled_calls"] <= 2 * 40, figures


def test_baseline_burst_without_kill(stack, ns, workers):
    figures = run_burst(stack, ns, workers, kill=False)
    print("baseline run:", json.dumps(figures))
    assert figures["missing"] == 0 and figures["duplicates"] == 0
    assert figures["rebilled_calls"] == 0, figures


def test_sigterm_exits_within_grace_and_loses_nothing(stack, ns, workers):
    http_json(f"{stack.mock_url}/admin/config", {"latency_ms": 300, "latency_jitter_ms": 50})
    grace = 5
    first = workers.start(shutdown_grace_seconds=grace, concurrent_conversations=30)
    events = events_for(stack, 60)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    assert wait_until(lambda: len(delivered_ids(stack, ids)) >= 5, 90)
    t0 = time.monotonic()
    code = first.stop(timeout=grace + 30)  # SIGTERM, SIGKILL only if it hangs
    took = time.monotonic() - t0
    assert took < grace + 20, f"worker took {took:.1f}s to stop"
    assert code is not None and code != -9, "worker had to be SIGKILLed"
    workers.start(concurrent_conversations=30)
    assert wait_until(lambda: set(delivered_ids(stack, ids)) >= ids, 180), "summaries missing"


def test_sigterm_past_the_grace_loses_no_conversation(stack, ns, workers):
    """Conversations still running when the grace is over are cancelled, and Faust's stream
    acks a cancelled actor's event in its `finally`: the ledger must not take that ack for a
    finished event (before, such events were committed and never delivered by anyone)."""
    http_json(f"{stack.mock_url}/admin/config", {"latency_ms": 800, "latency_jitter_ms": 0})
    first = workers.start(shutdown_grace_seconds=1, concurrent_conversations=10)
    events = events_for(stack, 20, seed=17)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    assert wait_until(lambda: mock_calls(stack) >= 10, 60)  # ten conversations in flight
    assert first.stop(timeout=60) is not None
    assert "still in flight are left unacked" in first.log_path.read_text()
    workers.start(concurrent_conversations=10)
    assert wait_until(lambda: set(delivered_ids(stack, ids)) >= ids, 180), (
        f"{len(ids - set(delivered_ids(stack, ids)))} conversations lost"
    )


def test_flaky_receiver_gets_every_summary(stack, ns, workers):
    http_json(f"{stack.sink_url}/admin/config", {"fail_first": 2})
    # every id's first two POSTs fail, so the receiver's breaker opens again and again: probe
    # it every second, not every 5 s (the default), or the test waits out the probes
    workers.start(callback_retry_attempts=5, callback_breaker_reset=1)
    events = events_for(stack, 10)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    assert wait_until(lambda: set(delivered_ids(stack, ids)) >= ids, 120)
    for sim_id in ids:
        deliveries = http_json(f"{stack.sink_url}/received/{sim_id}")
        assert deliveries["count"] == 1


def test_dead_receiver_sends_every_summary_to_the_dlq(stack, ns, workers):
    http_json(f"{stack.sink_url}/admin/config", {"down": True})
    workers.start(callback_max_wait=5)  # the outbox waits out a receiver this long
    events = events_for(stack, 8)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    dead = read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], len(ids), timeout=120)
    assert {d["simulation_id"] for d in dead} == ids
    # those that waited behind the receiver's open breaker were never POSTed themselves
    assert any("HTTP 500" in d["detail"] for d in dead)
    for d in dead:
        assert d["reason"] == "callback_failed"
        assert "not taken within CALLBACK_MAX_WAIT" in d["detail"]
        assert d["summary"]["simulation_id"] == d["simulation_id"]
        assert d["summary"]["conversation_history"]
        assert d["callback_url"].startswith(stack.sink_url)


def test_dlq_list_and_replay_redeliver_summaries(stack, ns, workers, tmp_path):
    """The README's `faust -A simapp dlq list` and `dlq replay`, from a fresh directory with
    only what a user sets: the broker, the topic names, the callback allowlist."""
    import subprocess

    from tests.test_readme_commands import user_env

    http_json(f"{stack.sink_url}/admin/config", {"down": True})
    workers.start(callback_max_wait=3)  # the outbox waits out a receiver this long
    events = events_for(stack, 4)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], len(ids), timeout=90)
    http_json(f"{stack.sink_url}/admin/config", {"down": False})
    topics = ns.overrides()
    env = user_env(
        KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap,
        KAFKA_TOPIC=topics["kafka_topic"],
        DLQ_TOPIC=topics["dlq_topic"],
        CALLBACK_ALLOWED_HOSTS="127.0.0.1",
    )

    def cli(*args: str) -> str:
        proc = subprocess.run(
            ["faust", "-A", "simapp", "dlq", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    listed = cli("list")
    assert "4 dead letters" in listed and "callback_failed" in listed
    replayed = cli("replay", "--reason", "callback_failed")
    assert "'redelivered': 4" in replayed
    assert set(delivered_ids(stack, ids)) == ids


@pytest.mark.parametrize(
    "safe_commit",
    [
        "true",
        pytest.param(
            "false",
            marks=pytest.mark.skipif(
                not __import__("os").environ.get("SIMAPP_MEASURE"),
                reason="stock-Faust comparison, run with SIMAPP_MEASURE=1",
            ),
        ),
    ],
)
def test_rebalance_mid_burst_duplicates(stack, ns, workers, safe_commit):
    """A second worker joins mid-burst (one rebalance): count re-simulated events."""
    params = {
        "concurrent_conversations": 40,
        "llm_rate_limit_rps": 150,
        "commit_interval": 2.0,
        "safe_commit": safe_commit,
    }
    http_json(f"{stack.mock_url}/admin/reset", {})
    workers.start(**params)
    events = events_for(stack, N, seed=5)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    assert wait_until(lambda: len(delivered_ids(stack, ids)) >= N * 0.3, 180)
    workers.start(**params)  # joins the group: partitions are revoked and reassigned
    assert wait_until(lambda: set(delivered_ids(stack, ids)) >= ids, 300), "summaries missing"
    time.sleep(2)
    got = delivered_ids(stack, ids)
    duplicates, rebilled = len(got) - len(set(got)), rebilled_calls(stack, ids)
    print(f"rebalance run safe_commit={safe_commit}: duplicates={duplicates} rebilled={rebilled}")
    assert len(set(got)) == N
    # conversations here take well under the revoke grace: each finishes before its
    # partition moves, and what Faust redelivers after the join is skipped as done
    assert rebilled == 0
    # a summary is POSTed again only when the results partition moved while an older one on
    # it waited (its offset pins the commit): at least once, with the same Idempotency-Key
    assert duplicates <= N // 10, duplicates
