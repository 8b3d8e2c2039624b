"""The batch report through the real path: Tansu, the mock LLM and a mock assistant endpoint,
real workers, the callback sink (which records every delivery with its headers).

- the report (the batch webhook's body, and `GET /report/{batch}/` on either worker) against
  what the sink received: end reasons, per persona, per criterion, per endpoint, cost and
  tokens by role = the sums of the summaries' `usage.by_role`;
- `faust -A simapp report BATCH --format jsonl|csv`, typed from a fresh directory: every
  delivered summary exactly once; the text report from a worker's web view;
- the batch webhook arrives once: with the batch's owner SIGKILLed mid-burst, and with a
  worker killed at the moment the report was due (SIMAPP_TEST_HOOKS=kill_before_batch_report)
  and its successor killed again after sending it.

One stack for the module (its own sink: the batch webhooks are no summaries); every test has
its own topics and consumer group.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simapp.embedded.catalogue import make_events
from simapp.embedded.processes import ManagedProcess
from simapp.embedded.stack import EmbeddedStack, http_json
from simapp.observe.follow import get_json
from tests.helpers import Namespace, send_events, wait_until
from tests.test_readme_commands import user_env

pytestmark = pytest.mark.slow

ENDPOINT = "acme-support"
TOKEN = "report-e2e-token-0d4c8b2a6e1f3a5c7e9b0d2f4a6c8e1b"  # WEB_AUTH_TOKEN: names, transcripts
FAILING = "The assistant read the user's mind (fail)"  # the mock judge fails these


@pytest.fixture(scope="module")
def report_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(
        workdir=tmp_path_factory.mktemp("report-stack"),
        mock_args=["--latency-ms", "30", "--latency-jitter-ms", "10"],
        partitions=4,
        endpoint=ENDPOINT,
        endpoint_rps=40,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


class Group:
    """Workers of one test on the module's stack: own topics and consumer group."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self.stack, self.ns = stack, Namespace()
        self.workers: list[ManagedProcess] = []

    def start(self, index: int, wait: bool = True, **extra: Any) -> ManagedProcess:
        params = {
            **self.ns.overrides(),
            "concurrent_conversations": 20,
            "llm_rate_limit_rps": 150,
            "commit_interval": 1.0,
            "shutdown_grace_seconds": 5,
            "worker_datadir": str(self.stack.workdir / f"w-{self.ns.tag}-{index}"),
            "web_auth_token": TOKEN,
            **extra,
        }
        worker = self.stack.start_worker(index, wait=wait, **params)
        self.workers.append(worker)
        return worker

    def live(self) -> list[ManagedProcess]:
        return [w for w in self.workers if w.alive()]

    def stop(self) -> None:
        for w in self.workers:
            w.signal(15)
        for w in self.workers:
            w.stop(timeout=45)
        self.stack.workers = [w for w in self.stack.workers if w not in self.workers]


@pytest.fixture
def group(report_stack: EmbeddedStack) -> Iterator[Group]:
    g = Group(report_stack)
    try:
        yield g
    finally:
        g.stop()


def batch_events(stack: EmbeddedStack, n: int, batch_id: str, seed: int) -> list[dict]:
    """Catalogue events with the optional fields; one in three with judge criteria gets a
    criterion the mock judge fails; all with the batch webhook pointing at the sink."""
    events = make_events(
        n,
        callback_url=f"{stack.sink_url}/callback",
        batch_id=batch_id,
        max_iterations=4,
        seed=seed,
        features=True,
        endpoint=ENDPOINT,
    )
    for i, event in enumerate(events):
        if "judge" in event and i % 3 == 0:
            event["judge"]["criteria"] = [*event["judge"]["criteria"], FAILING]
        event["batch_callback_url"] = f"{stack.sink_url}/batch"
    return events


def summaries(stack: EmbeddedStack, ids: set[str]) -> dict[str, dict]:
    """The first delivery of each simulation at the sink."""
    out: dict[str, dict] = {}
    for item in stack.sink_items():
        sim = item.get("simulation_id")
        if sim in ids and sim not in out:
            out[sim] = item
    return out


def webhooks(stack: EmbeddedStack, batch_id: str) -> list[dict]:
    """Every delivery of the batch's report at the sink (its Idempotency-Key is the batch id)."""
    return http_json(f"{stack.sink_url}/received/{batch_id}")["deliveries"]


def expected(sums: dict[str, dict], events: list[dict]) -> dict[str, Any]:
    """What the report must say, computed from the summaries the sink received."""
    persona = {e["id"]: e["persona"]["name"] for e in events}
    endpoint = {e["id"]: (e.get("assistant") or {}).get("endpoint") for e in events}
    per_persona: dict[str, Counter] = {}
    per_criterion: dict[str, Counter] = {}
    by_role: dict[str, Counter] = {}
    cost: Counter = Counter()
    for sim, s in sums.items():
        c = per_persona.setdefault(persona[sim], Counter())
        c["simulations"] += 1
        evaluation = s.get("evaluation") or {}
        if evaluation.get("passed") is not None:
            c["judged"] += 1
            c["passed"] += evaluation["passed"]
            for v in evaluation["criteria"]:
                k = per_criterion.setdefault(v["criterion"], Counter())
                k["judged"] += 1
                k["passed"] += v["passed"]
        for role, u in s["usage"]["by_role"].items():
            r = by_role.setdefault(role, Counter())
            r["llm_calls"] += u["llm_calls"]
            r["total_tokens"] += u["total_tokens"]
            cost[role] += u.get("cost_usd") or 0.0
    return {
        "end_reasons": Counter(s["end_reason"] for s in sums.values()),
        "personas": per_persona,
        "criteria": per_criterion,
        "by_role": by_role,
        "cost": cost,
        "endpoint_runs": sum(1 for sim in sums if endpoint[sim]),
    }


def assert_report_matches(view: dict, want: dict, n: int) -> None:
    assert view["simulations"] == n and view["unattributed"] == 0, view
    assert view["end_reasons"] == dict(want["end_reasons"])
    personas = {p["name"]: p for p in view["personas"]}
    assert set(personas) == set(want["personas"])
    for name, c in want["personas"].items():
        got = personas[name]
        assert (got["simulations"], got["judged"], got["passed"]) == (
            c["simulations"],
            c["judged"],
            c["passed"],
        ), name
    criteria = {c["criterion"]: c for c in view["criteria"]}
    assert set(criteria) == set(want["criteria"])
    for name, c in want["criteria"].items():
        assert (criteria[name]["judged"], criteria[name]["passed"]) == (c["judged"], c["passed"])
    assert criteria[FAILING]["passed"] == 0 and criteria[FAILING]["judged"] > 0
    endpoints = {e["endpoint"]: e["simulations"] for e in view["endpoints"]}
    assert endpoints.get(ENDPOINT, 0) == want["endpoint_runs"]
    for role, c in want["by_role"].items():
        got = view["usage"]["by_role"][role]
        assert (got["llm_calls"], got["total_tokens"]) == (c["llm_calls"], c["total_tokens"])
        assert got["cost_usd"] == pytest.approx(want["cost"][role], abs=1e-6)
    assert sum(want["cost"].values()) > 0  # gpt-4 is priced in LiteLLM's cost map
    assert sum(view["turns"]["counts"]) == sum(view["duration"]["counts"]) == n
    step = view["timeline"]["step_s"]
    assert sum(view["timeline"]["completions_per_s"]) * step == pytest.approx(n, abs=0.01 * n)
    judged_failing = sum(1 for f in view["failing"] if f.get("judged_failing"))
    assert judged_failing > 0 and all(f.get("ref") for f in view["failing"])


def test_the_report_matches_the_sink_and_the_export_has_every_summary_once(
    group: Group, tmp_path: Path
) -> None:
    n = 60
    group.start(0, wait=False)
    group.start(1, wait=False)
    group.stack.wait_workers_ready()
    batch_id = f"rep-{group.ns.tag}"
    events = batch_events(group.stack, n, batch_id, seed=5)
    ids = {e["id"] for e in events}
    send_events(group.stack, group.ns, events)
    assert wait_until(lambda: len(summaries(group.stack, ids)) == n, 180), "not delivered"
    assert wait_until(lambda: webhooks(group.stack, batch_id), 60), "no batch webhook"
    time.sleep(2)  # a second POST, if any, would land by now
    (hook,) = webhooks(group.stack, batch_id)
    assert hook["headers"]["Idempotency-Key"] == batch_id and hook["path"] == "/batch"
    sums = summaries(group.stack, ids)
    want = expected(sums, events)
    assert_report_matches(hook["body"], want, n)
    assert hook["body"]["progress"]["done"] and hook["body"]["webhook"]["set"]

    # the same report from either worker's view (forwarded to the owner)
    for worker in group.live():
        status, view = get_json(f"http://127.0.0.1:{worker.port}/report/{batch_id}/", token=TOKEN)
        assert status == 200, view
        assert_report_matches(view, want, n)
        assert view["webhook"]["sent_at"] is not None

    # the export, typed as a user does from a fresh directory
    env = user_env(
        KAFKA_BOOTSTRAP_SERVERS=group.stack.bootstrap,
        RESULTS_TOPIC=group.ns.overrides()["results_topic"],
        METRICS_PORT=group.live()[0].port,
        WEB_AUTH_TOKEN=TOKEN,
    )
    for fmt in ("jsonl", "csv"):
        done = subprocess.run(
            ["faust", "-A", "simapp", "report", batch_id, "--format", fmt],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"{n} summaries of batch {batch_id} exported" in done.stderr
        if fmt == "jsonl":
            rows = [json.loads(line) for line in done.stdout.splitlines()]
        else:
            rows = list(csv.DictReader(io.StringIO(done.stdout)))
        exported = Counter(r["simulation_id"] for r in rows)
        assert set(exported) == ids and set(exported.values()) == {1}, fmt
    text = subprocess.run(
        ["faust", "-A", "simapp", "report", batch_id],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0, text.stderr[-2000:]
    assert f"batch {batch_id}" in text.stdout and "judge:" in text.stdout
    assert f"{n}/{n} finished" in text.stdout


def diagnose(group: Group, batch_id: str) -> str:
    """For a failure message: the progress and the report as the live workers answer them."""
    out = []
    for worker in group.live():
        base = f"http://127.0.0.1:{worker.port}"
        status, progress = get_json(f"{base}/progress/{batch_id}/", 5, token=TOKEN)
        status2, report = get_json(f"{base}/report/{batch_id}/", 5, token=TOKEN)
        if isinstance(report, dict):
            report = {k: report.get(k) for k in ("simulations", "unattributed", "webhook")}
        out.append(f"{base}: progress {status} {progress}; report {status2} {report}")
    return "no batch webhook: " + "\n".join(out)


def owner_of(group: Group, batch_id: str) -> ManagedProcess | None:
    for worker in group.live():
        url = f"http://127.0.0.1:{worker.port}/progress/{batch_id}/"
        status, body = get_json(url, 5, token=TOKEN)
        if status == 200:
            return next((w for w in group.live() if body["worker"].endswith(f":{w.port}")), None)
    return None


def test_the_batch_webhook_arrives_once_when_its_owner_is_killed_mid_burst(group: Group) -> None:
    n = 120
    group.start(0, wait=False, llm_rate_limit_rps=60)
    group.start(1, wait=False, llm_rate_limit_rps=60)
    group.stack.wait_workers_ready()
    batch_id = f"kill-{uuid.uuid4().hex[:6]}"
    events = batch_events(group.stack, n, batch_id, seed=9)
    ids = {e["id"] for e in events}
    send_events(group.stack, group.ns, events)
    assert wait_until(lambda: len(summaries(group.stack, ids)) >= n * 0.3, 180)
    owner = wait_until(lambda: owner_of(group, batch_id), 30)
    assert owner is not None
    owner.kill()  # SIGKILL: no flush, no commit
    assert wait_until(lambda: len(summaries(group.stack, ids)) == n, 300), "not delivered"
    assert wait_until(lambda: webhooks(group.stack, batch_id), 90), diagnose(group, batch_id)
    time.sleep(5)
    hooks = webhooks(group.stack, batch_id)
    assert len(hooks) == 1, [h["received_at"] for h in hooks]
    progress = hooks[0]["body"]["progress"]
    assert progress["done"] and progress["completed"] + progress["failed"] == n
    body = hooks[0]["body"]
    assert body["simulations"] + body["unattributed"] == n


def test_the_batch_webhook_is_sent_by_the_next_owner_when_its_worker_dies_at_the_moment(
    group: Group,
) -> None:
    """The only worker dies (SIGKILL) when the finished batch's report is due, before its
    record is written; the next worker recovers the tables and sends it; that one is killed
    too after the report arrived, and a third worker does not send it again."""
    n = 30
    first = group.start(0, SIMAPP_TEST_HOOKS="kill_before_batch_report")
    batch_id = f"due-{uuid.uuid4().hex[:6]}"
    events = batch_events(group.stack, n, batch_id, seed=13)
    ids = {e["id"] for e in events}
    send_events(group.stack, group.ns, events)
    assert wait_until(lambda: not first.alive(), 180), "the hook did not fire"
    assert len(summaries(group.stack, ids)) == n
    assert webhooks(group.stack, batch_id) == []
    second = group.start(1)
    assert wait_until(lambda: webhooks(group.stack, batch_id), 120), diagnose(group, batch_id)
    time.sleep(3)  # its delivery committed (COMMIT_INTERVAL=1): a POST is at least once
    second.kill()  # whatever else it had not committed comes back to the next one
    group.start(2)
    status: int = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        url = f"http://127.0.0.1:{group.live()[0].port}/report/{batch_id}/"
        status, view = get_json(url, token=TOKEN)
        if status == 200 and view["progress"]["done"]:
            break
        time.sleep(0.5)
    assert status == 200 and view["webhook"]["sent_at"] is not None, view
    time.sleep(5)
    hooks = webhooks(group.stack, batch_id)
    assert len(hooks) == 1, [h["received_at"] for h in hooks]
    assert hooks[0]["body"]["simulations"] == n
