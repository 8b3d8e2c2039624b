"""Did the new version get better? (issue 22), through the real path: a worker, Tansu, the mock
LLM and its second instance as the team's chatbot endpoint, the sink, and `faust -A simapp
compare` / `submit --repeats` run as a user types them.

The endpoint's replies carry a tag, and the mock judge fails the "(strict)" criterion on 80 %
of tagged transcripts: against the endpoint that criterion drops with an interval below 0 and
the regressions are listed; two runs against the same backend are "no change". The page's
comparison (`/compare/{a}/{b}/`, picked in the list view in a real Chromium) shows the same
numbers, and only to a request with the worker's token.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from simapp.embedded.stack import EmbeddedStack, http_json
from simapp.observe import follow as fl
from tests.conftest import ENDPOINT
from tests.helpers import events_for, send_events, wait_until
from tests.test_readme_commands import VENV_BIN, user_env
from tests.test_report_page import Browser
from tests.tools import require_tool

pytestmark = pytest.mark.slow

STRICT = "The assistant answered the question (strict)"
POLITE = "The assistant stayed polite"
TOKEN = "compare-page-token-9d8c7b6a5f4e3d2c1b0a99887766554433"


def delivered(stack: EmbeddedStack, ids: set[str]) -> set[str]:
    return {i["simulation_id"] for i in stack.sink_items()} & ids


def faust(stack: EmbeddedStack, ns, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = user_env(
        KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap,
        KAFKA_PARTITIONS=stack.partitions,
        CALLBACK_ALLOWED_HOSTS="127.0.0.1",
        **{k.upper(): v for k, v in ns.overrides().items()},
    )
    cmd = [str(VENV_BIN / "faust"), "-A", "simapp", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def batch(scenarios: list[dict], name: str, endpoint: bool) -> list[dict]:
    out = []
    for event in scenarios:
        copy = {k: v for k, v in event.items() if k not in ("assistant", "user", "min_iterations")}
        copy.update(id=f"{name}-{event['id']}", batch_id=name, batch_size=len(scenarios))
        copy["scenario_id"] = event["id"]  # the catalogue repeats persona/intent pairs
        copy["judge"] = {"criteria": [STRICT, POLITE]}
        if endpoint:
            copy["assistant"] = {"endpoint": ENDPOINT}
        out.append(copy)
    return out


def test_compare_reports_a_criterion_drop_and_no_change(stack, ns, workers, tmp_path):
    http_json(f"{stack.endpoint_url}/admin/config", {"reply_tag": "[v2]"})
    http_json(
        f"{stack.mock_url}/admin/config",
        {"judge_strict_tag": "[v2]", "judge_strict_fail_rate": 0.8},
    )
    worker = workers.start(web_auth_token=TOKEN)
    scenarios = events_for(stack, 40, max_iterations=2, seed=51)
    a, b, c = (f"cmp{x}-{ns.tag}" for x in "abc")
    events = batch(scenarios, a, False) + batch(scenarios, b, True) + batch(scenarios, c, False)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    assert wait_until(lambda: delivered(stack, ids) == ids, 240)

    worse = faust(stack, ns, tmp_path, "compare", a, b, "--format", "json", "--fail-on-regression")
    assert worse.returncode == 1, worse.stdout[-2000:] + worse.stderr[-2000:]
    result = json.loads(worse.stdout)
    assert result["scenarios"] == 40
    strict = result["criteria"][STRICT]
    assert strict["call"] == "worse" and strict["ci95"][1] < 0, strict
    assert result["criteria"][POLITE]["call"] == "no change"
    assert result["overall"]["mcnemar"]["regressions"] >= 20
    regression = result["regressions"][0]
    assert regression["failed"][0]["criterion"] == STRICT
    assert "[v2]" in regression["failed"][0]["reasoning"]

    same = faust(stack, ns, tmp_path, "compare", a, c, "--fail-on-regression")
    assert same.returncode == 0, same.stdout[-2000:] + same.stderr[-2000:]
    assert "overall pass rate" in same.stdout and "no change" in same.stdout
    assert faust(stack, ns, tmp_path, "compare", a, "no-such-batch").returncode == 2

    # the page's view: the CLI's numbers (same seed), only with the token, ids checked
    base = f"http://127.0.0.1:{worker.port}"
    assert fl.get_json(f"{base}/compare/{a}/{b}/", token=TOKEN, timeout=90) == (200, result)
    assert fl.get_json(f"{base}/compare/{a}/{b}/")[0] == 401
    for hostile in ("bad%20id", "-dash", "x" * 129, "%3Cscript%3E"):
        assert fl.get_json(f"{base}/compare/{a}/{hostile}/", token=TOKEN)[0] == 400, hostile
    status, missing = fl.get_json(f"{base}/compare/{a}/no-such-batch/", token=TOKEN)
    assert status == 404 and missing["batch_ids"] == ["no-such-batch"]

    chromium, chromedriver = require_tool("chromium"), require_tool("chromedriver")
    driver = Browser(chromedriver, chromium, tmp_path / "profile")
    try:
        driver.size(1100, 2400)
        driver.sign_in(base + "/", TOKEN)
        choices = "Array.from(document.getElementById('compare-candidate').options)"
        driver.wait(f"return {choices}.length >= 3")
        driver.js(f"document.getElementById('compare-baseline').value = {a!r}")
        driver.js(f"document.getElementById('compare-candidate').value = {b!r}")
        driver.click("#compare-form button")
        driver.wait("return document.querySelector('#compare .c-body') !== null", 90)
        rates = driver.js(
            "return Array.from(document.querySelectorAll('#c-rates tr[data-name]'))"
            ".map((tr) => Object.assign({}, tr.dataset))"
        )
        calls = {r["name"]: r["call"] for r in rates}
        assert calls == {
            "overall": result["overall"]["call"],
            STRICT: "worse",
            POLITE: "no change",
        }, calls
        shown = driver.js(
            "return document.querySelectorAll('#c-regressions tr[data-scenario]').length"
        )
        assert shown == min(50, len(result["regressions"]))
        assert driver.js("return document.getElementById('list-view').hidden") is True
    finally:
        driver.quit()


def test_repeats_give_pass_at_k_flaky_scenarios_and_judge_agreement(stack, ns, workers, tmp_path):
    http_json(f"{stack.mock_url}/admin/config", {"judge_flip_rate": 0.3})
    workers.start()
    events = events_for(stack, 10, max_iterations=2, seed=53)
    for event in events:
        event["judge"] = {"criteria": [POLITE], "repeats": 3}
        event["scenario_id"] = event["id"]
    events_file = tmp_path / "events.jsonl"
    events_file.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    name = f"rep-{ns.tag}"
    sent = faust(
        stack, ns, tmp_path, "submit", str(events_file), "--batch-id", name, "--repeats", "3"
    )
    assert sent.returncode == 0, sent.stderr[-2000:]
    ids = {f"{e['id']}-r{k}" for e in events for k in (1, 2, 3)}
    assert wait_until(lambda: delivered(stack, ids) == ids, 240)
    items = [i for i in stack.sink_items() if i["simulation_id"] in ids]
    assert len({i["scenario_id"] for i in items}) == 10  # three simulations per scenario
    evaluation = items[0]["evaluation"]
    assert evaluation["repeats"] == 3 and 2 <= evaluation["criteria"][0]["agreed"] <= 3
    # compare the batch with itself: every scenario pairs, the flaky ones are listed
    same = faust(stack, ns, tmp_path, "compare", name, name, "--format", "json")
    result = json.loads(same.stdout)
    assert result["scenarios"] == 10 and result["overall"]["call"] == "no change"
    assert result["flaky"]["baseline"] == result["flaky"]["candidate"]
