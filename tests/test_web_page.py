"""The human progress page (GET /) in a real headless Chromium, after a batch completed.

Chromium runs the page's JavaScript (`--dump-dom` after `--virtual-time-budget`), so this checks
what a person sees: the batch's bar with the real numbers, not just the JSON behind it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from simapp.config import load_settings
from simapp.embedded.catalogue import make_events
from simapp.embedded.processes import ManagedProcess
from simapp.embedded.stack import EmbeddedStack, http_text
from simapp.kafka.producer import encode_event, produce
from simapp.observe.follow import get_json
from tests.tools import require_tool

pytestmark = pytest.mark.slow


class BatchCards(HTMLParser):
    """Collects, per `data-batch-id` card, its attributes and the text/style of classed nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: dict[str, dict] = {}
        self._stack: list[tuple[str, str | None, str | None]] = []  # (tag, card id, class)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        card = self._stack[-1][1] if self._stack else None
        if a.get("data-batch-id"):
            card = a["data-batch-id"]
            self.cards[card] = {"attrs": a, "text": {}, "style": {}}
        cls = a.get("class")
        if card and cls and card in self.cards:
            for c in cls.split():
                self.cards[card]["style"].setdefault(c, a.get("style") or "")
                self.cards[card]["text"].setdefault(c, "")
        if tag not in {"br", "img", "meta", "link", "input"}:
            self._stack.append((tag, card, cls))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _tag, card, cls in reversed(self._stack):
            if card and cls:
                for c in cls.split():
                    self.cards[card]["text"][c] = self.cards[card]["text"].get(c, "") + data
                return


@pytest.fixture(scope="module")
def page_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(
        workdir=tmp_path_factory.mktemp("page-stack"),
        mock_args=["--latency-ms", "50", "--latency-jitter-ms", "10"],
        partitions=4,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def run_batch(stack: EmbeddedStack, n: int) -> tuple[ManagedProcess, str]:
    tag = uuid.uuid4().hex[:8]
    topics = {
        "kafka_topic": f"events-{tag}",
        "results_topic": f"results-{tag}",
        "dlq_topic": f"dlq-{tag}",
        "progress_topic": f"progress-{tag}",
    }
    worker = stack.start_worker(
        0,
        kafka_consumer_group=f"page-{tag}",
        concurrent_conversations=20,
        llm_rate_limit_rps=200,
        **topics,
    )
    batch_id = f"page-{tag}"
    events = make_events(
        n, callback_url=f"{stack.sink_url}/callback", batch_id=batch_id, max_iterations=4, seed=7
    )
    settings = load_settings(
        kafka_bootstrap_servers=stack.bootstrap, kafka_partitions=stack.partitions, **topics
    )
    assert asyncio.run(produce(settings, [encode_event(e) for e in events])) == n
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, body = get_json(f"http://127.0.0.1:{worker.port}/progress/{batch_id}/")
        if status == 200 and body["done"]:
            return worker, batch_id
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish: {status} {body}")


def dump_dom(chromium: str, url: str, profile: Path) -> str:
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--dump-dom",
        "--virtual-time-budget=5000",
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_page_shows_the_finished_batch(page_stack: EmbeddedStack, tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    n = 20
    worker, batch_id = run_batch(page_stack, n)
    try:
        url = f"http://127.0.0.1:{worker.port}/"
        assert "<title>" in http_text(url)
        dom = dump_dom(chromium, url, tmp_path / "profile")
        parser = BatchCards()
        parser.feed(dom)
        assert batch_id in parser.cards, dom[-3000:]
        card = parser.cards[batch_id]
        assert card["attrs"]["id"] == f"batch-{batch_id}"
        assert "done" in card["attrs"]["class"].split()
        assert card["attrs"]["data-completed"] == str(n)
        assert card["attrs"]["data-total"] == str(n)
        assert card["attrs"]["data-failed"] == "0"
        assert card["text"]["completed"].strip() == str(n)
        assert card["text"]["total"].strip() == str(n)
        assert card["text"]["failed"].strip() == "0"
        assert card["text"]["eta"].strip() == "done"
        assert card["text"]["percent"].strip() == "100.0%"
        assert card["text"]["rate"].strip().endswith("/s")
        assert card["style"]["bar"].replace(" ", "").startswith("width:100%")
        assert card["style"]["bar-failed"].replace(" ", "").startswith("width:0%")
    finally:
        worker.stop(timeout=45)
        page_stack.workers.remove(worker)
