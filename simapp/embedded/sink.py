"""Callback sink that records delivered simulation summaries.

Stands in for the customer's webhook endpoint so delivery, retry and
idempotency behaviour can be tested, including injected faults (503 for the
first N attempts per key, 429 with Retry-After, full outage, slow answers). Given the
callbacks' signing secret (`signing_secret`, at runtime through /admin/config) it verifies every
delivery as a Standard Webhooks receiver does, with the `standardwebhooks` package (the dev
extra), and answers 401 to one that does not verify.

Run: ``python -m simapp.embedded.sink --host 127.0.0.1 --port 0 --record out.jsonl``;
it prints ``SINK_READY port=<port>`` once it is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from simapp.embedded.httpserver import run_until_signal, serve_app

READY_PREFIX = "SINK_READY"
RECORDED_HEADERS = (
    "Idempotency-Key",
    "Content-Type",
    "User-Agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)


@dataclass
class SinkConfig:
    """Sink behaviour; fault fields are changeable at runtime via /admin/config."""

    host: str = "127.0.0.1"
    port: int = 0
    record: str | None = None
    fail_first: int = 0
    down: bool = False
    down_status: int = 500  # what a down sink answers (503: a receiver being deployed)
    delay_ms: int = 0
    status_429_first: int = 0
    signing_secret: str | None = None  # whsec_...: verify every delivery's signature
    flush_interval_s: float = 0.2


_RUNTIME_INT_FIELDS = ("fail_first", "delay_ms", "status_429_first")


def _coerce_field(name: str, value: Any) -> Any:
    """Validate one runtime config value so bad admin calls fail loudly."""
    if name in _RUNTIME_INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
        return value
    if name == "down":
        if not isinstance(value, bool):
            raise ValueError("down must be a boolean")
        return value
    if name == "signing_secret":
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith("whsec_"):
            raise ValueError("signing_secret must be a whsec_... secret or null")
        try:
            import standardwebhooks
        except ImportError:
            raise ValueError("signing_secret needs the standardwebhooks package") from None
        standardwebhooks.Webhook(value)  # a bad secret fails here, not at the first delivery
        return value
    if name == "down_status":
        if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
            raise ValueError("down_status must be an HTTP error status (400..599)")
        return value
    raise ValueError(f"unknown or read-only config field: {name}")


class RecordWriter:
    """Buffers JSON lines and appends them off-loop so requests never block on disk."""

    def __init__(self, path: str | None, interval_s: float) -> None:
        self.path = Path(path) if path else None
        self.interval_s = interval_s
        self.buffer: list[str] = []
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None

    def add(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            self.buffer.append(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def _write(self, lines: list[str]) -> None:
        assert self.path is not None
        with self.path.open("a", encoding="utf-8") as fh:
            fh.writelines(lines)

    async def flush(self) -> None:
        # The lock keeps concurrent flushes from reordering lines in the file.
        async with self.lock:
            if not self.buffer or self.path is None:
                return
            lines, self.buffer = self.buffer, []
            await asyncio.get_running_loop().run_in_executor(None, self._write, lines)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    def start(self) -> None:
        if self.path is not None and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await self.flush()


class SinkState:
    """Deliveries and counters; touched only from the event loop."""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.writer = RecordWriter(config.record, config.flush_interval_s)
        self.reset()

    def reset(self) -> None:
        self.attempts = 0
        self.attempts_by_key: dict[str, int] = {}
        self.responses_by_status: dict[str, int] = {}
        self.deliveries: list[dict[str, Any]] = []
        self.by_id: dict[str, list[dict[str, Any]]] = {}
        self.duplicates = 0
        self.signature_failures = 0


STATE_KEY = web.AppKey("sink_state", SinkState)


def _delivery_id(body: Any, idem_key: str | None) -> str | None:
    """Simulation id identifies a delivery; the Idempotency-Key is the fallback."""
    if isinstance(body, dict) and body.get("simulation_id") is not None:
        return str(body["simulation_id"])
    return idem_key


def _respond(
    state: SinkState, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    key = str(status)
    state.responses_by_status[key] = state.responses_by_status.get(key, 0) + 1
    return web.json_response(body, status=status, headers=headers)


async def receive(request: web.Request) -> web.Response:
    """Accept a callback POST, applying configured faults per idempotency key."""
    if request.path.startswith("/admin/"):
        raise web.HTTPNotFound()
    state = request.app[STATE_KEY]
    cfg = state.config
    state.attempts += 1
    if cfg.delay_ms > 0:
        await asyncio.sleep(cfg.delay_ms / 1000.0)

    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _respond(state, 400, {"error": "body must be JSON"})

    if cfg.signing_secret is not None:
        problem = _signature_problem(cfg.signing_secret, raw, request)
        if problem is not None:
            state.signature_failures += 1
            return _respond(state, 401, {"error": f"signature: {problem}"})

    idem_header = request.headers.get("Idempotency-Key")
    sim_id = body.get("simulation_id") if isinstance(body, dict) else None
    fault_key = idem_header or (str(sim_id) if sim_id is not None else "<none>")

    if cfg.down:
        return _respond(state, cfg.down_status, {"error": "sink is down"})

    n = state.attempts_by_key.get(fault_key, 0) + 1
    state.attempts_by_key[fault_key] = n
    if n <= cfg.status_429_first:
        return _respond(state, 429, {"error": "too many requests"}, headers={"Retry-After": "1"})
    if n <= cfg.status_429_first + cfg.fail_first:
        return _respond(state, 503, {"error": "temporarily unavailable"})

    delivery_id = _delivery_id(body, idem_header)
    record = {
        "received_at": time.time(),
        "path": request.path,
        "headers": {h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers},
        "body": body,
        "verified": cfg.signing_secret is not None,
    }
    duplicate = delivery_id is not None and delivery_id in state.by_id
    if duplicate:
        state.duplicates += 1
    state.deliveries.append(record)
    if delivery_id is not None:
        state.by_id.setdefault(delivery_id, []).append(record)
    state.writer.add(record)
    return _respond(state, 200, {"ok": True, "duplicate": duplicate, "simulation_id": delivery_id})


def _signature_problem(secret: str, raw: bytes, request: web.Request) -> str | None:
    """Why the delivery does not verify as Standard Webhooks (None when it does)."""
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    try:
        Webhook(secret).verify(raw, dict(request.headers), json_parse=False)
    except WebhookVerificationError as exc:
        return str(exc)
    return None


def _query_int(request: web.Request, name: str, default: int | None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return max(0, int(value))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from exc


async def received(request: web.Request) -> web.Response:
    """Counters plus a page of delivered bodies (or the distinct ids with ?ids=1)."""
    state = request.app[STATE_KEY]
    out: dict[str, Any] = {
        "count": len(state.deliveries),
        "attempts": state.attempts,
        "unique_ids": len(state.by_id),
        "duplicates": state.duplicates,
        "signature_failures": state.signature_failures,
        "responses_by_status": dict(state.responses_by_status),
    }
    if request.query.get("ids", "") not in ("", "0", "false"):
        out["ids"] = list(state.by_id)
        return web.json_response(out)
    offset = _query_int(request, "offset", 0) or 0
    limit = _query_int(request, "limit", None)
    end = None if limit is None else offset + limit
    out["items"] = [d["body"] for d in state.deliveries[offset:end]]
    return web.json_response(out)


async def received_one(request: web.Request) -> web.Response:
    """All recorded deliveries for one simulation id (count 0 if none yet)."""
    state = request.app[STATE_KEY]
    sim_id = request.match_info["simulation_id"]
    deliveries = state.by_id.get(sim_id, [])
    return web.json_response(
        {"simulation_id": sim_id, "count": len(deliveries), "deliveries": deliveries}
    )


async def admin_config(request: web.Request) -> web.Response:
    """Apply a partial config update atomically (all fields valid or nothing changes)."""
    state = request.app[STATE_KEY]
    if request.method == "POST":
        try:
            update = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(update, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        try:
            coerced = {k: _coerce_field(k, v) for k, v in update.items()}
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for k, v in coerced.items():
            setattr(state.config, k, v)
    shown = dataclasses.asdict(state.config)
    if shown["signing_secret"] is not None:
        shown["signing_secret"] = "whsec_***"  # never echoed
    return web.json_response(shown)


async def admin_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"ok": True})


async def admin_flush(request: web.Request) -> web.Response:
    """Force the record file up to date (handy before reading it in tests)."""
    await request.app[STATE_KEY].writer.flush()
    return web.json_response({"ok": True})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _on_startup(app: web.Application) -> None:
    app[STATE_KEY].writer.start()


async def _on_cleanup(app: web.Application) -> None:
    await app[STATE_KEY].writer.stop()


def build_app(config: SinkConfig) -> web.Application:
    """Create the aiohttp app; the config object is mutated by /admin/config."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = SinkState(config)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/received", received)
    app.router.add_get("/received/{simulation_id}", received_one)
    app.router.add_get("/admin/config", admin_config)
    app.router.add_post("/admin/config", admin_config)
    app.router.add_post("/admin/reset", admin_reset)
    app.router.add_post("/admin/flush", admin_flush)
    app.router.add_post("/{tail:.*}", receive)
    app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    return app


async def serve(config: SinkConfig) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner (call ``cleanup()``) and the bound port."""
    return await serve_app(build_app(config), config.host, config.port)


def parse_args(argv: list[str] | None = None) -> SinkConfig:
    d = SinkConfig()
    p = argparse.ArgumentParser(
        prog="python -m simapp.embedded.sink", description=__doc__.splitlines()[0]
    )
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    p.add_argument("--record", default=d.record, help="append deliveries to this JSONL file")
    p.add_argument("--fail-first", type=int, default=d.fail_first)
    p.add_argument("--down", action="store_true", default=d.down)
    p.add_argument("--delay-ms", type=int, default=d.delay_ms)
    p.add_argument("--status-429-first", type=int, default=d.status_429_first)
    p.add_argument("--flush-interval-s", type=float, default=d.flush_interval_s)
    a = p.parse_args(argv)
    return SinkConfig(
        host=a.host,
        port=a.port,
        record=a.record,
        fail_first=a.fail_first,
        down=a.down,
        delay_ms=a.delay_ms,
        status_429_first=a.status_429_first,
        flush_interval_s=a.flush_interval_s,
    )


def main(argv: list[str] | None = None) -> int:
    return run_until_signal(parse_args(argv), serve, READY_PREFIX)


if __name__ == "__main__":
    sys.exit(main())
