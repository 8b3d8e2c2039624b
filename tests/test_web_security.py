"""The web port serves simapp's routes and nothing else, never a transcript, and, with
WEB_AUTH_TOKEN set, only to requests that carry the token (issue 20, point 2).

- The routes a worker registers at start (Faust's blueprints applied, also with Faust's own
  switches for its views turned on in the environment or by `--debug`) are the README's list.
- A live worker answers 404 on Faust's table, router, statistics and graph views.
- No route returns a prompt, persona, intent or turn, of a running or a finished conversation:
  without a token the batch report (/report/{batch_id}/) names personas and criteria by labels
  and the transcript view answers 403.
- With a token: every route but the page answers 401 with an empty body to a request without
  the header, with another scheme, with a wrong token or with the token in the query string;
  workers send the token to each other (`/progress/` gathers, `/progress/{batch}/` forwards);
  the client of the CLI commands sends it; the token is never logged.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from simapp.config import SettingsError, load_settings
from simapp.embedded.stack import EmbeddedStack, http_json
from simapp.observe import follow as fl
from tests.helpers import Namespace, events_for, send_events, wait_until

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOKEN = "k3J9-x_Qm.7~Zr+w/Tt4bLp2Vn8Hs6Dy0Fa5GeC1uWi"  # 43 characters, RFC 6750 b64token

# What the worker process does at start: autodiscovery, then Faust's web server set-up
# (`Web.init_server`: Faust's blueprints, then `on_webserver_init`); its routes, as JSON.
_ROUTES_SCRIPT = """
import json
from simapp.worker.application import app
app.discover()
app.web.init_server()
routes = {(r.method, r.resource.canonical) for r in app.web.web_app.router.routes()}
print(json.dumps(sorted(routes)))
"""
# Faust's own switches for its views: its debug mode and one setting per blueprint, read
# from the environment (they win over the app's configuration).
FAUST_VIEWS_ON = {
    "APP_DEBUG": "true",
    "APP_WEB_TABLES_ENABLED": "true",
    "APP_WEB_ROUTER_ENABLED": "true",
    "APP_WEB_STATS_ENABLED": "true",
    "APP_WEB_GRAPH_ENABLED": "true",
    "APP_WEB_METRICS_ENABLED": "true",
}
# What Faust 0.15.3 serves when its views are on ({sim}, {batch} filled in per test), with
# the variants a client could try: no trailing slash, another table or key.
FAUST_PATHS = [
    "/table/",
    "/table",
    "/table/simulations/",
    "/table/simulations",
    "/table/progress/",
    "/table/progress-seen/",
    "/table/simulations/{sim}/",
    "/table/simulations/{sim}",
    "/table/progress/{batch}/",
    "/router/",
    "/router",
    "/router/topics",
    "/router/simulations/",
    "/router/progress/",
    "/router/simulations/{sim}/",
    "/router/progress/{batch}/",
    "/graph/",
    "/assignment/",
    "/performance/",
]


# ------------------------------------------------------------------------------ helpers
def readme_routes() -> set[str]:
    """The paths README's Monitoring section lists, one table row (`GET /path`) each."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Monitoring\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `GET (/\S*)` \|", section, flags=re.MULTILINE))


def registered_routes(**env: str) -> set[tuple[str, str]]:
    """(method, path template) of every route a worker process registers."""
    done = subprocess.run(
        [sys.executable, "-c", _ROUTES_SCRIPT],
        env={**os.environ, "LOG_LEVEL": "WARNING", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {tuple(route) for route in json.loads(done.stdout.strip().splitlines()[-1])}


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one plain HTTP request; no redirect is followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def our_paths(batch_id: str, simulation_id: str = "s-0") -> list[str]:
    """The README's routes with their parameters filled in."""
    return sorted(
        p.replace("{batch_id}", batch_id)
        .replace("{simulation_id}", simulation_id)
        .replace("{baseline}", batch_id)  # a batch compared with itself
        .replace("{candidate}", batch_id)
        for p in readme_routes()
    )


def answers(path: str, token: bool) -> int:
    """What one of our routes answers a request allowed to reach it: a transcript is served
    only by a worker with a token (403 without), and only for a failing simulation (the
    tests' simulations complete: 404); a comparison too, only by a worker with a token."""
    if "/transcript/" in path:
        return 404 if token else 403
    if path.startswith("/compare/"):  # the judge's reasoning: only with a token
        return 200 if token else 403
    return 200


def faust_paths(sim_id: str, batch_id: str) -> list[str]:
    return [p.format(sim=sim_id, batch=batch_id) for p in FAUST_PATHS]


# ------------------------------------------------------------------------------ routes
def test_readme_lists_the_routes() -> None:
    assert readme_routes() >= {"/metrics", "/progress/", "/progress/{batch_id}/", "/"}


@pytest.mark.parametrize(
    "env",
    [{}, FAUST_VIEWS_ON, {"WEB_AUTH_TOKEN": TOKEN}],
    ids=["defaults", "faust-views-switched-on", "with-token"],
)
def test_the_web_port_serves_the_readme_list(env: dict[str, str]) -> None:
    """Every route is the README's (GET, and HEAD for it), whatever Faust's switches say."""
    expected = {(method, path) for path in readme_routes() for method in ("GET", "HEAD")}
    assert registered_routes(**env) == expected


# ------------------------------------------------------------------------------ the token
def test_token_settings_are_checked_and_masked() -> None:
    assert load_settings(_env_file=None).web_auth_token is None
    assert load_settings(_env_file=None, web_auth_token="").web_auth_token is None  # `KEY=`
    token = load_settings(_env_file=None, web_auth_token=TOKEN).web_auth_token
    assert isinstance(token, SecretStr) and token.get_secret_value() == TOKEN
    assert TOKEN not in repr(load_settings(_env_file=None, web_auth_token=TOKEN))
    for bad in ("short-token", "x" * 31, "a" * 40 + " b", "a" * 40 + '"', "ä" * 40):
        with pytest.raises(SettingsError) as caught:
            load_settings(_env_file=None, web_auth_token=bad)
        message = str(caught.value)
        assert "WEB_AUTH_TOKEN" in message and "***" in message
        assert bad not in message


def test_authorization_rules() -> None:
    from simapp.worker.webserver import authorized

    assert authorized([f"Bearer {TOKEN}"], TOKEN)
    assert authorized([f"bearer {TOKEN}"], TOKEN)  # the scheme is case-insensitive (RFC 7235)
    refused = [
        [],
        [""],
        ["Bearer"],
        ["Bearer "],
        [TOKEN],
        [f"Basic {base64.b64encode(f'user:{TOKEN}'.encode()).decode()}"],
        [f"Token {TOKEN}"],
        [f"Bearer {TOKEN[:-1]}"],
        [f"Bearer {TOKEN}x"],
        [f"Bearer {TOKEN} {TOKEN}"],
        [f"Bearer {TOKEN}", f"Bearer {TOKEN}"],  # one header, not two
        [f"Bearer {TOKEN.upper()}"],
    ]
    for values in refused:
        assert not authorized(values, TOKEN), values


def test_client_headers() -> None:
    assert fl.auth_headers(None) == {}
    assert fl.auth_headers(SecretStr(TOKEN)) == bearer()
    assert fl.auth_headers(TOKEN) == bearer()


# ------------------------------------------------------------------------------ live workers
def slow_events(stack: EmbeddedStack, count: int, tag: str, batch_id: str) -> list[dict]:
    """Events whose persona, intent, system prompt and user instructions all carry `tag`."""
    events = events_for(stack, count, batch_id=batch_id)
    for i, event in enumerate(events):
        event["persona"] = {
            "name": f"Persona {tag} {i}",
            "description": f"persona-text-{tag}-{i}, reads every log line twice",
            "traits": [f"trait-{tag}"],
        }
        event["intent"] = f"intent-{tag}-{i}: export last year's invoices as one file"
        event["assistant"] = {"system_prompt": f"system-prompt-{tag}-{i}: you are the agent"}
        event["user"] = {"instructions": f"user-instructions-{tag}-{i}"}
        event["max_iterations"] = 4
    return events


@pytest.mark.slow
def test_faust_views_are_not_served(stack: EmbeddedStack, workers: Any, ns: Namespace) -> None:
    worker = workers.start()
    batch_id = f"b{uuid.uuid4().hex[:8]}"
    events = events_for(stack, 2, batch_id=batch_id, max_iterations=2)
    send_events(stack, ns, events)
    ids = {e["id"] for e in events}
    assert wait_until(lambda: ids <= {i["simulation_id"] for i in stack.sink_items()}, 120)
    base = f"http://127.0.0.1:{worker.port}"
    assert wait_until(lambda: fl.fetch_batch(base, batch_id)[0] == 200, 30)  # its progress row
    served = []
    for path in faust_paths(events[0]["id"], batch_id) + ["/nope", "/metrics/", "/progress"]:
        for method in ("GET", "HEAD", "OPTIONS"):
            status, _, body = request(base + path, method)
            if status != 404:
                served.append(f"{method} {path}: {status} {body[:120]!r}")
    assert not served, "\n".join(served)
    # ours answer (HEAD like GET, without a body); OPTIONS is not one of their methods
    for path in our_paths(batch_id, events[0]["id"]):
        assert request(base + path)[0] == answers(path, token=False), path
        status, _, body = request(base + path, "HEAD")
        assert (status, body) == (answers(path, token=False), b""), path
        assert request(base + path, "OPTIONS")[0] == 405, path


@pytest.mark.slow
def test_no_view_returns_a_transcript(stack: EmbeddedStack, workers: Any, ns: Namespace) -> None:
    """Every route (ours and Faust's) polled while conversations run and after they ended:
    no answer holds a prompt, persona, intent or instruction of an event, nor a turn."""
    worker = workers.start()
    http_json(f"{stack.mock_url}/admin/config", {"latency_ms": 600, "latency_jitter_ms": 0})
    tag = uuid.uuid4().hex[:10]
    batch_id = f"b{uuid.uuid4().hex[:8]}"
    events = slow_events(stack, 4, tag, batch_id)
    assert not any(tag in e["id"] for e in events) and tag not in batch_id
    base = f"http://127.0.0.1:{worker.port}"
    paths = our_paths(batch_id, events[0]["id"]) + [
        p for e in events for p in faust_paths(e["id"], batch_id) if "{" not in p
    ]
    send_events(stack, ns, events)
    ids = {e["id"] for e in events}
    # a few turns done: the rows of running conversations hold prompts and turns
    assert wait_until(lambda: stack.mock_stats()["requests"] >= 6, 60)
    answers: dict[str, list[bytes]] = {}

    def delivered() -> bool:
        return ids <= {i["simulation_id"] for i in stack.sink_items()}

    rounds = 0
    while True:
        done = delivered()
        for path in paths:
            answers.setdefault(path, []).append(request(base + path)[2])
        rounds += 1
        if done:
            break
        assert rounds < 400, "the conversations did not finish"
        time.sleep(0.2)
    assert rounds >= 3, "the conversations ended before the views were read"
    turns = {
        message["content"]
        for item in stack.sink_items()
        if item.get("simulation_id") in ids
        for message in item["conversation_history"]
        if len(message.get("content") or "") >= 24
    }
    assert turns, "no turn to look for"
    leaks = []
    for path, bodies in answers.items():
        for body in bodies:
            text = body.decode("utf-8", "replace").replace('\\"', '"')
            if tag in text:
                leaks.append(f"{path}: an event's text ({tag}) in {text[:200]!r}")
            leaks += [f"{path}: a turn {t[:60]!r}" for t in turns if t in text]
    assert not leaks, "\n".join(sorted(set(leaks))[:20])


HOSTILE = {
    "no header": {},
    "empty": {"Authorization": ""},
    "scheme only": {"Authorization": "Bearer"},
    "no scheme": {"Authorization": TOKEN},
    "basic": {"Authorization": "Basic " + base64.b64encode(f"simapp:{TOKEN}".encode()).decode()},
    "other scheme": {"Authorization": f"Token {TOKEN}"},
    "wrong token": bearer("w" * len(TOKEN)),
    "prefix of the token": bearer(TOKEN[:-1]),
    "token plus more": bearer(TOKEN + "A"),
    "another header": {"X-Auth-Token": TOKEN, "Cookie": f"token={TOKEN}"},
}
QUERY_STRINGS = [
    f"?token={TOKEN}",
    f"?access_token={TOKEN}",
    f"?authorization=Bearer%20{TOKEN}",
    f"?Authorization=Bearer+{TOKEN}",
]


@pytest.mark.slow
def test_with_a_token_every_route_but_the_page_asks_for_it(
    stack: EmbeddedStack, workers: Any, ns: Namespace
) -> None:
    """Two workers with WEB_AUTH_TOKEN: the hostile cases on every route, the peers' requests
    to each other, the CLI client, and no log line with the token."""
    started = [workers.start(web_auth_token=TOKEN) for _ in range(2)]
    batch_id = f"b{uuid.uuid4().hex[:8]}"
    events = events_for(stack, 8, batch_id=batch_id, max_iterations=2)
    send_events(stack, ns, events)
    ids = {e["id"] for e in events}
    assert wait_until(lambda: ids <= {i["simulation_id"] for i in stack.sink_items()}, 120)
    bases = [f"http://127.0.0.1:{w.port}" for w in started]

    def everyone_answers() -> bool:
        """Both list the finished batch, and both answer for it (progress trails delivery)."""
        answers = [fl.fetch_all(base, token=TOKEN) for base in bases]
        views = [fl.fetch_batch(base, batch_id, token=TOKEN) for base in bases]
        return all(s == 200 and b["complete"] for s, b in answers) and all(
            s == 200 and v["completed"] == 8 for s, v in views
        )

    # /progress/ on either worker asks the other one for its /progress/_local/ with the token
    assert wait_until(everyone_answers, 60), [fl.fetch_all(b, token=TOKEN) for b in bases]
    for base in bases:
        status, body = fl.fetch_all(base, token=TOKEN)
        assert all(w["ok"] for w in body["workers"]) and len(body["workers"]) == 2, body
        assert [b["batch_id"] for b in body["batches"]] == [batch_id]
        # /progress/{batch}/: one of the two forwards to the owner, with the token
        status, view = fl.fetch_batch(base, batch_id, token=TOKEN)
        assert (status, view["completed"], view["total"]) == (200, 8, 8), view
        assert fl.fetch_all(base) == (401, None)  # the client sends nothing without a token

    refused = []
    paths = our_paths(batch_id, events[0]["id"]) + faust_paths(events[0]["id"], batch_id)
    paths.append("/nope")
    for base in bases:
        for path in paths:
            for method in ("GET", "HEAD", "OPTIONS", "POST"):
                cases = [(name, path, headers) for name, headers in HOSTILE.items()]
                cases += [(f"query {q[:14]}", path + q, {}) for q in QUERY_STRINGS]
                for name, target, headers in cases:
                    if path == "/" and method in ("GET", "HEAD"):
                        continue  # the page: static, asks for the token itself (below)
                    status, answer_headers, body = request(base + target, method, headers)
                    if (
                        status != 401
                        or body != b""
                        or "Bearer" not in answer_headers.get("WWW-Authenticate", "")
                    ):
                        refused.append(f"{method} {target} ({name}): {status} {body[:80]!r}")
    assert not refused, f"{len(refused)} requests not refused:\n" + "\n".join(refused[:30])

    for base in bases:
        for path in our_paths(batch_id, events[0]["id"]):
            status = answers(path, token=True)
            assert request(base + path, headers=bearer())[0] == status, path
            assert request(base + path, "HEAD", bearer())[:3:2] == (status, b""), path
        for path in faust_paths(events[0]["id"], batch_id):
            assert request(base + path, headers=bearer())[0] == 404, path
        # the page itself is open, and holds no data nor the token
        status, _, page = request(base + "/")
        assert status == 200 and b"<title>" in page and TOKEN.encode() not in page
        assert batch_id.encode() not in page

    for worker in started:
        worker.signal(15)
        worker.stop(timeout=45)
        log = worker.log_path.read_text(encoding="utf-8", errors="replace")
        assert TOKEN not in log and TOKEN[:16] not in log
