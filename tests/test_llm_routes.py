"""Both LLM routes we ship, over real HTTP to the mock provider (in this process, port 0):
the OpenAI protocol spoken directly, and the LiteLLM library. Each must read the wire the same
way (429 + Retry-After, 401, a context-window 400), keep token usage and cost, send through
the worker's LLM session so the send gate sees every write, pass the caller's sampling options,
and never let our budget header reach the provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from simapp.config import load_settings
from simapp.embedded.mock_llm import MockConfig, serve
from simapp.limits.retry import retry_after_seconds
from simapp.llm.errors import CONTEXT_WINDOW, FATAL, RATE_LIMITED, ProviderError
from simapp.simulation.conversation import LLMError
from simapp.worker.parts import llm_client, rate_limits

MODEL = "gpt-4"  # priced in LiteLLM's cost map
ROUTES = ["openai", "litellm"]
HI = [{"role": "user", "content": "hello there"}]


@asynccontextmanager
async def provider(**config: Any) -> AsyncIterator[tuple[str, Any]]:
    """The mock on a free port; yields its base URL and a function reading its JSON views."""
    config.setdefault("latency_ms", 1)
    runner, port = await serve(MockConfig(**config))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:

        async def view(path: str, body: dict | None = None) -> Any:
            method = session.post if body is not None else session.get
            async with method(base + path, json=body) as resp:
                return await resp.json()

        try:
            yield base, view
        finally:
            await runner.cleanup()


def client_for(route: str, base: str, key: str, **settings: Any) -> Any:
    s = load_settings(
        _env_file=None, llm_backend_url=f"{base}/v1", llm_api_key=key, llm_route=route, **settings
    )
    limits = rate_limits(s)
    return llm_client(s, limits), limits


@pytest.mark.parametrize("route", ROUTES)
def test_each_route_reads_429_401_and_context_window_the_same(route: str) -> None:
    async def scenario() -> list[tuple[str, int | None, float | None]]:
        seen = []
        async with provider(force_429_count=1, retry_after_s=2, api_key="right") as (base, view):
            for key, words in (("right", 2), ("wrong", 2), ("right", 50)):
                if words == 50:
                    await view("/admin/config", {"context_window_tokens": 20})
                client, limits = client_for(route, base, key)
                backend = client.backends["default"]
                try:
                    messages = [{"role": "user", "content": " ".join(["word"] * words)}]
                    await backend.route.send(MODEL, messages, limits.for_call(MODEL))
                except ProviderError as exc:
                    seen.append((exc.kind, exc.status, retry_after_seconds(exc.headers)))
                finally:
                    await client.close()
        return seen

    assert asyncio.run(scenario()) == [
        (RATE_LIMITED, 429, 2.0),
        (FATAL, 401, None),
        (CONTEXT_WINDOW, 400, None),
    ]


@pytest.mark.parametrize("route", ROUTES)
def test_client_pauses_the_budget_for_retry_after_then_ends_on_401(route: str) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with provider(force_429_count=1, retry_after_s=2, api_key="right") as (base, view):
            client, limits = client_for(route, base, "wrong-key-123", llm_retry_attempts=3)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(LLMError) as info:
                await client.complete(MODEL, HI)
            took = loop.time() - started
            await client.close()
            stats = await view("/stats")
        return info.value, took, limits.backend().stats.pauses, stats["requests"]

    error, took, pauses, requests = asyncio.run(scenario())
    assert error.end_reason == "llm_error" and "401" in str(error)
    assert "wrong-key-123" not in str(error)  # the API key never ends up in a summary
    assert pauses == 1 and took >= 1.95  # the 429 paused the budget for its Retry-After
    assert requests == 2  # the 429 and the 401: a 401 is not retried


@pytest.mark.parametrize("route", ROUTES)
def test_route_keeps_usage_cost_options_and_the_send_gate(route: str) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with provider(api_key="right") as (base, view):
            # 1 rps without margin: one write fills the window, so the gate must know of it
            client, limits = client_for(
                route, base, "right", llm_rate_limit_rps=1, llm_rate_safety_margin=0
            )
            started = asyncio.get_running_loop().time()
            reply = await client.complete(MODEL, HI, temperature=0.25, max_tokens=77)
            # asked as of before the call, so the answer does not depend on how long it took:
            # a recorded write at or after `started` holds the next one for a whole window
            held = limits.backend().send_wait(started)
            await client.close()
            stats, recent = await view("/stats"), await view("/requests")
        return reply, held, stats, recent["requests"]

    reply, held, stats, requests = asyncio.run(scenario())
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    assert reply.cost_usd is not None and reply.cost_usd > 0
    assert held >= 1.0, "the write was not recorded by the send gate"
    assert stats["client_headers"] == 0, "our budget header reached the provider"
    (request,) = requests
    assert (request["model"], request["temperature"], request["max_tokens"]) == (MODEL, 0.25, 77)


@pytest.mark.parametrize("route", ROUTES)
def test_context_window_ends_the_call_without_retries(route: str) -> None:
    async def scenario() -> tuple[LLMError, int]:
        async with provider(context_window_tokens=3) as (base, view):
            client, _ = client_for(route, base, "k", llm_retry_attempts=3)
            with pytest.raises(LLMError) as info:
                await client.complete(MODEL, [{"role": "user", "content": "far too many words"}])
            await client.close()
            return info.value, (await view("/stats"))["requests"]

    error, requests = asyncio.run(scenario())
    assert error.end_reason == "context_window_exceeded"
    assert requests == 1
