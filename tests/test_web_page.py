"""The human progress page (GET /) in a real headless Chromium, after a batch completed.

Chromium runs the page's JavaScript (`--dump-dom` after `--virtual-time-budget`), so this checks
what a person sees: the batch's bar with the real numbers, not just the JSON behind it. With
WEB_AUTH_TOKEN the page asks for the token; Chromium is then driven through chromedriver (the
W3C WebDriver protocol, plain HTTP) to type it, as a person would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from simapp.config import load_settings
from simapp.embedded.catalogue import make_events
from simapp.embedded.processes import ManagedProcess, free_port, wait_for_port
from simapp.embedded.stack import EmbeddedStack, http_text
from simapp.kafka.producer import encode_event, produce
from simapp.observe.follow import get_json
from tests.tools import require_tool

pytestmark = pytest.mark.slow

TOKEN = "page-token-7f3c9a1e5b2d4f60a8c7e9b1d3f5a7c9"


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


def run_batch(stack: EmbeddedStack, n: int, **overrides: Any) -> tuple[ManagedProcess, str]:
    tag = uuid.uuid4().hex[:8]
    topics = {
        "kafka_topic": f"events-{tag}",
        "results_topic": f"results-{tag}",
        "dlq_topic": f"dlq-{tag}",
        "progress_topic": f"progress-{tag}",
    }
    worker = stack.start_worker(
        None,  # a fresh index: a data directory of its own
        kafka_consumer_group=f"page-{tag}",
        concurrent_conversations=20,
        llm_rate_limit_rps=200,
        **topics,
        **overrides,
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
        url = f"http://127.0.0.1:{worker.port}/progress/{batch_id}/"
        status, body = get_json(url, token=overrides.get("web_auth_token"))
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
        assert '<form id="auth" hidden="">' in dom  # no token configured: nothing asked
    finally:
        worker.stop(timeout=45)
        page_stack.workers.remove(worker)


class WebDriver:
    """Just enough of the W3C WebDriver protocol to drive headless Chromium through
    chromedriver (JSON over HTTP): open a page, type, click, run a script, reload."""

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

    def __init__(self, chromedriver: str, chromium: str, profile: Path) -> None:
        port = free_port()
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.base = f"http://127.0.0.1:{port}"
        try:
            wait_for_port("127.0.0.1", port, timeout=30, proc=self.proc)
            options = {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                ],
            }
            caps = {"browserName": "chrome", "goog:chromeOptions": options}
            session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
            self.session = f"/session/{session['sessionId']}"
        except BaseException:
            self.proc.kill()
            raise

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=90) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())["value"]

    def open(self, url: str) -> None:
        self.call("POST", self.session + "/url", {"url": url})

    def js(self, script: str) -> Any:
        return self.call("POST", self.session + "/execute/sync", {"script": script, "args": []})

    def wait(self, script: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.js(script)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert value, f"timed out waiting for: {script}"
        return value

    def _element(self, css: str) -> str:
        query = {"using": "css selector", "value": css}
        return self.call("POST", self.session + "/element", query)[self.ELEMENT]

    def type(self, css: str, text: str) -> None:
        self.call("POST", f"{self.session}/element/{self._element(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.call("POST", f"{self.session}/element/{self._element(css)}/click", {})

    def reload(self) -> None:
        self.call("POST", self.session + "/refresh", {})

    def quit(self) -> None:
        try:
            self.call("DELETE", self.session)
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


ASKING = "return !document.getElementById('auth').hidden"
STORED = "return sessionStorage.getItem('simapp.webAuthToken')"


def card_completed(batch_id: str) -> str:
    return f"return document.getElementById('batch-{batch_id}')?.dataset.completed"


def test_page_asks_for_the_token_once(page_stack: EmbeddedStack, tmp_path: Path) -> None:
    """A worker with WEB_AUTH_TOKEN: the page asks for the token, asks again after a wrong
    one, shows the batch with the right one, and after a reload shows it without asking."""
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    n = 6
    worker, batch_id = run_batch(page_stack, n, web_auth_token=TOKEN)
    driver = WebDriver(chromedriver, chromium, tmp_path / "profile")
    try:
        url = f"http://127.0.0.1:{worker.port}/"
        driver.open(url)
        driver.wait(ASKING)
        assert driver.js("return document.getElementById('auth-error').hidden") is True
        assert driver.js(card_completed(batch_id)) is None  # nothing shown without the token

        driver.type("#token", "not-the-token-" + "x" * 24)
        driver.click("#auth button")
        driver.wait("return !document.getElementById('auth-error').hidden")  # asked again
        assert driver.js(ASKING) is True and driver.js(STORED) is None
        assert driver.js(card_completed(batch_id)) is None

        driver.type("#token", TOKEN)
        driver.click("#auth button")
        assert driver.wait(card_completed(batch_id)) == str(n)
        assert driver.js(ASKING) is False
        assert driver.js(STORED) == TOKEN  # this tab's session storage
        assert TOKEN not in driver.js("return location.href")

        driver.reload()  # the same tab: the kept token is sent, nothing is asked
        assert driver.wait(card_completed(batch_id)) == str(n)
        assert driver.js(ASKING) is False
        assert driver.js("return document.getElementById('status').className") == ""
    finally:
        driver.quit()
        worker.stop(timeout=45)
        page_stack.workers.remove(worker)
