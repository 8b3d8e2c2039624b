"""Tests for the callback sink (in-process on port 0)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simapp.embedded.sink import SinkConfig, serve

REPO_ROOT = Path(__file__).resolve().parents[1]


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    runner, port = await serve(SinkConfig(port=0, **overrides))
    session = aiohttp.ClientSession()
    try:
        yield f"http://127.0.0.1:{port}", session
    finally:
        await session.close()
        await runner.cleanup()


async def deliver(
    s: aiohttp.ClientSession,
    base: str,
    sim_id: str,
    key: str | None = None,
    path: str = "/callback",
) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    body = {"simulation_id": sim_id, "summary": f"summary of {sim_id}"}
    async with s.post(f"{base}{path}", json=body, headers=headers) as r:
        return r.status, r.headers


async def get_json(s: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with s.get(url, params=params) as r:
        assert r.status == 200
        return await r.json()


@pytest.mark.asyncio
async def test_fail_first_then_success_per_key() -> None:
    async with running(fail_first=2) as (base, s):
        assert [(await deliver(s, base, "sim-1", key="k1"))[0] for _ in range(3)] == [503, 503, 200]
        # Keys are independent; without a header the simulation_id is the key.
        assert [(await deliver(s, base, "sim-2"))[0] for _ in range(3)] == [503, 503, 200]
        rec = await get_json(s, f"{base}/received")
        assert rec["count"] == 2
        assert rec["attempts"] == 6
        assert rec["unique_ids"] == 2
        assert rec["duplicates"] == 0


@pytest.mark.asyncio
async def test_duplicates_paging_and_lookup() -> None:
    async with running() as (base, s):
        for sim_id in ("a", "b", "a", "c", "a"):
            assert (await deliver(s, base, sim_id, key=f"idem-{sim_id}"))[0] == 200
        rec = await get_json(s, f"{base}/received")
        assert (rec["count"], rec["attempts"], rec["unique_ids"], rec["duplicates"]) == (5, 5, 3, 2)
        assert [i["simulation_id"] for i in rec["items"]] == ["a", "b", "a", "c", "a"]
        page = await get_json(s, f"{base}/received", limit="2", offset="1")
        assert [i["simulation_id"] for i in page["items"]] == ["b", "a"]
        ids = await get_json(s, f"{base}/received", ids="1")
        assert ids["ids"] == ["a", "b", "c"] and "items" not in ids
        one = await get_json(s, f"{base}/received/a")
        assert one["count"] == 3
        d = one["deliveries"][0]
        assert d["path"] == "/callback"
        assert d["headers"]["Idempotency-Key"] == "idem-a"
        assert d["headers"]["Content-Type"].startswith("application/json")
        assert d["body"]["summary"] == "summary of a"
        assert isinstance(d["received_at"], float)
        none = await get_json(s, f"{base}/received/zzz")
        assert none["count"] == 0 and none["deliveries"] == []


@pytest.mark.asyncio
async def test_non_json_rejected() -> None:
    async with running() as (base, s):
        async with s.post(
            f"{base}/hook", data=b"{not json", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
        rec = await get_json(s, f"{base}/received")
        assert rec["count"] == 0 and rec["attempts"] == 1


@pytest.mark.asyncio
async def test_down_429_delay_and_admin() -> None:
    async with running(down=True) as (base, s):
        assert (await deliver(s, base, "x"))[0] == 500
        async with s.post(
            f"{base}/admin/config", json={"down": False, "status_429_first": 1, "fail_first": 1}
        ) as r:
            assert r.status == 200
        status, headers = await deliver(s, base, "x")
        assert status == 429 and headers["Retry-After"] == "1"
        assert (await deliver(s, base, "x"))[0] == 503
        assert (await deliver(s, base, "x"))[0] == 200
        async with s.post(f"{base}/admin/config", json={"delay_ms": "slow"}) as r:
            assert r.status == 400
        async with s.post(
            f"{base}/admin/config", json={"delay_ms": 200, "status_429_first": 0, "fail_first": 0}
        ) as r:
            assert r.status == 200
        t0 = time.monotonic()
        assert (await deliver(s, base, "y"))[0] == 200
        assert time.monotonic() - t0 >= 0.19
        async with s.post(f"{base}/admin/reset") as r:
            assert r.status == 200
        rec = await get_json(s, f"{base}/received")
        assert (rec["count"], rec["attempts"], rec["unique_ids"]) == (0, 0, 0)
        async with s.get(f"{base}/healthz") as r:
            assert r.status == 200 and await r.text() == "ok"


@pytest.mark.asyncio
async def test_record_file(tmp_path: Path) -> None:
    record = tmp_path / "out.jsonl"
    async with running(record=str(record), flush_interval_s=0.05) as (base, s):
        await deliver(s, base, "r1", key="k-r1")
        async with s.post(f"{base}/admin/flush") as r:
            assert r.status == 200
        lines = record.read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["body"]["simulation_id"] == "r1"
        await deliver(s, base, "r2")
    # Shutdown flushes the rest.
    lines = record.read_text().splitlines()
    assert [json.loads(line)["body"]["simulation_id"] for line in lines] == ["r1", "r2"]
    assert json.loads(lines[0])["headers"]["Idempotency-Key"] == "k-r1"


@pytest.mark.asyncio
async def test_cli_prints_ready_line(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    record = tmp_path / "cli.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simapp.embedded.sink",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--record",
        str(record),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert line.startswith("SINK_READY port=")
        port = int(line.split("=", 1)[1])
        async with aiohttp.ClientSession() as s:
            assert (await deliver(s, f"http://127.0.0.1:{port}", "cli-1"))[0] == 200
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert json.loads(record.read_text())["body"]["simulation_id"] == "cli-1"
