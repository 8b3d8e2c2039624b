"""Faust web views of every worker: Prometheus metrics, batch progress (JSON), a human page.

- `GET /metrics`                Prometheus exposition of this worker.
- `GET /progress/{batch_id}/`   one batch, from the worker that owns it (answered by any worker).
- `GET /progress/`              every batch of every worker, merged.
- `GET /progress/_local/`       the batches this worker owns (what `/progress/` gathers).
- `GET /report/{batch_id}/`     a batch's report (simapp/observe/report.py), from its owner.
- `GET /report/{batch_id}/transcript/{simulation_id}/`  a failing simulation's summary, read
                                back from the results topic; only with WEB_AUTH_TOKEN set.
- `GET /compare/{baseline}/{candidate}/`  the comparison of two batches (simapp/worker/
                                comparisons.py, as `faust -A simapp compare --format json`);
                                only with WEB_AUTH_TOKEN set, one at a time per worker.
- `GET /`                       simapp/web/static/index.html (with report.js), which polls
                                `/progress/` and, for an open batch, `/report/{batch_id}/`.

Ownership. A batch's row lives on the worker that owns its partition of the progress
changelog (tables/progress.py). The partition is murmur2(batch id) modulo the partition count,
as Kafka's default partitioner computes it for the progress topic, and Faust's assignor tells
every member which member URL owns each changelog partition (`app.router.table_metadata`,
the data `@app.table_route` uses). `/progress/{batch}/` forwards to that URL like
`@app.table_route` does, but adds a hop header, so a request is forwarded at most once: during
a rebalance two workers can disagree about the owner, and table_route would bounce such a
request back and forth. A worker answers only for partitions it owns actively and only when
no rebalance/recovery is running, else 503 (retry) — so a reader never sees a row that is
still being restored from the changelog, i.e. counts never go backwards because a worker
answered from a half-recovered or standby copy.

The list view asks every member that owns changelog partitions for its `/progress/_local/`
and merges them. Each active partition has exactly one owner in the assignment, so with any
number of workers every batch appears exactly once; when a member cannot answer (dead,
rebalancing) the answer says `"complete": false` and names it. `_local` cannot clash with a
batch id: ids must start with a letter or digit (simapp/simulation/schemas.py).

Nothing else is served (simapp/worker/webserver.py keeps Faust's own views out). With
WEB_AUTH_TOKEN set every view but the page asks for `Authorization: Bearer <token>`, and the
requests to other workers carry it. Without a token no view returns a prompt, persona, intent
or turn: the report names personas and criteria by labels ("persona 1"), and the transcript
view answers 403. With a token (so a request that reached a view carried it) the report has
the names, and the transcript view serves the turns and the judge's reasoning.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka.partitioner import murmur2
from prometheus_client import CONTENT_TYPE_LATEST
from yarl import URL

from simapp.observe import metrics
from simapp.observe.follow import auth_headers
from simapp.observe.progress import merge_views, view
from simapp.observe.report import budget_of, new_report, report_view
from simapp.tables.progress import (
    active_partitions,
    batches,
    changelog_topic_name,
    local_rows,
    members_owning,
    progress_table,
)
from simapp.tables.reports import report_row
from simapp.worker.application import app, settings
from simapp.worker.comparisons import NoSummaries, compare_batches
from simapp.worker.transcripts import read_summary

log = logging.getLogger(__name__)

HOP_HEADER = "X-Simapp-Routed"
PEER_TIMEOUT = aiohttp.ClientTimeout(total=3.0)
STATIC = Path(__file__).parent / "static"
# one static page (one route): each script goes where the page marks its place
INDEX_HTML = (STATIC / "index.html").read_text(encoding="utf-8")
for _script in ("report.js", "compare.js"):
    _code = (STATIC / _script).read_text(encoding="utf-8")
    INDEX_HTML = INDEX_HTML.replace(f"<!-- {_script} -->", f"<script>\n{_code}</script>", 1)
TRANSCRIPTS_REFUSED = (
    "transcripts hold prompts and turns: this worker serves them only with WEB_AUTH_TOKEN set "
    "(and the request carrying it); README, Monitoring"
)
COMPARISONS_REFUSED = (
    "comparisons hold the judge's reasoning and the criteria: this worker serves them only "
    "with WEB_AUTH_TOKEN set (and the request carrying it); README, Monitoring"
)
BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")  # an event's batch_id
COMPARE_TIMEOUT = 60.0  # seconds to read both batches from the results topic
_comparing = asyncio.Lock()  # a comparison reads the whole results topic: one at a time


@app.page("/metrics")
async def metrics_view(web: Any, request: Any) -> Any:
    return web.bytes(metrics.exposition(), content_type=CONTENT_TYPE_LATEST.split(";")[0])


# ----- ownership ---------------------------------------------------------------------------
def batch_partition(batch_id: str, partitions: int | None = None) -> int:
    """The progress partition of a batch: Kafka's default partitioner on the raw key."""
    n = partitions or settings.kafka_partitions
    return (murmur2(batch_id.encode("utf-8")) & 0x7FFFFFFF) % n


def _ident(url: Any) -> tuple[str, int]:
    u = URL(str(url))
    return (u.host or "", int(u.port or 80))


def _me() -> tuple[str, int]:
    return _ident(app.conf.canonical_url)


def owners() -> dict[str, list[int]]:
    """Member URL -> progress changelog partitions it owns, from the current assignment."""
    topic = changelog_topic_name()
    out: dict[str, list[int]] = {}
    try:
        meta = app.router.table_metadata(progress_table.name)
    except Exception:  # noqa: BLE001 - no assignment yet
        return out
    for url, tps in meta.items():
        parts = list(tps.get(topic, ()))
        if parts:
            out[str(url)] = sorted(parts)
    return out


def owner_of(batch_id: str) -> str | None:
    partition = batch_partition(batch_id)
    for url, parts in owners().items():
        if partition in parts:
            return url
    return None


def _busy() -> str | None:
    """Why this worker cannot answer from its tables right now, or None."""
    if app.should_stop:
        return "stopping"  # its tables are being closed: an empty answer would be a lie
    if getattr(app, "rebalancing", False):
        return "rebalancing"
    if getattr(app, "in_recovery", False):
        return "recovering"
    return None


def _unavailable(web: Any, reason: str, **extra: Any) -> Any:
    return web.json(
        {"error": reason, "retry": True, "worker": str(app.conf.canonical_url), **extra},
        status=503,
    )


# ----- views ------------------------------------------------------------------------------
@app.page("/progress/_local/")
async def progress_local(web: Any, request: Any) -> Any:
    busy = _busy()
    if busy:
        return _unavailable(web, busy)
    now = time.time()
    return web.json(
        {
            "worker": str(app.conf.canonical_url),
            "partitions": sorted(active_partitions()),
            "batches": [view(row, now) for row in local_rows()],
            "batches_owned": batches.count(active_partitions()),
            "waiting_by_receiver": metrics.waiting_by_receiver(),
        }
    )


async def _fetch_json(url: str, *, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET another worker's view, with the token the workers share (WEB_AUTH_TOKEN)."""
    headers = {**(headers or {}), **auth_headers(settings.web_auth_token)}
    async with app.http_client.get(url, headers=headers, timeout=PEER_TIMEOUT) as resp:
        if resp.status == 401:  # not our client's token but ours: the workers' tokens differ
            return 502, {"error": "the worker refused this worker's WEB_AUTH_TOKEN"}
        return resp.status, await resp.json(content_type=None)


async def gather_progress() -> dict[str, Any]:
    """Every member's local batches, merged (see module docstring)."""
    members = owners()
    me = _me()
    views: list[dict] = []
    workers: list[dict[str, Any]] = []
    waiting: Counter[str] = Counter()
    owned: list[int] = []  # batches each member owns (it lists only the newest)

    async def ask(url: str) -> None:
        entry: dict[str, Any] = {"url": url, "partitions": members[url]}
        workers.append(entry)
        if _ident(url) == me:
            busy = _busy()
            if busy:
                entry.update(ok=False, error=busy)
                return
            now = time.time()
            local = [view(row, now) for row in local_rows()]
            entry.update(ok=True, batches=len(local))
            views.extend(local)
            waiting.update(metrics.waiting_by_receiver())
            owned.append(batches.count(active_partitions()))
            return
        try:
            status, body = await _fetch_json(str(URL(url) / "progress" / "_local") + "/")
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:200])
            return
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            entry.update(ok=False, error=error or f"HTTP {status}")
            return
        batches_ = [b for b in body.get("batches", []) if isinstance(b, dict)]
        entry.update(ok=True, batches=len(batches_))
        views.extend(batches_)
        owned.append(int(body.get("batches_owned") or len(batches_)))
        theirs = body.get("waiting_by_receiver")
        if isinstance(theirs, dict):
            waiting.update({str(k): v for k, v in theirs.items() if isinstance(v, int)})

    await asyncio.gather(*(ask(url) for url in members))
    covered = {p for w in workers if w.get("ok") for p in w["partitions"]}
    complete = bool(members) and covered >= set(range(settings.kafka_partitions))
    workers.sort(key=lambda w: w["url"])
    merged = merge_views(views)  # oldest first
    return {
        "batches": merged[-settings.progress_batches_shown :],
        "batches_known": max(sum(owned), len(merged)),  # all, not only the ones listed
        "complete": complete,
        "workers": workers,
        # summaries waiting for their receiver (failed, or its breaker open), by receiver
        "waiting_by_receiver": dict(waiting.most_common()),
    }


@app.page("/progress/")
async def progress_list(web: Any, request: Any) -> Any:
    return web.json(await gather_progress())


def _local_batch(web: Any, batch_id: str) -> Any:
    row, refused = _owned_row(web, batch_id)
    if row is None:
        return refused
    return web.json({**view(row), "worker": str(app.conf.canonical_url)})


@app.page("/progress/{batch_id}/")
async def progress_batch(web: Any, request: Any, batch_id: str) -> Any:
    async def local() -> Any:
        return _local_batch(web, batch_id)

    return await _at_owner(web, request, batch_id, ("progress", batch_id), local)


async def _at_owner(
    web: Any, request: Any, batch_id: str, path: tuple[str, ...], local: Any
) -> Any:
    """The answer of the batch's owner: `local()` here, or the request forwarded once."""
    if request.headers.get(HOP_HEADER):
        return await local()  # forwarded once already: answer or refuse
    owner = owner_of(batch_id)
    if owner is None:
        return _unavailable(web, "no owner known for this batch yet")
    if _ident(owner) == _me():
        return await local()
    url = str(URL(owner).joinpath(*path)) + "/"
    try:
        status, body = await _fetch_json(url, headers={HOP_HEADER: "1"})
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return _unavailable(web, f"owner {owner} did not answer: {type(exc).__name__}")
    return web.json(body, status=status)


def _owned_row(web: Any, batch_id: str) -> tuple[dict | None, Any]:
    """(the batch's progress row, None), or (None, the answer saying why not)."""
    busy = _busy()
    if busy:
        return None, _unavailable(web, busy)
    if batch_partition(batch_id) not in active_partitions():
        return None, _unavailable(web, "not the owner of this batch (partitions are moving)")
    row = progress_table.get(batch_id)
    if not isinstance(row, dict):
        me = str(app.conf.canonical_url)
        return None, web.json(
            {"error": "unknown batch", "batch_id": batch_id, "worker": me}, status=404
        )
    return row, None


@app.page("/report/{batch_id}/")
async def report_batch(web: Any, request: Any, batch_id: str) -> Any:
    async def local() -> Any:
        row, refused = _owned_row(web, batch_id)
        if row is None:
            return refused
        report = report_row(batch_id) or new_report(batch_id)
        budget = budget_of(
            settings.llm_global_rate_limit_rps, settings.llm_rate_limit_rps, members_owning()
        )
        names = settings.web_auth_token is not None  # the request carried the token
        body = report_view(report, view(row), budget=budget, names=names)
        return web.json({**body, "worker": str(app.conf.canonical_url)})

    return await _at_owner(web, request, batch_id, ("report", batch_id), local)


@app.page("/report/{batch_id}/transcript/{simulation_id}/")
async def report_transcript(web: Any, request: Any, batch_id: str, simulation_id: str) -> Any:
    if settings.web_auth_token is None:
        return web.json({"error": TRANSCRIPTS_REFUSED}, status=403)

    async def local() -> Any:
        row, refused = _owned_row(web, batch_id)
        if row is None:
            return refused
        report = report_row(batch_id) or {}
        entry = next((f for f in report.get("failing") or [] if f.get("id") == simulation_id), None)
        if entry is None or not entry.get("ref"):
            error = "not among the failing simulations this batch's report keeps with a summary"
            return web.json({"error": error, "simulation_id": simulation_id}, status=404)
        partition, offset = entry["ref"]
        found = await read_summary(settings, partition, offset, simulation_id)
        if found is None:
            error = f"its summary is no longer on {settings.results_topic} (the topic's retention)"
            return web.json({"error": error, "simulation_id": simulation_id}, status=410)
        return web.json({"batch_id": batch_id, "simulation_id": simulation_id, **found})

    path = ("report", batch_id, "transcript", simulation_id)
    return await _at_owner(web, request, batch_id, path, local)


@app.page("/compare/{baseline}/{candidate}/")
async def compare_view(web: Any, request: Any, baseline: str, candidate: str) -> Any:
    """Any worker answers: the results topic is the whole cluster's."""
    if settings.web_auth_token is None:
        return web.json({"error": COMPARISONS_REFUSED}, status=403)
    bad = [b for b in (baseline, candidate) if not BATCH_ID.match(b)]
    if bad:
        return web.json({"error": "not a batch id", "batch_ids": bad}, status=400)
    if _comparing.locked():
        return web.json(
            {"error": "a comparison is running on this worker; retry"},
            status=429,
            headers={"Retry-After": "5"},
        )
    async with _comparing:
        try:
            async with asyncio.timeout(COMPARE_TIMEOUT):
                result = await compare_batches(settings, baseline, candidate)
        except NoSummaries as missing:
            return web.json({"error": str(missing), "batch_ids": missing.batch_ids}, status=404)
        except TimeoutError:
            error = f"the results topic was not read within {COMPARE_TIMEOUT:g} s"
            return web.json({"error": error}, status=504)
    return web.json(result)


@app.page("/")
async def index(web: Any, request: Any) -> Any:
    return web.html(INDEX_HTML)
