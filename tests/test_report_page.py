"""The batch report on the page, in a real headless Chromium driven through chromedriver (the
WebDriver client of tests/test_web_page.py): a burst through the real stack, then the page's
numbers against the sink's, the charts, a failing simulation's transcript opened with one
click, hostile names shown as text, and no request to anything but the worker. Screenshots
are kept in tests/artifacts/report-page/ (ignored by git; the path is printed).

A worker without WEB_AUTH_TOKEN shows the same report with labels for personas and criteria,
and refuses the transcript with a message that says why.
"""

from __future__ import annotations

import base64
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from simapp.embedded.stack import EmbeddedStack
from simapp.observe import follow as fl
from tests.helpers import Namespace, events_for, send_events, wait_until
from tests.test_web_page import WebDriver
from tests.tools import require_tool

pytestmark = pytest.mark.slow

TOKEN = "report-page-token-5c1e9a7b3d2f4e6a8b0c1d2e3f4a5b6c"
HOSTILE = '<img src=x onerror="document.title=1">Eve'
FAILING = "The assistant read the user's mind (fail)"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "report-page"


class Browser(WebDriver):
    def screenshot(self, path: Path, css: str | None = None) -> None:
        if css is None:
            data = self.call("GET", self.session + "/screenshot")
        else:
            data = self.call("GET", f"{self.session}/element/{self._element(css)}/screenshot")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        print(f"screenshot: {path}")

    def size(self, width: int, height: int) -> None:
        self.call("POST", self.session + "/window/rect", {"width": width, "height": height})

    def sign_in(self, url: str, token: str) -> None:
        """Open the page at `url` and give it the token it asks for."""
        self.open(url)
        self.wait("return !document.getElementById('auth').hidden")
        self.type("#token", token)
        self.click("#auth button")


def burst(stack: EmbeddedStack, ns: Namespace, n: int) -> tuple[str, list[dict]]:
    batch_id = f"page-{ns.tag}"
    events = events_for(stack, n, batch_id=batch_id, max_iterations=4, seed=3, features=True)
    for i, event in enumerate(events):
        event.setdefault("judge", {"criteria": ["The assistant answered the user's question"]})
        if i % 3 == 0:
            event["judge"]["criteria"] = [*event["judge"]["criteria"], FAILING]
        if i % 4 == 0:
            event["persona"]["name"] = HOSTILE
    send_events(stack, ns, events)
    return batch_id, events


def sink_summaries(stack: EmbeddedStack, ids: set[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in stack.sink_items():
        if item.get("simulation_id") in ids:
            out.setdefault(item["simulation_id"], item)
    return out


def report_done(base: str, batch_id: str, token: str | None) -> dict | None:
    status, body = fl.get_json(f"{base}/report/{batch_id}/", token=token)
    return body if status == 200 and body["progress"]["done"] else None


ROWS = """return Array.from(document.querySelectorAll(arguments[0] + ' tr[data-name]'))
  .map((tr) => Object.assign({}, tr.dataset))"""


def rows(driver: WebDriver, section: str) -> list[dict[str, str]]:
    script = ROWS.replace("arguments[0]", repr(section))
    return driver.js(script)


def test_the_report_page_against_the_sink_with_charts_and_a_transcript(
    stack: EmbeddedStack, workers: Any, ns: Namespace, tmp_path: Path
) -> None:
    chromium, chromedriver = require_tool("chromium"), require_tool("chromedriver")
    worker = workers.start(web_auth_token=TOKEN)
    n = 40
    batch_id, events = burst(stack, ns, n)
    ids = {e["id"] for e in events}
    assert wait_until(lambda: len(sink_summaries(stack, ids)) == n, 180), "not delivered"
    base = f"http://127.0.0.1:{worker.port}"
    assert wait_until(lambda: report_done(base, batch_id, TOKEN), 60)
    sums = sink_summaries(stack, ids)
    persona = {e["id"]: e["persona"]["name"] for e in events}

    driver = Browser(chromedriver, chromium, tmp_path / "profile")
    try:
        driver.size(1100, 3000)
        driver.sign_in(base + "/", TOKEN)
        driver.wait(f"return document.getElementById('batch-{batch_id}')?.dataset.completed")
        driver.screenshot(ARTIFACTS / "1-batches.png")
        driver.click(f"#batch-{batch_id} .report-link")  # one click: the batch's report
        driver.wait("return document.querySelector('#report .r-body') !== null")
        assert driver.js("return document.getElementById('report').dataset.batchId") == batch_id

        # the numbers, against what the sink received
        stats = driver.js(
            "return Object.fromEntries(Array.from(document.querySelectorAll('.r-stats b'))"
            ".map((b) => [b.className, b.dataset.value]))"
        )
        assert stats["r-simulations"] == str(n)
        judged = [s["evaluation"] for s in sums.values() if s.get("evaluation")]
        assert stats["r-judged"] == str(len(judged))
        cost = sum(
            u.get("cost_usd") or 0 for s in sums.values() for u in s["usage"]["by_role"].values()
        )
        assert stats["r-cost"] == f"${cost:.4f}"
        want: dict[str, Counter] = {}
        for sim, s in sums.items():
            c = want.setdefault(persona[sim], Counter())
            c["simulations"] += 1
            c["judged"] += 1
            c["passed"] += s["evaluation"]["passed"]
        got = {r["name"]: r for r in rows(driver, "#r-personas")}
        assert set(got) == set(want)
        for name, c in want.items():
            assert (got[name]["simulations"], got[name]["judged"], got[name]["passed"]) == (
                str(c["simulations"]),
                str(c["judged"]),
                str(c["passed"]),
            ), name
        criteria: dict[str, Counter] = {}
        for ev in judged:
            for v in ev["criteria"]:
                k = criteria.setdefault(v["criterion"], Counter())
                k["judged"] += 1
                k["passed"] += v["passed"]
        got = {r["name"]: r for r in rows(driver, "#r-criteria")}
        assert {k: (int(v["judged"]), int(v["passed"])) for k, v in got.items()} == {
            k: (c["judged"], c["passed"]) for k, c in criteria.items()
        }
        roles = driver.js(
            "return Array.from(document.querySelectorAll('#r-usage tr[data-role]'))"
            ".map((tr) => Object.assign({}, tr.dataset))"
        )
        for row in roles:
            calls = sum(
                s["usage"]["by_role"].get(row["role"], {}).get("llm_calls", 0)
                for s in sums.values()
            )
            assert int(row["calls"]) == calls, row
        # the charts: the time series with the budget line, the two histograms
        assert (
            driver.js(
                "return document.querySelectorAll('svg[data-chart=timeline] polyline').length"
            )
            >= 2
        )
        assert driver.js(
            "return !!document.querySelector('svg[data-chart=timeline] [data-series=budget]')"
        )
        bars = driver.js(
            "return Array.from(document.querySelectorAll('svg[data-chart=turns] rect'))"
            ".reduce((a, r) => a + Number(r.dataset.count), 0)"
        )
        assert bars == n
        # hostile text is text: no element was made of it, the title is untouched
        assert driver.js("return document.querySelector('#report img')") is None
        assert HOSTILE in driver.js("return document.getElementById('r-personas').textContent")
        assert driver.js("return document.title") == "simapp — batch progress"
        driver.screenshot(ARTIFACTS / "2-report.png", "#report-view")

        # one click on a failing simulation: its transcript and the judge's reasoning
        failing_id = driver.js(
            "return document.querySelector('#r-failing tr[data-simulation-id] button')"
            ".closest('tr').dataset.simulationId"
        )
        driver.click("#r-failing tr[data-simulation-id] button")
        driver.wait("return document.getElementById('transcript').dataset.state === 'shown'")
        shown = driver.js(
            "return {turns: document.querySelectorAll('#transcript .r-msg').length,"
            " text: document.getElementById('transcript').textContent}"
        )
        summary = sums[failing_id]
        assert shown["turns"] == len(summary["conversation_history"])
        assert summary["conversation_history"][-1]["content"][:40] in shown["text"]
        for verdict in summary["evaluation"]["criteria"]:
            assert verdict["reasoning"][:40] in shown["text"]
        driver.screenshot(ARTIFACTS / "3-transcript.png", "#transcript")

        # nothing but the worker was asked for anything
        origins = driver.js(
            "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)"
        )
        assert set(origins) <= {base}, origins
    finally:
        driver.quit()
    print(f"report page screenshots in {ARTIFACTS}")


def test_without_a_token_names_are_labels_and_transcripts_are_refused(
    stack: EmbeddedStack, workers: Any, ns: Namespace, tmp_path: Path
) -> None:
    chromium, chromedriver = require_tool("chromium"), require_tool("chromedriver")
    worker = workers.start()
    n = 12
    batch_id, events = burst(stack, ns, n)
    base = f"http://127.0.0.1:{worker.port}"
    assert wait_until(lambda: report_done(base, batch_id, None), 180)
    status, body = fl.get_json(f"{base}/report/{batch_id}/transcript/{events[0]['id']}/")
    assert status == 403 and "WEB_AUTH_TOKEN" in body["error"]
    driver = Browser(chromedriver, chromium, tmp_path / "profile")
    try:
        driver.open(f"{base}/#report={batch_id}")
        driver.wait("return document.querySelector('#report .r-body') !== null")
        names = [r["name"] for r in rows(driver, "#r-personas")]
        assert names and all(name.startswith("persona ") for name in names), names
        text = driver.js("return document.body.textContent")
        assert all(e["persona"]["name"] not in text for e in events)
        assert FAILING not in text and "WEB_AUTH_TOKEN" in text
        driver.click("#r-failing tr[data-simulation-id] button")
        driver.wait("return document.getElementById('transcript').dataset.state === 'refused'")
        refused = driver.js("return document.getElementById('transcript').textContent")
        assert "WEB_AUTH_TOKEN" in refused
        assert not driver.js("return document.querySelectorAll('#transcript .r-msg').length")
    finally:
        driver.quit()


@pytest.fixture(autouse=True, scope="module")
def _fresh_artifacts() -> None:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
