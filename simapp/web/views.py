"""Faust web views of every worker: Prometheus metrics, batch progress (JSON), a human page.

- `GET /metrics`                Prometheus exposition of this worker.
- `GET /progress/{batch_id}/`   one batch, from the worker that owns it (answered by any worker).
- `GET /progress/`              every batch of every worker, merged.
- `GET /progress/_local/`       the batches this worker owns (what `/progress/` gathers).
- `GET /`                       simapp/web/static/index.html, which polls `/progress/`.

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
requests to other workers carry it. No view returns a prompt, persona, intent or turn.
"""

from __future__ import annotations

import asyncio
import logging
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
from simapp.tables.progress import (
    active_partitions,
    batches,
    changelog_topic_name,
    local_rows,
    progress_table,
)
from simapp.worker.application import app, settings

log = logging.getLogger(__name__)

HOP_HEADER = "X-Simapp-Routed"
PEER_TIMEOUT = aiohttp.ClientTimeout(total=3.0)
INDEX_HTML = (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")


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
    busy = _busy()
    if busy:
        return _unavailable(web, busy)
    if batch_partition(batch_id) not in active_partitions():
        return _unavailable(web, "not the owner of this batch (partitions are moving)")
    row = progress_table.get(batch_id)
    if row is None:
        return web.json(
            {"error": "unknown batch", "batch_id": batch_id, "worker": str(app.conf.canonical_url)},
            status=404,
        )
    return web.json({**view(row), "worker": str(app.conf.canonical_url)})


@app.page("/progress/{batch_id}/")
async def progress_batch(web: Any, request: Any, batch_id: str) -> Any:
    if request.headers.get(HOP_HEADER):
        return _local_batch(web, batch_id)  # forwarded once already: answer or refuse
    owner = owner_of(batch_id)
    if owner is None:
        return _unavailable(web, "no owner known for this batch yet")
    if _ident(owner) == _me():
        return _local_batch(web, batch_id)
    url = str(URL(owner) / "progress" / batch_id) + "/"
    try:
        status, body = await _fetch_json(url, headers={HOP_HEADER: "1"})
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return _unavailable(web, f"owner {owner} did not answer: {type(exc).__name__}")
    return web.json(body, status=status)


@app.page("/")
async def index(web: Any, request: Any) -> Any:
    return web.html(INDEX_HTML)
