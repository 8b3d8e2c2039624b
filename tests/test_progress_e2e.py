"""End-to-end: batch progress through real workers on the embedded stack (Tansu + mock LLM).

One stack for the module; every test has its own topics and consumer group. What we prove:
- with 2 workers, `/progress/{batch}/` on either worker reaches completed = N, remaining = 0,
  counts never exceed N and never go backwards; `/progress/` lists the batch once; the
  Prometheus gauges are exported by the owner only;
- repeated and malformed progress messages are skipped (no double counting, agent survives);
- SIGTERM of the worker owning the batch mid-batch and a restart with the same data dir:
  progress continues, never resets to a lower count, never exceeds N, ends at N — once with
  progress messages fed by the test (the progress tables alone, repeats included) and once
  with a real batch through the whole pipeline.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from simapp.config import load_settings
from simapp.embedded.catalogue import make_events
from simapp.embedded.processes import ManagedProcess
from simapp.embedded.stack import EmbeddedStack, http_text
from simapp.kafka.producer import encode_event, produce
from simapp.kafka.reader import TopicReader, json_value
from simapp.observe.follow import get_json

pytestmark = pytest.mark.slow

PARTITIONS = 4


@pytest.fixture(scope="module")
def progress_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(
        workdir=tmp_path_factory.mktemp("progress-stack"),
        mock_args=["--latency-ms", "50", "--latency-jitter-ms", "10"],
        partitions=PARTITIONS,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


class Group:
    """Workers of one test: own topics and consumer group; stopped at the end."""

    def __init__(self, stack: EmbeddedStack, **extra: Any) -> None:
        self.stack = stack
        self.tag = uuid.uuid4().hex[:8]
        self.overrides: dict[str, Any] = {
            "kafka_topic": f"events-{self.tag}",
            "results_topic": f"results-{self.tag}",
            "dlq_topic": f"dlq-{self.tag}",
            "progress_topic": f"progress-{self.tag}",
            "kafka_consumer_group": f"progress-{self.tag}",
            "concurrent_conversations": 20,
            "llm_rate_limit_rps": 200,
            "shutdown_grace_seconds": 5,
            **extra,
        }
        self.workers: list[ManagedProcess] = []

    def start(self, index: int, wait: bool = True) -> ManagedProcess:
        datadir = self.stack.workdir / f"w-{self.tag}-{index}"
        params = dict(self.overrides, worker_datadir=str(datadir))
        worker = self.stack.start_worker(index, wait=wait, **params)
        self.workers.append(worker)
        return worker

    def live(self) -> list[ManagedProcess]:
        return [w for w in self.workers if w.alive()]

    def settings(self) -> Any:
        keys = ("kafka_topic", "results_topic", "dlq_topic", "progress_topic")
        return load_settings(
            kafka_bootstrap_servers=self.stack.bootstrap,
            kafka_partitions=self.stack.partitions,
            **{k: self.overrides[k] for k in keys},
        )

    def send_batch(self, count: int, batch_id: str) -> list[dict]:
        events = make_events(
            count,
            callback_url=f"{self.stack.sink_url}/callback",
            batch_id=batch_id,
            max_iterations=6,
            seed=count,
        )
        sent = asyncio.run(produce(self.settings(), [encode_event(e) for e in events]))
        assert sent == count
        return events

    def send_progress(self, batch_id: str, values: list[Any]) -> None:
        records = [
            (batch_id.encode(), v if isinstance(v, bytes) else json.dumps(v).encode())
            for v in values
        ]
        asyncio.run(produce(self.settings(), records, topic=self.overrides["progress_topic"]))

    def stop(self) -> None:
        for w in self.workers:
            w.signal(15)
        for w in self.workers:
            w.stop(timeout=45)
        self.stack.workers = [w for w in self.stack.workers if w not in self.workers]


@pytest.fixture
def group(progress_stack: EmbeddedStack) -> Iterator[Group]:
    g = Group(progress_stack)
    try:
        yield g
    finally:
        g.stop()


def batch_view(worker: ManagedProcess, batch_id: str) -> tuple[int, Any]:
    return get_json(f"http://127.0.0.1:{worker.port}/progress/{batch_id}/", timeout=20)


class Watcher(threading.Thread):
    """Polls /progress/{batch}/ on every live worker of a group; records what it saw."""

    def __init__(self, group: Group, batch_id: str, interval: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.group, self.batch_id, self.interval = group, batch_id, interval
        self.seen: list[tuple[float, int, int, dict]] = []  # (t, port, status, body)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for w in self.group.live():
                status, body = batch_view(w, self.batch_id)
                self.seen.append((time.monotonic(), w.port or 0, status, body or {}))
            self.halt.wait(self.interval)

    def views(self) -> list[dict]:
        return [b for _, _, s, b in self.seen if s == 200]

    def max_completed(self) -> int:
        return max((v["completed"] for v in self.views()), default=0)

    def catch_up(self, completed: int, timeout: float = 30) -> None:
        """Until the watcher's own polls have seen `completed` (the workers already answer it):
        stopping it at once can leave its last sample from before the end."""
        deadline = time.monotonic() + timeout
        while self.max_completed() < completed and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)


def assert_sane_and_monotonic(views: list[dict], n: int) -> None:
    """Counts never exceed N and never go backwards (in the order they were answered)."""
    assert views, "no progress answer at all"
    best_completed = best_finished = 0
    for v in views:
        finished = v["completed"] + v["failed"]
        assert v["completed"] <= n and finished <= n, v
        assert v["total"] == n, v  # batch_size is on every event, so the total is known at once
        assert v["remaining"] == n - finished, v
        assert v["completed"] >= best_completed, f"completed went back: {best_completed} -> {v}"
        assert finished >= best_finished, f"finished went back: {best_finished} -> {v}"
        best_completed, best_finished = v["completed"], finished


def wait_done(group: Group, batch_id: str, n: int, timeout: float) -> dict[int, dict]:
    """Until every live worker answers completed = n for the batch; their answers."""
    deadline = time.monotonic() + timeout
    answers: dict[int, dict] = {}
    while time.monotonic() < deadline:
        answers = {}
        for w in group.live():
            status, body = batch_view(w, batch_id)
            if status == 200:
                answers[w.port or 0] = body
        if (
            answers
            and len(answers) == len(group.live())
            and all(a["completed"] == n and a["remaining"] == 0 for a in answers.values())
        ):
            return answers
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} not done in {timeout}s: {answers}")


def progress_topic_summary(group: Group, batch_id: str) -> dict[str, Any]:
    """What the progress topic holds for a batch: messages and distinct simulations per kind."""

    async def read() -> list[dict]:
        settings = load_settings(kafka_bootstrap_servers=group.stack.bootstrap)
        async with TopicReader(settings) as reader:
            await reader.from_start(group.overrides["progress_topic"])
            return [json_value(record) async for record in reader.records()]

    messages = [m for m in asyncio.run(read()) if m.get("batch_id") == batch_id]
    kinds = {m["kind"] for m in messages}
    return {
        kind: {
            "messages": sum(1 for m in messages if m["kind"] == kind),
            "simulations": len({m["simulation_id"] for m in messages if m["kind"] == kind}),
        }
        for kind in sorted(kinds)
    }


def diagnose(group: Group, batch_id: str) -> str:
    """For a failure message: the topic's content and each worker's lag on the progress topic."""
    lines = [f"progress topic: {progress_topic_summary(group, batch_id)}"]
    topic = group.overrides["progress_topic"]
    for w in group.live():
        try:
            lags = [
                line
                for line in http_text(f"http://127.0.0.1:{w.port}/metrics").splitlines()
                if line.startswith("kafka_consumer_lag{") and f'topic="{topic}"' in line
            ]
        except OSError as exc:
            lags = [repr(exc)]
        lines.append(f"worker :{w.port} lag: {lags}")
    return "\n".join(lines)


def explain_unfinished(group: Group, batch_id: str, n: int, exc: AssertionError) -> None:
    """Fail saying which layer lost what: the progress table, or the pipeline before it."""
    print(diagnose(group, batch_id))
    topic = progress_topic_summary(group, batch_id)
    delivered = sum(1 for sid in group.stack.sink_ids() if sid.startswith(f"{batch_id}-"))
    views = [b for w in group.live() for s, b in [batch_view(w, batch_id)] if s == 200]
    if views:
        v = views[0]
        in_topic = {
            k: topic.get(k, {}).get("simulations", 0) for k in ("consumed", "completed", "failed")
        }
        table = {"consumed": v["consumed"], "completed": v["completed"], "failed": v["failed"]}
        # finishes without an earlier "consumed" are counted as consumed too
        assert (
            table["completed"] == in_topic["completed"] and table["failed"] == in_topic["failed"]
        ), f"progress table {table} != progress topic {in_topic}"
        raise AssertionError(
            f"the progress table matches the progress topic ({in_topic}), but the pipeline "
            f"reported only {in_topic['completed'] + in_topic['failed']} of {n} simulations "
            f"finished ({delivered} delivered to the sink): {exc}"
        ) from exc
    raise exc


def gauge(worker: ManagedProcess, name: str, batch_id: str) -> float | None:
    text = http_text(f"http://127.0.0.1:{worker.port}/metrics")
    prefix = f'{name}{{batch_id="{batch_id}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def test_two_workers_report_the_same_complete_batch(group: Group) -> None:
    n = 60
    for i in range(2):
        group.start(i, wait=False)
    group.stack.wait_workers_ready()
    batch_id = f"b2w-{group.tag}"
    watcher = Watcher(group, batch_id)
    watcher.start()
    try:
        group.send_batch(n, batch_id)
        answers = wait_done(group, batch_id, n, timeout=120)
    finally:
        watcher.stop()
    assert len(answers) == 2
    for a in answers.values():
        assert (a["total"], a["completed"], a["failed"], a["in_flight"]) == (n, n, 0, 0)
        assert a["done"] and a["percent"] == 100.0 and a["eta_seconds"] == 0.0
        assert sum(a["end_reasons"].values()) == n and a["duplicates"] >= 0
        assert a["duration_p50_s"] is not None and a["duration_p95_s"] >= a["duration_p50_s"]
        assert a["rate"] > 0
    # both answers come from the one owner of the batch
    assert len({a["worker"] for a in answers.values()}) == 1
    assert_sane_and_monotonic(watcher.views(), n)

    # the list view, asked on either worker, has the batch exactly once and all members
    for w in group.live():
        status, body = get_json(f"http://127.0.0.1:{w.port}/progress/", timeout=20)
        assert status == 200 and body["complete"] is True, body
        mine = [b for b in body["batches"] if b["batch_id"] == batch_id]
        assert len(mine) == 1 and mine[0]["completed"] == n
        assert sorted(p for wk in body["workers"] for p in wk["partitions"]) == list(
            range(PARTITIONS)
        )
    # unknown batch: a JSON 404 from the owner, through either worker
    for w in group.live():
        status, body = batch_view(w, f"nope-{group.tag}")
        assert status == 404 and body["error"] == "unknown batch"

    # gauges: exported by the worker owning the batch, and by it only
    owner_url = next(iter(answers.values()))["worker"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if any(gauge(w, "remaining_simulations", batch_id) == 0 for w in group.live()):
            break
        time.sleep(0.5)
    for w in group.live():
        owner = owner_url.endswith(f":{w.port}")
        assert gauge(w, "total_simulations", batch_id) == (n if owner else None)
        assert gauge(w, "remaining_simulations", batch_id) == (0 if owner else None)


def test_repeated_and_malformed_progress_messages(group: Group) -> None:
    group.start(0)
    batch_id = f"syn-{group.tag}"
    now = time.time()

    def m(kind: str, sim: str, reason: str | None = None, dt: float = 0.0) -> dict:
        return {
            "batch_id": batch_id,
            "kind": kind,
            "simulation_id": sim,
            "reason": reason,
            "batch_size": 6,
            "duration_ms": 1500 if kind != "consumed" else None,
            "at": now + dt,
        }

    sims = [f"s{i}" for i in range(1, 7)]
    first = [m("consumed", s) for s in sims]
    first += [b"not json", b"[1, 2]", json.dumps({"batch_id": batch_id, "kind": "nope"}).encode()]
    first += [m("completed", s, "completed", 1 + i) for i, s in enumerate(sims[:5])]
    group.send_progress(batch_id, first)
    # a crash/redelivery repeats messages; a later outcome of a finished simulation is ignored
    again = [
        m("consumed", "s1"),
        m("completed", "s1", "completed", 9),
        m("completed", "s2", "completed", 9),
        m("failed", "s3", "callback_failed", 9),
        m("failed", "s6", "llm_error", 10),
        m("failed", "s6", "llm_error", 11),
    ]
    group.send_progress(batch_id, again)
    worker = group.workers[0]
    deadline = time.monotonic() + 60
    body: Any = None
    while time.monotonic() < deadline:
        status, body = batch_view(worker, batch_id)
        if status == 200 and body["done"] and body["duplicates"] >= 5:
            break
        time.sleep(0.5)
    assert body is not None and body["done"], body
    assert (body["consumed"], body["completed"], body["failed"]) == (6, 5, 1)
    assert body["failed_by_reason"] == {"llm_error": 1}
    assert body["end_reasons"] == {"completed": 5}
    assert body["duplicates"] == 5 and body["in_flight"] == 0 and body["remaining"] == 0
    assert worker.alive()


class ProgressFeeder(threading.Thread):
    """Sends progress messages at a steady pace (as workers would), while the test restarts."""

    def __init__(self, group: Group, batch_id: str, messages: list[dict], interval: float) -> None:
        super().__init__(daemon=True)
        self.group, self.batch_id = group, batch_id
        self.messages, self.interval = messages, interval
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._send())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    async def _send(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.group.stack.bootstrap, acks="all")
        await producer.start()
        try:
            for m in self.messages:
                value = json.dumps({**m, "at": time.time()}).encode()
                await producer.send_and_wait(
                    self.group.overrides["progress_topic"], value, key=self.batch_id.encode()
                )
                await asyncio.sleep(self.interval)
        finally:
            await producer.stop()


def stop_the_owner_and_restart(group: Group, watcher: Watcher, batch_id: str) -> ManagedProcess:
    """SIGTERM the worker owning the batch, start a new one with its index (same data dir)."""
    owner_url = watcher.views()[-1]["worker"]
    owner = next(w for w in group.live() if owner_url.endswith(f":{w.port}"))
    index = owner.extra["index"]
    assert owner.stop(timeout=45) is not None  # SIGTERM; the other worker takes over
    replacement = group.start(index)  # same WORKER_DATADIR: its RocksDB state is reused
    assert replacement.extra["env"]["WORKER_DATADIR"] == owner.extra["env"]["WORKER_DATADIR"]
    return replacement


def test_restart_of_the_owner_with_steady_progress_messages(group: Group) -> None:
    """The progress tables alone: messages keep coming (with repeats) while the owner restarts."""
    n = 50
    group.start(0, wait=False)
    group.start(1, wait=False)
    group.stack.wait_workers_ready()
    batch_id = f"bsr-{group.tag}"
    order: list[tuple[str, str]] = []
    for i in range(n):
        order.append(("consumed", f"s{i:03d}"))
        if i >= 5:
            order.append(("completed", f"s{i - 5:03d}"))
    order += [("completed", f"s{i:03d}") for i in range(n - 5, n)]
    repeats = order[10:20] + order[40:50]  # what a redelivery after a crash looks like
    sequence = order[:60] + repeats + order[60:]
    messages = [
        {
            "batch_id": batch_id,
            "kind": kind,
            "simulation_id": sim,
            "batch_size": n,
            "reason": None if kind == "consumed" else "completed",
            "duration_ms": None if kind == "consumed" else 700,
        }
        for kind, sim in sequence
    ]
    # make sure the topics exist with our partition count before workers subscribe
    group.send_progress(batch_id, [])
    watcher = Watcher(group, batch_id)
    watcher.start()
    feeder = ProgressFeeder(group, batch_id, messages, interval=0.1)
    feeder.start()
    try:
        deadline = time.monotonic() + 60
        while watcher.max_completed() < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        at_stop = watcher.max_completed()
        assert 10 <= at_stop < n
        stop_the_owner_and_restart(group, watcher, batch_id)
        feeder.join(timeout=120)
        assert feeder.error is None, feeder.error
        answers = wait_done(group, batch_id, n, timeout=90)
        watcher.catch_up(n)
    finally:
        watcher.stop()
    views = watcher.views()
    assert_sane_and_monotonic(views, n)
    assert any(v["completed"] > at_stop for v in views)
    for a in answers.values():
        assert (a["consumed"], a["completed"], a["failed"], a["in_flight"]) == (n, n, 0, 0)
        assert a["duplicates"] >= len(repeats)  # plus what rebalances re-read


def test_restart_of_the_owner_mid_batch_keeps_counting(group: Group) -> None:
    n = 60
    # a slower pace so the batch is still running when the owner is stopped
    group.overrides.update(llm_rate_limit_rps=25, concurrent_conversations=10)
    for i in range(2):
        group.start(i, wait=False)
    group.stack.wait_workers_ready()
    batch_id = f"brs-{group.tag}"
    watcher = Watcher(group, batch_id)
    watcher.start()
    t0 = time.monotonic()

    def note(what: str) -> None:  # shown by pytest when the test fails
        print(f"{time.monotonic() - t0:6.1f}s {what} (max completed {watcher.max_completed()})")

    try:
        group.send_batch(n, batch_id)
        note("batch sent")
        deadline = time.monotonic() + 90
        while watcher.max_completed() < n // 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        at_stop = watcher.max_completed()
        assert n // 4 <= at_stop < n, f"batch not mid-way when stopping: {at_stop}"
        note("stopping the owner")
        stop_the_owner_and_restart(group, watcher, batch_id)
        note("owner stopped, replacement started")
        try:
            answers = wait_done(group, batch_id, n, timeout=120)
        except AssertionError as exc:
            explain_unfinished(group, batch_id, n, exc)
        note("done on every worker")
        watcher.catch_up(n)
    finally:
        watcher.stop()
    views = watcher.views()
    assert_sane_and_monotonic(views, n)
    assert max(v["completed"] for v in views) == n
    # the progress went on after the stop (not everything was done before it)
    assert any(v["completed"] > at_stop for v in views)
    for a in answers.values():
        assert (a["completed"], a["failed"], a["consumed"], a["in_flight"]) == (n, 0, n, 0)
    # every simulation was delivered to the sink at least once
    ids = {
        e["id"]
        for e in make_events(n, callback_url="x", batch_id=batch_id, max_iterations=6, seed=n)
    }
    delivered = set(group.stack.sink_ids()) & ids
    assert delivered == ids


def test_progress_is_live_while_a_burst_larger_than_the_buffer_runs(group: Group) -> None:
    """A burst much larger than the simulate agent's stream buffer must not starve the progress
    agent: the batch's row follows the deliveries while the burst runs, not only at its end.

    Measured before the fix (simapp/worker/application.py `stream_buffer_size`): one fetch returned
    the whole burst, the conductor waited on the full simulate queue for every event and
    fetched nothing else until the burst was nearly all queued; at half delivered the batch
    had no row at all (404). After: the row trails the sink by a few seconds.
    """
    n = 240
    group.start(0)
    batch_id = f"live-{group.tag}"
    watcher = Watcher(group, batch_id, interval=0.5)
    watcher.start()
    reached: list[float] = []
    try:
        group.send_batch(n, batch_id)

        def sixty_percent_delivered() -> bool:
            got = sum(1 for sid in group.stack.sink_ids() if sid.startswith(f"{batch_id}-"))
            if got >= n * 6 // 10:
                reached.append(time.monotonic())
                return True
            return False

        assert group.stack.wait_for(sixty_percent_delivered, timeout=240, interval=0.5)
        wait_done(group, batch_id, n, timeout=240)
    finally:
        watcher.stop()
    before = [b for t, _, st, b in watcher.seen if st == 200 and t <= reached[0]]
    best = max((b["completed"] + b["failed"] for b in before), default=0)
    assert best >= n // 6, (
        f"before the sink had 60 % of {n}, the progress row showed at most {best} finished: "
        f"{[(b['consumed'], b['completed']) for b in before]}"
    )
    assert_sane_and_monotonic(watcher.views(), n)
