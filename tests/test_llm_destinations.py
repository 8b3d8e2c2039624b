"""Where a model name sends the worker's LLM traffic, and what an event may name (issue 20,
point 3): LiteLLM's provider and api_base for a name, the address rule applied to it when the
event is decoded and again when the LLM session connects, ALLOWED_MODELS globs,
ALLOWED_PROVIDERS, which provider gets LLM_API_KEY, one breaker per provider. In process,
against the mock provider on loopback; the worker's real path is in tests/test_outbound.py.
The modules this change added are imported inside the tests that use them, so each test runs
(and fails for its own reason) on the code before it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from simapp.config import load_settings
from simapp.embedded.mock_llm import MockConfig, serve
from simapp.limits.budgets import RateLimits
from simapp.llm.completion import LLMError
from simapp.llm.session import llm_session
from simapp.simulation.schemas import EventDecoder, Rejection, SimulationEvent
from simapp.worker.parts import llm_client, rate_limits

# Variables LiteLLM reads for a base URL, cleared so the defaults show.
BASE_VARIABLES = [
    "OLLAMA_API_BASE",
    "LEMONADE_API_BASE",
    "LLAMAFILE_API_BASE",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "ANTHROPIC_API_BASE",
    "ANTHROPIC_BASE_URL",
    "HOSTED_VLLM_API_BASE",
    "AZURE_API_BASE",
]
EVENT = {
    "id": "sim-ok",
    "persona": {"name": "Ann"},
    "intent": "Hello",
    "max_iterations": 2,
    "callback_url": "https://api.example.com/cb",
    "model": "gpt-4o",
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in BASE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def litellm_settings(**kw: Any) -> Any:
    """Settings of a worker on the LiteLLM route without a backend URL."""
    return load_settings(_env_file=None, llm_route="litellm", **kw)


def decode(event: dict, **kw: Any) -> SimulationEvent | Rejection:
    return EventDecoder(litellm_settings(**kw)).decode(json.dumps(event).encode())


# ----- what LiteLLM resolves for a name -------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "provider", "base_url"),
    [
        ("ollama/llama3", "ollama", "http://localhost:11434"),
        ("ollama_chat/llama3", "ollama_chat", "http://localhost:11434"),  # LOCAL_DEFAULTS
        ("lemonade/x", "lemonade", "http://localhost:8000/api/v1"),
        ("llamafile/x", "llamafile", "http://127.0.0.1:8080/v1"),
        ("anthropic/claude-3", "anthropic", None),  # the provider's service, built per call
        ("gpt-4o", "openai", None),
        ("bedrock/anthropic.claude-3-sonnet-20240229-v1:0", "bedrock", None),
        ("azure/my-deployment", "azure", None),
        ("groq/llama3", "groq", "https://api.groq.com/openai/v1"),
    ],
)
def test_where_litellm_sends_a_name(
    clean_env: pytest.MonkeyPatch, model: str, provider: str, base_url: str | None
) -> None:
    from simapp.llm.destinations import LiteLLMDestinations

    where = LiteLLMDestinations(10).resolve(model)
    assert (where.provider, where.base_url) == (provider, base_url)


def test_the_providers_base_url_variables_count(clean_env: pytest.MonkeyPatch) -> None:
    from simapp.llm.destinations import LiteLLMDestinations, ModelPolicy

    clean_env.setenv("OLLAMA_API_BASE", "http://10.1.2.3:11434")
    clean_env.setenv("ANTHROPIC_API_BASE", "http://169.254.169.254")
    clean_env.setenv("OPENAI_BASE_URL", "https://proxy.example.com/v1")
    resolve = LiteLLMDestinations(10).resolve
    assert resolve("ollama/llama3").base_url == "http://10.1.2.3:11434"
    assert resolve("ollama_chat/llama3").base_url == "http://10.1.2.3:11434"
    assert resolve("anthropic/claude-3").base_url == "http://169.254.169.254"
    assert resolve("gpt-4o").base_url == "https://proxy.example.com/v1"
    policy = ModelPolicy(litellm_settings())
    assert policy.refusal("anthropic/claude-3")[0] == "invalid_field"  # type: ignore[index]
    assert policy.refusal("gpt-4o") is None


def test_a_name_litellm_cannot_route_is_refused() -> None:
    from simapp.llm.destinations import LiteLLMDestinations, Unroutable

    with pytest.raises(Unroutable):
        LiteLLMDestinations(10).resolve("mystery-model")
    out = decode({**EVENT, "model": "mystery-model"})
    assert isinstance(out, Rejection) and out.reason == "invalid_field"
    assert out.detail.startswith("model 'mystery-model' names no provider LiteLLM knows")


def test_login_providers_are_never_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    """GitHub Copilot's resolution runs an OAuth device flow (network, retries, a person)."""
    from simapp.llm.litellm_route import import_litellm

    litellm = import_litellm(10)

    def no(*args: Any, **kw: Any) -> Any:
        raise AssertionError("get_llm_provider called")

    monkeypatch.setattr(litellm, "get_llm_provider", no)
    out = decode({**EVENT, "model": "github_copilot/gpt-4"})
    assert isinstance(out, Rejection) and out.reason == "invalid_field"
    assert "logs in interactively" in out.detail


# ----- the decoder: every model an event names -------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": "ollama/llama3"}, "model"),
        ({"assistant": {"model": "lemonade/x"}}, "assistant.model"),
        ({"user": {"model": "llamafile/x"}}, "user.model"),
        ({"judge": {"criteria": ["ok"], "model": "ollama_chat/llama3"}}, "judge.model"),
    ],
)
def test_an_internal_destination_is_an_invalid_field(
    clean_env: pytest.MonkeyPatch, fields: dict, field: str
) -> None:
    out = decode({**EVENT, **fields})
    assert isinstance(out, Rejection) and out.reason == "invalid_field", out
    assert out.detail.startswith(f"{field} ")
    assert "internal address" in out.detail and "LLM_ALLOWED_INTERNAL_HOSTS" in out.detail


def test_the_operator_allows_an_internal_host(clean_env: pytest.MonkeyPatch) -> None:
    event = {**EVENT, "model": "ollama/llama3"}
    assert isinstance(decode(event, llm_allowed_internal_hosts="localhost"), SimulationEvent)
    assert isinstance(decode(event, llm_allowed_internal_hosts="10.0.0.0/8"), Rejection)
    clean_env.setenv("OLLAMA_API_BASE", "http://10.4.5.6:11434")
    assert isinstance(decode(event, llm_allowed_internal_hosts="10.0.0.0/8"), SimulationEvent)


def test_allowed_models_are_glob_patterns() -> None:
    kw = {"allowed_models": "gpt-4o*,anthropic/*"}
    for good in ("gpt-4o", "gpt-4o-mini", "anthropic/claude-3"):
        assert isinstance(decode({**EVENT, "model": good}, **kw), SimulationEvent), good
    for bad, field, fields in (
        ("gpt-4", "model", {"model": "gpt-4"}),
        ("groq/llama3", "user.model", {"user": {"model": "groq/llama3"}}),
    ):
        out = decode({**EVENT, **fields}, **kw)
        assert isinstance(out, Rejection) and out.reason == "unknown_model"
        assert out.detail == f"{field} {bad!r} is not in ALLOWED_MODELS"


def test_allowed_providers_narrow_the_providers() -> None:
    kw = {"allowed_providers": "anthropic,groq"}
    assert isinstance(decode({**EVENT, "model": "anthropic/claude-3"}, **kw), SimulationEvent)
    assert isinstance(decode({**EVENT, "model": "groq/llama3"}, **kw), SimulationEvent)
    out = decode({**EVENT, "judge": {"criteria": ["ok"], "model": "gpt-4o-mini"}}, **kw)
    assert isinstance(out, Rejection) and out.reason == "unknown_model"
    assert out.detail.startswith("model 'gpt-4o' goes to provider 'openai'")  # model first
    assert "ALLOWED_PROVIDERS" in out.detail


def test_the_direct_route_never_loads_litellm() -> None:
    """Every model goes to LLM_BACKEND_URL: the rules are ALLOWED_MODELS and ALLOWED_PROVIDERS
    (the name's prefix, else openai), and deciding them costs no `import litellm`."""
    code = """
import json, sys
from simapp.config import load_settings
from simapp.simulation.schemas import EventDecoder
s = load_settings(_env_file=None, llm_backend_url="http://127.0.0.1:9/v1",
                  allowed_providers="openai,anthropic")
d = EventDecoder(s)
base = json.loads(sys.argv[1])
for model in ("ollama/llama3", "anthropic/claude-3", "gpt-4o"):
    out = d.decode(json.dumps({**base, "model": model}).encode())
    print(model, getattr(out, "reason", "event"))
print("litellm" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(EVENT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    assert out[:4] == [
        "ollama/llama3 unknown_model",
        "anthropic/claude-3 event",
        "gpt-4o event",
        "False",
    ]


def test_an_unknown_endpoint_is_named_but_the_configured_ones_are_not() -> None:
    endpoints = json.dumps(
        {"acme-support": {"base_url": "http://10.0.0.7/v1", "rps": 1},
         "beta-bot": {"base_url": "http://10.0.0.8/v1", "rps": 1}}
    )  # fmt: skip
    out = decode({**EVENT, "assistant": {"endpoint": "guess"}}, assistant_endpoints=endpoints)
    assert isinstance(out, Rejection) and out.reason == "invalid_field"
    assert out.detail == "assistant.endpoint: 'guess' is not a configured endpoint"


# ----- the LLM session refuses internal addresses at connect time -----------------------------
@asynccontextmanager
async def counting_server() -> AsyncIterator[tuple[int, list[str]]]:
    """An HTTP server on loopback that answers 200 and records every request's host."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, seen
    finally:
        await runner.cleanup()


def loopback_name() -> str | None:
    """A host name (not localhost) that resolves to an internal address, if this machine has
    one: the DNS-rebinding case."""
    from simapp.outbound.addresses import is_internal_host

    name = socket.gethostname()
    try:
        addr = socket.gethostbyname(name)
    except OSError:
        return None
    return name if is_internal_host(addr) and not is_internal_host(name) else None


def test_the_guarded_session_refuses_internal_addresses_before_connecting() -> None:
    from simapp.llm.session import DestinationRefused
    from simapp.outbound.addresses import HostList

    name = loopback_name()

    async def scenario() -> tuple[list[str], list[str]]:
        refused = []
        async with counting_server() as (port, seen):
            hosts = ["127.0.0.1", "localhost", *([name] if name else [])]
            for allowed in ([], ["127.0.0.1"], ["localhost", "127.0.0.0/8"]):
                session = llm_session(RateLimits(100), 4, HostList(allowed))
                try:
                    for host in hosts:
                        try:
                            async with session.post(f"http://{host}:{port}/v1/x", json={}):
                                pass
                        except DestinationRefused:
                            refused.append(f"{','.join(allowed)}>{host}")
                finally:
                    await session.close()
        return refused, seen

    refused, seen = asyncio.run(scenario())
    expected = ["127.0.0.1", "localhost", *([name] if name else [])]
    # nothing allowed: every one refused; 127.0.0.1 allowed: the literal and names resolving
    # to it pass, localhost (a name) does not; both allowed: all pass
    assert refused == [f">{h}" for h in expected] + ["127.0.0.1>localhost"]
    assert len(seen) == len(expected) * 3 - len(refused)


# ----- the LiteLLM route: keys, refusals, breakers --------------------------------------------
@asynccontextmanager
async def two_providers(**config: Any) -> AsyncIterator[tuple[int, int]]:
    """The mock twice: as OpenAI (key sk-main) and as a hosted vLLM (key sk-vllm)."""
    config.setdefault("latency_ms", 1)
    main, main_port = await serve(MockConfig(api_key="sk-main", **config))
    vllm, vllm_port = await serve(MockConfig(api_key="sk-vllm", **config))
    try:
        yield main_port, vllm_port
    finally:
        await main.cleanup()
        await vllm.cleanup()


async def requests_at(port: int) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/requests") as resp:
            return (await resp.json())["requests"]


@pytest.fixture
def provider_env(clean_env: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    clean_env.setenv("HOSTED_VLLM_API_KEY", "sk-vllm")
    yield clean_env


def test_llm_api_key_goes_only_to_its_provider(provider_env: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[list[dict], list[dict], list[str]]:
        async with two_providers() as (main_port, vllm_port):
            provider_env.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{main_port}/v1")
            provider_env.setenv("HOSTED_VLLM_API_BASE", f"http://127.0.0.1:{vllm_port}/v1")
            s = litellm_settings(llm_api_key="sk-main", llm_allowed_internal_hosts="127.0.0.1")
            client = llm_client(s, rate_limits(s))
            answers = []
            for model in ("gpt-4", "hosted_vllm/gpt-4"):
                answers.append((await client.complete(model, HI)).content)
            await client.close()
            return await requests_at(main_port), await requests_at(vllm_port), answers

    at_main, at_vllm, answers = asyncio.run(scenario())
    assert all(answers)
    assert [r["authorization"] for r in at_main] == ["Bearer sk-main"]
    assert [r["authorization"] for r in at_vllm] == ["Bearer sk-vllm"]  # its own variable


def test_the_route_refuses_what_the_session_refuses(provider_env: pytest.MonkeyPatch) -> None:
    """An operator's model (no event rule applies) still cannot reach an internal address."""

    async def scenario() -> tuple[LLMError, list[dict]]:
        async with two_providers() as (main_port, _):
            provider_env.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{main_port}/v1")
            s = litellm_settings(llm_api_key="sk-main", llm_retry_attempts=3)
            client = llm_client(s, rate_limits(s))
            with pytest.raises(LLMError) as info:
                await client.complete("gpt-4", HI)
            await client.close()
            return info.value, await requests_at(main_port)

    error, seen = asyncio.run(scenario())
    assert error.end_reason == "llm_error" and "internal address" in str(error)
    assert seen == []


def test_a_dead_provider_opens_only_its_own_breaker(provider_env: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[list[str], str, float]:
        async with two_providers() as (main_port, _):
            dead = socket.socket()
            dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
            provider_env.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{main_port}/v1")
            provider_env.setenv(
                "HOSTED_VLLM_API_BASE", f"http://127.0.0.1:{dead.getsockname()[1]}/v1"
            )
            s = litellm_settings(
                llm_api_key="sk-main",
                llm_allowed_internal_hosts="127.0.0.1",
                llm_retry_attempts=0,
                breaker_fail_max=2,
                breaker_reset_timeout=600,
            )
            client = llm_client(s, rate_limits(s))
            ends = []
            for _ in range(2):
                with pytest.raises(LLMError) as info:
                    await client.complete("hosted_vllm/gpt-4", HI)
                ends.append(info.value.end_reason)
            backend = client.backends["default"]
            state = backend.breaker_for("hosted_vllm/x").state
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(client.complete("gpt-4", HI), 5)
            took = loop.time() - started
            await client.close()
            dead.close()
            return ends, state, took

    ends, state, took = asyncio.run(scenario())
    assert ends == ["llm_unavailable", "llm_unavailable"]
    assert state == "open"
    assert took < 2  # the OpenAI calls do not wait for the hosted vLLM's breaker


def test_origin_carries_scheme_host_and_port_only() -> None:
    from simapp.llm.destinations import BackendDestinations
    from simapp.outbound.addresses import origin_of

    assert origin_of("https://user:s3cret@llm.example.com:8443/v1?key=x") == (
        "https://llm.example.com:8443"
    )
    assert origin_of("http://[::1]/v1") == "http://[::1]"
    assert BackendDestinations("https://u:p@h/v1").resolve("anthropic/x").provider == "anthropic"


def test_the_address_rule_sees_through_ipv6_forms() -> None:
    from simapp.outbound.addresses import HostList, is_internal_host

    for host in ("::ffff:127.0.0.1", "[::1]", "64:ff9b::a00:1", "169.254.169.254", "x.localhost"):
        assert is_internal_host(host), host
    assert not is_internal_host("api.openai.com") and not is_internal_host("8.8.8.8")
    allowed = HostList(["127.0.0.1", "*.corp.example"])
    assert allowed.has_name("::ffff:127.0.0.1") and allowed.has_name("llm.corp.example")
