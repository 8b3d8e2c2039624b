"""LLM calls through the LiteLLM library: routing by model name to any provider.

The route when no OpenAI-compatible backend URL is set (Anthropic, Bedrock, Azure, ... as the
seed promises), or with LLM_ROUTE=litellm. LiteLLM's and the OpenAI SDK's own retries are off
(`max_retries=0`, never `num_retries`: ours are the only retry layer), and `timeout` and
`max_retries` stay constant (each distinct value makes LiteLLM cache a new client with its own
pool). Requests go through our LLM session (`shared_session`), so the send gate applies.

Keys go where they belong: LLM_API_KEY only to the provider LLM_API_KEY_PROVIDER names (or to
LLM_BACKEND_URL when set); any other provider gets no key from us, so LiteLLM reads its own
variable (ANTHROPIC_API_KEY, ...). A model's provider is the one simapp/llm/destinations.py
resolves, which also picks the call's circuit breaker.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from simapp.limits.budgets import Budget
from simapp.llm.completion import Completion
from simapp.llm.destinations import Destinations, Unroutable
from simapp.llm.errors import (
    CONNECTION_ERROR,
    CONTEXT_WINDOW,
    FATAL,
    TIMEOUT,
    ProviderError,
    is_context_window_text,
    kind_of_status,
)
from simapp.llm.session import BUDGET_HEADER, DestinationRefused

_litellm: Any = None


def import_litellm(pool_size: int) -> Any:
    """Import LiteLLM offline and quiet, with our pool size (it reads these at import)."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import
        os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
        os.environ.setdefault("LITELLM_LOG", "ERROR")
        os.environ["AIOHTTP_CONNECTOR_LIMIT"] = str(pool_size)
        os.environ["AIOHTTP_CONNECTOR_LIMIT_PER_HOST"] = str(pool_size)
        import litellm

        litellm.suppress_debug_info = True  # no "Give Feedback" banner on every exception
        litellm.telemetry = False
        litellm.num_retries = 0
        litellm.drop_params = True
        _litellm = litellm
    return _litellm


class FirstCallGate:
    """Lets the process's first LiteLLM call go alone; the others wait for it to finish.

    LiteLLM's first call spends ~1 s initialising (executor threads, a blocking ABC check in
    the OpenAI SDK); callers granted by the budget meanwhile all reached the wire together
    and broke the 1 s bound (docs/benchmarks.md). Waiting here, before the budget, keeps
    grants and writes together.
    """

    def __init__(self) -> None:
        self._first: asyncio.Future[None] | None = None

    async def enter(self) -> Callable[[], None]:
        """Returns the release to call once the attempt is over."""
        first = self._first
        if first is None:
            self._first = asyncio.get_running_loop().create_future()
            return self._release
        if not first.done():
            await asyncio.shield(first)
        return _nothing

    def _release(self) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(None)


def _nothing() -> None:
    return None


class LiteLLMRoute:
    """The default backend through `litellm.acompletion`."""

    name = "litellm"

    def __init__(
        self,
        api_base: str | None,
        api_key: str | None,
        timeout: float,
        pool_size: int,
        session: Any,
        destinations: Destinations,
        key_provider: str = "openai",
    ) -> None:
        self.litellm = import_litellm(pool_size)
        self.api_base = api_base
        # An OpenAI-compatible backend without auth still needs a non-empty key for the SDK.
        self.api_key = api_key or ("no-key" if api_base else None)
        self.key_provider = key_provider
        self.destinations = destinations
        self._timeout = timeout
        self._session = session
        self.first_call = FirstCallGate()

    def provider_model(self, model: str) -> str:
        return f"openai/{model}" if self.api_base else model

    def provider_of(self, model: str) -> str:
        """The provider a model's calls go to ("unknown" when LiteLLM cannot route it)."""
        try:
            return self.destinations.resolve(model).provider
        except Unroutable:
            return "unknown"

    def key_for(self, model: str) -> str | None:
        """LLM_API_KEY for the backend or the provider named for it; None lets LiteLLM take
        the provider's own variable."""
        if self.api_base or self.provider_of(model) == self.key_provider:
            return self.api_key
        return None

    async def close(self) -> None:
        await self._session.close()

    async def send(
        self,
        model: str,
        messages: list[dict[str, str]],
        budgets: Sequence[Budget],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        options: dict[str, Any] = {}
        if temperature is not None:
            options["temperature"] = temperature
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        try:
            # a hard deadline around LiteLLM's per-attempt one
            async with asyncio.timeout(self._timeout + 1.0):
                response = await self.litellm.acompletion(
                    model=self.provider_model(model),
                    messages=messages,
                    api_base=self.api_base,
                    api_key=self.key_for(model),
                    timeout=self._timeout,
                    max_retries=0,
                    shared_session=self._session(),
                    extra_headers={BUDGET_HEADER: model},  # removed before the write
                    **options,
                )
        except TimeoutError:
            raise ProviderError(TIMEOUT, f"no answer within {self._timeout:g}s") from None
        except Exception as exc:  # classified by status, as LiteLLM reports it
            raise provider_error(exc) from None
        usage = getattr(response, "usage", None)
        cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
        return Completion(
            content=response.choices[0].message.content or "",
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=float(cost) if cost is not None else None,
        )


def provider_error(exc: BaseException) -> ProviderError:
    """LiteLLM's exception as a ProviderError (429 -> RateLimitError, 500 ->
    InternalServerError, a hang -> Timeout 408, refused -> InternalServerError "Connection
    error." with openai.APIConnectionError in the cause chain, context too long ->
    ContextWindowExceededError)."""
    refused = next((c for c in _chain(exc) if isinstance(c, DestinationRefused)), None)
    if refused is not None:  # our session refused to connect: nothing was sent
        return ProviderError(FATAL, f"refused: {refused}")
    code = status_of(exc)
    message = f"{type(exc).__name__} (HTTP {code}): {exc}".replace("\n", " ")
    name = type(exc).__name__
    if name == "ContextWindowExceededError" or (
        code in (400, 413) and is_context_window_text(str(exc))
    ):
        kind = CONTEXT_WINDOW
    elif isinstance(exc, asyncio.TimeoutError | TimeoutError):
        kind = TIMEOUT
    elif code is None or any("APIConnectionError" in type(c).__name__ for c in _chain(exc)):
        kind = CONNECTION_ERROR
    else:
        kind = kind_of_status(code, str(exc))
    return ProviderError(kind, message, code, headers_of(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and its causes/contexts, outermost first (cycle-safe, bounded)."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out and len(out) < 10:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def status_of(exc: BaseException) -> int | None:
    """The provider's HTTP status for a failed LiteLLM call.

    A status seen on the wire (aiohttp's ClientResponseError in the cause chain, or the
    provider_status_code LiteLLM records) wins over LiteLLM's `status_code`, which some of its
    routes set to 500 for every HTTP error.
    """
    for link in _chain(exc):
        provider = getattr(link, "provider_status_code", None)
        if isinstance(provider, int):
            return provider
        if isinstance(link, aiohttp.ClientResponseError):
            wire = getattr(link, "status", None)
            if isinstance(wire, int) and wire >= 100:
                return wire
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def headers_of(exc: BaseException) -> Any:
    """Response headers of a failed call (for Retry-After), wherever LiteLLM left them."""
    for link in _chain(exc):
        response = getattr(link, "response", None)
        headers = getattr(response, "headers", None) if response is not None else None
        if headers:
            return headers
        for name in ("litellm_response_headers", "headers"):
            headers = getattr(link, name, None)
            if headers and hasattr(headers, "items"):
                return headers
    return None
