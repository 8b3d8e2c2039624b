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


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    workdir = tmp_path_factory.mktemp("stack")
    s = EmbeddedStack(
        workdir=workdir,
        mock_args=["--latency-ms", "30", "--latency-jitter-ms", "10"],
        partitions=4,
    )
    s.start()
    s.extra_mock_defaults = _mutable(http_json(f"{s.mock_url}/admin/config"))  # type: ignore[attr-defined]
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
        factory.stop_all()
        http_json(f"{stack.mock_url}/admin/config", stack.extra_mock_defaults)  # type: ignore[attr-defined]
        http_json(f"{stack.mock_url}/admin/reset", {})
        http_json(f"{stack.sink_url}/admin/config", stack.extra_sink_defaults)  # type: ignore[attr-defined]


class WorkerFactory:
    """Starts workers bound to a test's namespace; stops them (SIGTERM, then SIGKILL) after."""

    def __init__(self, stack: EmbeddedStack, ns: Namespace) -> None:
        self.stack = stack
        self.ns = ns
        self.started: list = []

    def start(self, wait: bool = True, **overrides: object):  # noqa: ANN201
        params = {**self.ns.overrides(), "concurrent_conversations": 20, "llm_rate_limit_rps": 200}
        params.update(overrides)
        worker = self.stack.start_worker(wait=wait, **params)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.signal(15)
        for worker in self.started:
            worker.stop(timeout=45)
        self.stack.workers = [w for w in self.stack.workers if w not in self.started]
