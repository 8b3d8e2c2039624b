"""`faust -A simapp dlq replay` you can run twice (issue 19, point 7), through the real path: a
worker, Tansu, the mock LLM, the sink, and the command as a user types it, from a fresh
directory with only the variables they set.

- replay twice: the second run replays nothing (the replay log and the group's commits);
- a replayed event is a new attempt, not a duplicate of itself: an internal_error (a bug after
  the first turn, so its row is there) and a forbidden_callback, replayed after the worker is
  restarted fixed, are each simulated and delivered once, and none is refused as duplicate_id;
- replay without --reason leaves internal_error records alone;
- --force re-simulates a done id (a duplicate_id record), once; a forged mark does not.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from simapp.embedded.stack import http_json
from simapp.kafka import clients
from simapp.kafka.producer import encode_event
from tests.helpers import events_for, read_topic, read_topic_to_end, send_events, wait_until
from tests.test_readme_commands import user_env

pytestmark = pytest.mark.slow

REPLAY_SECRET = "r" * 40


def dlq_cli(stack, ns, cwd: Path, **variables: str):  # noqa: ANN001, ANN201
    """`faust -A simapp dlq ARGS` with only the broker, the topics, the group and `variables`."""
    topics = ns.overrides()
    env = user_env(
        KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap,
        KAFKA_TOPIC=topics["kafka_topic"],
        DLQ_TOPIC=topics["dlq_topic"],
        KAFKA_CONSUMER_GROUP=topics["kafka_consumer_group"],
        CALLBACK_ALLOWED_HOSTS="127.0.0.1,localhost",
        **variables,
    )

    def cli(*args: str, code: int = 0) -> str:
        proc = subprocess.run(
            ["faust", "-A", "simapp", "dlq", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == code, proc.stdout + proc.stderr
        return proc.stdout

    return cli


def deliveries(stack, sim_id: str) -> list[dict]:  # noqa: ANN001
    return http_json(f"{stack.sink_url}/received/{sim_id}")["deliveries"]


def dead_letters(stack, ns, expect: int, timeout: float = 60) -> list[dict]:  # noqa: ANN001
    return read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], expect, timeout=timeout)


def test_replay_twice_redelivers_each_summary_once(stack, ns, workers, tmp_path):
    """Summaries the receiver did not take within CALLBACK_MAX_WAIT: the first replay POSTs
    them, the second replays nothing; `dlq list` says which were replayed. (Replayed POSTs
    are signed and verify: tests/test_signed_callbacks.py.)"""
    http_json(f"{stack.sink_url}/admin/config", {"down": True, "down_status": 503})
    workers.start(callback_max_wait=3, callback_breaker_reset=1)
    events = events_for(stack, 4, max_iterations=2, seed=31)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    dead = dead_letters(stack, ns, len(ids), timeout=120)
    assert {d["reason"] for d in dead} == {"callback_failed"}
    http_json(f"{stack.sink_url}/admin/config", {"down": False})
    cli = dlq_cli(stack, ns, tmp_path)

    first = cli("replay")
    assert "'redelivered': 4" in first, first
    second = cli("replay")
    assert "replayed 0 dead letters: {}" in second, second  # the group's commit is past them
    for sim_id in ids:
        assert len(deliveries(stack, sim_id)) == 1  # once, though replay ran twice
    listed = cli("list")
    assert "4 dead letters" in listed and "'replayed': 4" in listed, listed
    assert listed.count("replayed (redelivered)") == 4, listed


def test_replayed_events_are_new_attempts_and_internal_errors_wait_to_be_named(
    stack, ns, workers, tmp_path
):
    """A worker with a bug (an exception after the first assistant turn, once its row is
    written) and an allowlist without `localhost`: internal_error and forbidden_callback dead
    letters. Restarted fixed, `dlq replay` re-queues the forbidden ones and leaves the
    internal_errors alone; `--reason internal_error` re-queues those; each event is then
    simulated and delivered once, none is a duplicate_id, and further runs replay nothing."""
    sink_port = stack.sink_url.rsplit(":", 1)[1]
    buggy = events_for(stack, 3, max_iterations=3, seed=41)
    for e in buggy:
        e["min_iterations"] = 2  # a second assistant turn, where the bug is
    forbidden = events_for(stack, 2, max_iterations=2, seed=42)
    for e in forbidden:
        e["callback_url"] = f"http://localhost:{sink_port}/callback"
    buggy_ids, forbidden_ids = {e["id"] for e in buggy}, {e["id"] for e in forbidden}
    workers.start(
        engine_class="tests.replay_engine:BuggyEngine",
        simapp_test_bug_after=1,
        callback_allowed_hosts="127.0.0.1",
    )
    send_events(stack, ns, buggy + forbidden)
    dead = dead_letters(stack, ns, 5, timeout=120)
    assert Counter(d["reason"] for d in dead) == {"internal_error": 3, "forbidden_callback": 2}
    workers.stop_all()
    workers.start()  # the bug fixed, localhost allowed; the rows recovered from the changelog
    cli = dlq_cli(stack, ns, tmp_path)

    first = cli("replay")
    assert "'requeued': 2" in first and "'left_alone': 3" in first, first
    assert "left alone: 3 internal_error" in first
    assert wait_until(lambda: all(deliveries(stack, i) for i in forbidden_ids), 120)
    named = cli("replay", "--reason", "internal_error")
    assert "'requeued': 3" in named, named
    assert wait_until(lambda: all(deliveries(stack, i) for i in buggy_ids), 120)
    for again in (cli("replay"), cli("replay", "--reason", "internal_error")):
        assert "replayed 0 dead letters" in again, again
    assert "'left_alone'" not in cli("replay", "--dry-run")

    time.sleep(3)  # a duplicate delivery or dead letter would land by now
    for sim_id in buggy_ids | forbidden_ids:
        assert len(deliveries(stack, sim_id)) == 1, sim_id
    dead = read_topic_to_end(stack.bootstrap, ns.overrides()["dlq_topic"], 5)  # and any more
    assert Counter(d["reason"] for d in dead) == {"internal_error": 3, "forbidden_callback": 2}
    for sim_id in buggy_ids:  # resumed after the turn before the bug, not restarted
        (delivery,) = deliveries(stack, sim_id)
        assert delivery["body"]["total_iterations"] >= 2


def test_force_re_simulates_a_done_id_once_and_a_forged_mark_does_not(stack, ns, workers, tmp_path):
    workers.start(dlq_replay_secret=REPLAY_SECRET)
    (event,) = events_for(stack, 1, max_iterations=2, seed=51)
    sim_id = event["id"]
    send_events(stack, ns, [event])
    assert wait_until(lambda: deliveries(stack, sim_id), 120)
    send_events(stack, ns, [event])  # the same id again: a duplicate_id dead letter
    (dup,) = dead_letters(stack, ns, 1, timeout=60)
    assert dup["reason"] == "duplicate_id"
    cli = dlq_cli(stack, ns, tmp_path, DLQ_REPLAY_SECRET=REPLAY_SECRET)

    plain = cli("replay")
    assert "left alone: 1 duplicate_id" in plain and "'requeued'" not in plain, plain
    without_secret = dlq_cli(stack, ns, tmp_path)("replay", "--force", code=2)
    assert "DLQ_REPLAY_SECRET" in without_secret
    forced = cli("replay", "--force")
    assert "'requeued': 1" in forced, forced
    assert wait_until(lambda: len(deliveries(stack, sim_id)) == 2, 120)
    assert "replayed 0 dead letters" in cli("replay", "--force")

    # Hostile producers: a forced mark signed with another key, and an unsigned one naming
    # the event the row belongs to. With DLQ_REPLAY_SECRET set neither is a mark: both are
    # duplicates, and nothing is simulated.
    from simapp.delivery.dead_letters import ReplayMark, Source

    first = re.search(r"partition (\d+) offset (\d+)", dup["detail"])
    assert first is not None
    origin = Source(ns.overrides()["kafka_topic"], int(first[1]), int(first[2]))
    key, value = encode_event(event)
    forged = ReplayMark("dlq:0:0", origin, force=True).headers(value, b"x" * 40)
    unsigned = ReplayMark("dlq:0:1", origin).headers(value, None)
    calls = stack.mock_stats()["responses_by_status"].get("200", 0)
    produce_with_headers(stack, ns, key, value, [forged, unsigned])
    dead = dead_letters(stack, ns, 3, timeout=60)
    assert [d["reason"] for d in dead] == ["duplicate_id"] * 3
    time.sleep(2)
    assert len(deliveries(stack, sim_id)) == 2
    assert stack.mock_stats()["responses_by_status"].get("200", 0) == calls


def produce_with_headers(stack, ns, key: bytes, value: bytes, headers: list) -> None:  # noqa: ANN001
    settings = ns.settings(stack)

    async def send() -> None:
        producer = clients.producer(settings, acks="all")
        await producer.start()
        try:
            for h in headers:
                await producer.send_and_wait(settings.kafka_topic, value=value, key=key, headers=h)
        finally:
            await producer.stop()

    asyncio.run(send())


def test_list_as_json_carries_the_replay_state(stack, ns, workers, tmp_path):
    """`dlq list --json`: each record with its DLQ partition/offset and `_replay`."""
    workers.start()
    bad = events_for(stack, 1, seed=61)[0]
    bad["max_iterations"] = "three"
    send_events(stack, ns, [bad])
    dead_letters(stack, ns, 1)
    out = dlq_cli(stack, ns, tmp_path)("list", "--json").splitlines()
    record = json.loads(out[1])
    assert record["reason"] == "invalid_field"
    assert record["_replay"] == {"status": "pending", "action": "requeue"}
    assert set(record["_dlq"]) == {"partition", "offset"}
