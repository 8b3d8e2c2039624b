"""Fixtures: one embedded stack (Tansu, mock LLM, sink) per test session; workers per test.

Each test gets its own topic namespace and consumer group, so tests never see each other's
events. Mock LLM and sink configuration is restored after every test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from simapp.embedded.stack import EmbeddedStack, http_json
from tests.helpers import Namespace

ENDPOINT = "acme-support"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    workdir = tmp_path_factory.mktemp("stack")
    s = EmbeddedStack(
        workdir=workdir,
        mock_args=["--latency-ms", "30", "--latency-jitter-ms", "10"],
        partitions=4,
        endpoint=ENDPOINT,  # a second mock: the "user's own chatbot" (tests/test_chatbot.py)
        endpoint_rps=40,
    )
    s.start()
    s.extra_mock_defaults = _mutable(http_json(f"{s.mock_url}/admin/config"))  # type: ignore[attr-defined]
    s.extra_endpoint_defaults = _mutable(http_json(f"{s.endpoint_url}/admin/config"))  # type: ignore[attr-defined]
    s.extra_sink_defaults = _mutable(http_json(f"{s.sink_url}/admin/config"))  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.stop()
        if os.environ.get("SIMAPP_KEEP_LOGS"):
            print(f"stack logs kept in {s.log_dir}")


def _mutable(config: dict) -> dict:
    """The runtime-changeable part of a server's /admin/config answer."""
    config = config.get("config", config)
    return {
        k: v for k, v in config.items() if k not in {"host", "port", "record", "flush_interval_s"}
    }


@pytest.fixture
def ns() -> Namespace:
    return Namespace()


@pytest.fixture
def workers(stack: EmbeddedStack, ns: Namespace) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(stack, ns)
    try:
        yield factory
    finally:
        factory.kill_all()
        defaults = (stack.extra_mock_defaults, stack.extra_endpoint_defaults)  # type: ignore[attr-defined]
        for mock, config in zip((stack.mock_url, stack.endpoint_url), defaults, strict=True):
            http_json(f"{mock}/admin/config", config)
            http_json(f"{mock}/admin/reset", {})
        http_json(f"{stack.sink_url}/admin/config", stack.extra_sink_defaults)  # type: ignore[attr-defined]


class WorkerFactory:
    """Starts workers bound to a test's namespace; SIGKILLs them after the test."""

    def __init__(self, stack: EmbeddedStack, ns: Namespace) -> None:
        self.stack = stack
        self.ns = ns
        self.started: list = []

    def start(self, wait: bool = True, **overrides: object):  # noqa: ANN201
        params = {**self.ns.overrides(), "concurrent_conversations": 20, "llm_rate_limit_rps": 200}
        params.update(overrides)
        params = {k: v for k, v in params.items() if v is not None}  # None: the default
        worker = self.stack.start_worker(wait=wait, **params)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.signal(15)
        for worker in self.started:
            # the test is over: a worker still waiting out its shutdown grace (conversations
            # held by a dead provider) is killed after a few seconds, not waited for
            worker.stop(timeout=5)
        self.stack.workers = [w for w in self.stack.workers if w not in self.started]

    def kill_all(self) -> None:
        """The test is over and nothing reads its workers any more: SIGKILL them. A clean
        stop costs a second or more per worker (Faust's shutdown sleeps) and asserts nothing;
        tests that need a clean stop call `stop_all` themselves. The consumer group and topics
        are the test's own, so a member left behind disturbs no other test."""
        for worker in self.started:
            worker.kill()
        self.stack.workers = [w for w in self.stack.workers if w not in self.started]


LIVE_RUN_EVENTS = 12


@pytest.fixture(scope="session")
def live_worker_run(stack: EmbeddedStack) -> Iterator[dict]:
    """A real worker after a small run: its /metrics text and how many events it got."""
    from simapp.embedded.stack import http_text
    from tests.helpers import events_for, send_events, wait_until

    ns = Namespace()
    factory = WorkerFactory(stack, ns)
    try:
        worker = factory.start()
        events = events_for(stack, LIVE_RUN_EVENTS)
        ids = {e["id"] for e in events}
        send_events(stack, ns, events)
        assert wait_until(lambda: ids <= {i["simulation_id"] for i in stack.sink_items()}, 120)
        url = f"http://127.0.0.1:{worker.port}/metrics"

        def settled() -> str | None:
            from simapp.embedded.session import parse_prometheus

            text = http_text(url)
            return text if parse_prometheus(text).get("kafka_commits_succeeded_total") else None

        text = wait_until(settled, 30)
        yield {"text": text or http_text(url), "count": LIVE_RUN_EVENTS, "worker": worker}
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def live_worker_metrics_text(live_worker_run: dict) -> str:
    return live_worker_run["text"]
