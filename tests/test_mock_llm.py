"""Tests for the mock OpenAI-compatible LLM server (in-process on port 0)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simapp.embedded.mock_llm import MockConfig, generate_reply, serve

REPO_ROOT = Path(__file__).resolve().parents[1]
USER_SYSTEM_PROMPT = """You are a customer.
Persona: Maria Lopez
Stop marker: <<DONE-42>>
Be brief."""


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """Start a server with zero latency unless overridden; yield base URL and a session."""
    overrides.setdefault("latency_ms", 0)
    runner, port = await serve(MockConfig(port=0, **overrides))
    session = aiohttp.ClientSession()
    try:
        yield f"http://127.0.0.1:{port}", session
    finally:
        await session.close()
        await runner.cleanup()


def chat_body(
    content: str = "How do I reset my password?", model: str = "mock-model"
) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


async def post_chat(
    session: aiohttp.ClientSession, base: str, body: dict[str, Any], **kw: Any
) -> tuple[int, dict[str, Any], Any]:
    async with session.post(f"{base}/v1/chat/completions", json=body, **kw) as resp:
        return resp.status, await resp.json(), resp.headers


@pytest.mark.asyncio
async def test_reply_shape_and_usage() -> None:
    async with running() as (base, s):
        status, data, _ = await post_chat(
            s, base, chat_body("How do I reset my password quickly please?")
        )
        assert status == 200
        assert data["object"] == "chat.completion"
        assert data["id"].startswith("chatcmpl-")
        assert isinstance(data["created"], int)
        assert data["model"] == "mock-model"
        choice = data["choices"][0]
        assert choice["index"] == 0 and choice["finish_reason"] == "stop"
        assert choice["message"]["role"] == "assistant"
        content = choice["message"]["content"]
        assert "How do I reset my password" in content
        usage = data["usage"]
        assert usage["prompt_tokens"] == 8
        assert usage["completion_tokens"] == len(content.split())
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        # Deterministic for the same input, and the alias path works too.
        async with s.post(
            f"{base}/chat/completions", json=chat_body("How do I reset my password quickly please?")
        ) as r:
            assert r.status == 200
            assert (await r.json())["choices"][0]["message"]["content"] == content


def _user_sim_messages(first: str, history: list[str]) -> list[dict[str, str]]:
    """Messages as the simulator sends them to the *user* model: roles are flipped."""
    msgs = [
        {
            "role": "system",
            "content": USER_SYSTEM_PROMPT,
        },
        {"role": "user", "content": first},
    ]
    for i, text in enumerate(history):
        msgs.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return msgs


@pytest.mark.parametrize(
    "first",
    [
        "Hello, my order 1234 never arrived.",
        "Hi, I need a refund for the broken blender.",
        "Can I change my delivery address?",
        "Why was I charged twice this month?",
        "My account got locked after the update.",
        "Is the warranty transferable to a new owner?",
    ],
)
def test_simulated_user_stops_after_k_turns(first: str) -> None:
    k = 1 + zlib.crc32(first.encode()) % 4
    history: list[str] = []
    for turn in range(1, 6):
        reply = generate_reply(_user_sim_messages(first, history))
        assert "Maria Lopez" in reply
        if reply.endswith(" <<DONE-42>>"):
            assert turn == k
            break
        assert "<<DONE-42>>" not in reply and reply.endswith("?")
        history += [reply, f"Assistant answer {turn} about shipping refunds"]
    else:
        pytest.fail("simulated user never produced the stop marker")


@pytest.mark.asyncio
async def test_simulated_user_over_http_and_k_varies() -> None:
    firsts = [f"Event number {i}: my parcel is late" for i in range(12)]
    ks = {1 + zlib.crc32(f.encode()) % 4 for f in firsts}
    assert len(ks) > 1  # k really varies by event
    async with running() as (base, s):
        first = firsts[0]
        k = 1 + zlib.crc32(first.encode()) % 4
        history: list[str] = []
        for turn in range(1, k + 1):
            status, data, _ = await post_chat(
                s, base, {"model": "mock-user", "messages": _user_sim_messages(first, history)}
            )
            assert status == 200
            reply = data["choices"][0]["message"]["content"]
            assert reply.endswith(" <<DONE-42>>") == (turn == k)
            history += [reply, "Here is what you can do about the parcel."]


@pytest.mark.asyncio
async def test_auth_required_when_api_key_set() -> None:
    async with running(api_key="sk-good") as (base, s):
        status, data, _ = await post_chat(
            s, base, chat_body(), headers={"Authorization": "Bearer sk-bad"}
        )
        assert status == 401
        assert data["error"]["type"] == "authentication_error"
        status, _, _ = await post_chat(s, base, chat_body())
        assert status == 401
        status, _, _ = await post_chat(
            s, base, chat_body(), headers={"Authorization": "Bearer sk-good"}
        )
        assert status == 200


@pytest.mark.asyncio
async def test_unknown_model_404() -> None:
    async with running(unknown_models=["mock-unknown", "gpt-nope"]) as (base, s):
        for model in ("mock-unknown", "gpt-nope"):
            status, data, _ = await post_chat(s, base, chat_body(model=model))
            assert status == 404
            assert data["error"]["code"] == "model_not_found"
            assert data["error"]["type"] == "invalid_request_error"
            assert data["error"]["message"] == f"The model `{model}` does not exist"


@pytest.mark.asyncio
async def test_bad_request_400() -> None:
    async with running() as (base, s):
        async with s.post(f"{base}/v1/chat/completions", data=b"not json") as r:
            assert r.status == 400
        status, _, _ = await post_chat(s, base, {"model": "m", "messages": []})
        assert status == 400


@pytest.mark.asyncio
async def test_rps_limit_429_and_window_math() -> None:
    async with running(rps_limit=10) as (base, s):
        results = await asyncio.gather(
            *(post_chat(s, base, chat_body(f"q {i}")) for i in range(30))
        )
        statuses = [r[0] for r in results]
        assert statuses.count(200) == 10
        assert statuses.count(429) == 20
        for status, data, headers in results:
            if status == 429:
                assert headers["Retry-After"] == "1"
                assert data == {
                    "error": {
                        "message": "Rate limit exceeded",
                        "type": "rate_limit_error",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                }
        async with s.get(f"{base}/stats") as r:
            st = await r.json()
        assert st["requests"] == 30
        assert st["max_1s_window"] == 30
        assert st["max_1s_window_admitted"] == 10
        assert st["rate_limited"] == 20
        assert st["responses_by_status"] == {"200": 10, "429": 20}
        assert st["by_model"] == {"mock-model": 30}
        assert st["in_flight"] == 0 and st["max_in_flight"] >= 1
        assert st["first_request_at"] <= st["last_request_at"]

        # After the window slides past, requests are admitted again.
        await asyncio.sleep(1.05)
        status, _, _ = await post_chat(s, base, chat_body())
        assert status == 200


@pytest.mark.asyncio
async def test_force_429_storm_and_retry_after_format() -> None:
    async with running(force_429_count=3, retry_after_s=0.5) as (base, s):
        statuses = []
        for _ in range(4):
            status, _, headers = await post_chat(s, base, chat_body())
            statuses.append(status)
            if status == 429:
                assert headers["Retry-After"] == "0.5"
        assert statuses == [429, 429, 429, 200]


@pytest.mark.asyncio
async def test_fail_next_then_recover() -> None:
    async with running(fail_next=2) as (base, s):
        statuses = [(await post_chat(s, base, chat_body()))[0] for _ in range(3)]
        assert statuses == [500, 500, 200]
        # Runtime reconfiguration.
        async with s.post(f"{base}/admin/config", json={"fail_next": 1}) as r:
            assert r.status == 200 and (await r.json())["fail_next"] == 1
        status, data, _ = await post_chat(s, base, chat_body())
        assert status == 500 and data["error"]["type"] == "server_error"
        assert (await post_chat(s, base, chat_body()))[0] == 200


@pytest.mark.asyncio
async def test_error_rate_returns_500_and_503() -> None:
    async with running(error_rate=1.0) as (base, s):
        statuses = [(await post_chat(s, base, chat_body()))[0] for _ in range(4)]
        assert set(statuses) == {500, 503}


@pytest.mark.asyncio
async def test_hang_until_client_gives_up() -> None:
    async with running(hang_rate=1.0) as (base, s):
        with pytest.raises(asyncio.TimeoutError):
            await post_chat(s, base, chat_body(), timeout=aiohttp.ClientTimeout(total=0.3))
        async with s.get(f"{base}/stats") as r:
            st = await r.json()
        assert st["hung"] == 1
        deadline = time.monotonic() + 2
        while st["in_flight"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            async with s.get(f"{base}/stats") as r:
                st = await r.json()
        assert st["in_flight"] == 0


@pytest.mark.asyncio
async def test_latency_and_jitter() -> None:
    async with running(latency_ms=150, latency_jitter_ms=20) as (base, s):
        t0 = time.monotonic()
        assert (await post_chat(s, base, chat_body()))[0] == 200
        elapsed = time.monotonic() - t0
        assert 0.12 <= elapsed < 1.0


@pytest.mark.asyncio
async def test_admin_config_validation_reset_and_detail() -> None:
    async with running() as (base, s):
        async with s.post(f"{base}/admin/config", json={"nope": 1}) as r:
            assert r.status == 400
        async with s.post(f"{base}/admin/config", json={"error_rate": 2}) as r:
            assert r.status == 400
        for _ in range(3):
            await post_chat(s, base, chat_body(model="a"))
        await asyncio.sleep(0.2)
        await post_chat(s, base, chat_body(model="b"))
        async with s.get(f"{base}/stats", params={"detail": "1"}) as r:
            st = await r.json()
        times = st["admitted_times"]
        assert len(times) == 4 and times[0] == 0.0
        assert times[3] - times[2] >= 0.19  # the pause is visible
        assert len(st["admitted_times_by_model"]["a"]) == 3
        assert st["rate_limited_times"] == []
        async with s.post(f"{base}/admin/reset") as r:
            assert r.status == 200
        async with s.get(f"{base}/stats") as r:
            st = await r.json()
        assert st["requests"] == 0 and st["first_request_at"] is None
        assert st["max_1s_window"] == 0 and "admitted_times" not in st
        async with s.get(f"{base}/healthz") as r:
            assert r.status == 200 and await r.text() == "ok"


@pytest.mark.asyncio
async def test_cli_prints_ready_line() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simapp.embedded.mock_llm",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--latency-ms",
        "0",
        "--api-key",
        "k",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert line.startswith("MOCK_LLM_READY port=")
        port = int(line.split("=", 1)[1])
        assert port > 0
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{port}/admin/config") as r:
                assert (await r.json())["api_key"] == "k"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


def test_lognormal_latency_has_the_configured_mean_sd_and_p99() -> None:
    """`--latency-distribution lognormal`: mean latency_ms, standard deviation jitter_ms, and
    the p99 the bench reports (8 ± 4 s: about 21.5 s)."""
    import random
    import statistics

    from simapp.embedded.mock_llm import MockConfig, draw_latency_ms, latency_p99_ms

    cfg = MockConfig(latency_ms=8000, latency_jitter_ms=4000, latency_distribution="lognormal")
    rng = random.Random(7)
    drawn = sorted(draw_latency_ms(cfg, rng) for _ in range(50_000))
    assert statistics.fmean(drawn) == pytest.approx(8000, rel=0.02)
    assert statistics.pstdev(drawn) == pytest.approx(4000, rel=0.05)
    assert drawn[int(0.99 * len(drawn))] == pytest.approx(latency_p99_ms(cfg), rel=0.05)
    assert latency_p99_ms(cfg) == pytest.approx(21_500, rel=0.01)


@pytest.mark.asyncio
async def test_an_unknown_latency_distribution_is_refused() -> None:
    async with running() as (base, s):
        async with s.post(f"{base}/admin/config", json={"latency_distribution": "pareto"}) as r:
            assert r.status == 400
        async with s.post(f"{base}/admin/config", json={"latency_distribution": "lognormal"}) as r:
            assert r.status == 200
