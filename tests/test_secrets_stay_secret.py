"""No secret and no prompt leaves by a way it should not (issue 20, point 5), through the real
path: a worker given a marker in every secret-bearing setting (LLM_API_KEY, the endpoint's key
named by ASSISTANT_ENDPOINTS' api_key_env, CALLBACK_SIGNING_SECRET, DLQ_REPLAY_SECRET,
WEB_AUTH_TOKEN), Tansu, the mock LLM (refusing the key for part of the batch: 401s), the sink.

After a batch with judged, endpoint, failing and bad events, none of the secrets is in the
worker's log, its /metrics, its progress views, the dead letters, the progress and results
topics, the summaries delivered, or what `faust -A simapp dlq list` and `progress` print with
all of them in the environment. The prompts (persona, intent, replies) are in the summaries
and the results topic, for whom the summary is for, and nowhere else: not in the log, the
metrics, the progress views or the progress topic (which holds the judge's criteria and the
personas' names for the batch report, not the conversation). KAFKA_SASL_PASSWORD: a worker
refused by the broker does not log it (tests/test_kafka_security.py).
"""

from __future__ import annotations

import base64
import json

import pytest

from simapp.embedded.stack import http_json, http_text
from tests.conftest import ENDPOINT
from tests.helpers import (
    events_for,
    read_topic,
    read_topic_to_end,
    send_events,
    send_raw,
    wait_until,
)
from tests.test_readme_commands import run, user_env

pytestmark = pytest.mark.slow

PROMPT = "Zanzibar-prompt-7f3c"  # in every event's intent: the simulated user repeats it
CRITERION = "Criterion-marker-41e9"  # in the judge's criteria: the batch report's groups
TOKEN = "web-token-5c1d0a8e4b7f4f3aa9e2c6d1b0a7e3f9"
SIGNING_KEY = b"signing-key-bytes-9a8b7c6d5e4f3a2b"
SIGNING = "whsec_" + base64.b64encode(SIGNING_KEY).decode()
REPLAY = "replay-secret-2d4f6a8c0e1b3d5f7a9c1e3b5d7f9a1c"


def test_no_secret_and_no_prompt_leaks(stack, ns, workers, tmp_path):
    worker = workers.start(
        web_auth_token=TOKEN, callback_signing_secret=SIGNING, dlq_replay_secret=REPLAY
    )
    secrets = {
        "LLM_API_KEY": stack.api_key,
        "endpoint key": stack.endpoint_key,
        "WEB_AUTH_TOKEN": TOKEN,
        "CALLBACK_SIGNING_SECRET": SIGNING,
        "CALLBACK_SIGNING_SECRET's base64": SIGNING.removeprefix("whsec_"),
        "CALLBACK_SIGNING_SECRET's key": SIGNING_KEY.decode(),
        "DLQ_REPLAY_SECRET": REPLAY,
    }
    events = events_for(stack, 8, max_iterations=2, seed=71)
    for i, event in enumerate(events):
        event["intent"] = f"{event['intent']} {PROMPT}"
        if i % 2:
            event["judge"] = {"criteria": [f"It helped ({CRITERION})"]}
        if i % 3 == 0:
            event["assistant"] = {"endpoint": ENDPOINT}
    first, refused = events[:5], events[5:]
    ids = {e["id"] for e in events}
    send_events(stack, ns, first)
    assert wait_until(lambda: len(_delivered(stack, ids)) == 5, 120)
    http_json(f"{stack.mock_url}/admin/config", {"api_key": "sk-another-key"})  # 401s from here
    send_events(stack, ns, refused)
    send_raw(stack, ns, [(b"bad-1", b"{not json " + PROMPT.encode())])
    assert wait_until(lambda: len(_delivered(stack, ids)) == 8, 180)
    assert any(s["end_reason"] != "completed" for s in _delivered(stack, ids).values())

    auth = {"Authorization": f"Bearer {TOKEN}"}
    web = f"http://127.0.0.1:{worker.port}"
    batch = events[0]["batch_id"]
    assert wait_until(lambda: http_json(f"{web}/progress/{batch}/", headers=auth)["done"], 60)
    topics = ns.overrides()
    dead = read_topic(stack.bootstrap, topics["dlq_topic"], 1, timeout=30)
    # consumed, then completed or failed: two per event (the unparsable record has none)
    progress = read_topic_to_end(stack.bootstrap, topics["progress_topic"], 2 * len(events))
    results = read_topic(stack.bootstrap, topics["results_topic"], 8, timeout=30)
    assert dead and len(results) == 8
    env = user_env(
        KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap,
        KAFKA_PARTITIONS=stack.partitions,
        LLM_API_KEY=stack.api_key,
        WEB_AUTH_TOKEN=TOKEN,
        CALLBACK_SIGNING_SECRET=SIGNING,
        DLQ_REPLAY_SECRET=REPLAY,
        CALLBACK_ALLOWED_HOSTS="127.0.0.1",
        **{k.upper(): v for k, v in topics.items()},
    )
    listed = run(["faust", "-A", "simapp", "dlq", "list"], tmp_path, env, 120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    followed = run(
        ["faust", "-A", "simapp", "progress", "--batch-id", batch, "--web-url", web],
        tmp_path, env, 120,
    )  # fmt: skip
    assert followed.returncode == 0, followed.stdout[-2000:] + followed.stderr[-2000:]

    private = {
        "the worker's log": worker.log_path.read_text(),
        "/metrics": http_text(f"{web}/metrics", headers=auth),
        "/progress/": http_text(f"{web}/progress/", headers=auth),
        "/progress/<batch>/": http_text(f"{web}/progress/{batch}/", headers=auth),
        "dlq list": listed.stdout + listed.stderr,
        "faust progress": followed.stdout + followed.stderr,
    }
    for_the_receiver = {
        "the dead letters": json.dumps(dead),  # the original event, for the operator
        "the results topic": json.dumps(results),
        "the progress topic": json.dumps(progress),  # the report's fold: criteria, no prompt
        "the summaries delivered": json.dumps(list(_delivered(stack, ids).values())),
    }
    for where, text in {**private, **for_the_receiver}.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} in {where}"
    for where, text in private.items():
        assert PROMPT not in text and CRITERION not in text, f"an event's text in {where}"
    assert PROMPT not in for_the_receiver["the progress topic"], "a prompt in the progress topic"
    assert PROMPT in for_the_receiver["the summaries delivered"]  # the check can see it
    assert CRITERION in for_the_receiver["the summaries delivered"]


def _delivered(stack, ids: set[str]) -> dict[str, dict]:
    return {i["simulation_id"]: i for i in stack.sink_items() if i["simulation_id"] in ids}
