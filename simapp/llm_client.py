"""LLM calls through LiteLLM, with our rate budget, circuit breaker and retries around them.

Order per attempt: rate budget (never above the provider's limit) -> circuit breaker (one per
backend) -> `litellm.acompletion` with a hard deadline. LiteLLM's and the OpenAI SDK's own
retries are off (`max_retries=0`, never `num_retries`) so ours are the only retry layer; `timeout`
and `max_retries` stay constant because each distinct value makes LiteLLM cache a new client
with its own connection pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from email.utils import parsedate_to_datetime
from typing import Any

from simapp.breaker import BreakerOpen
from simapp.config import Settings
from simapp.conversation import END_LLM_ERROR, END_LLM_UNAVAILABLE, Completion, LLMError

log = logging.getLogger(__name__)

_litellm: Any = None

# Names the budget of a request for the send gate in our HTTP session's trace hook (a context
# variable does not survive LiteLLM's hand-offs; a header does, and providers ignore it).
BUDGET_HEADER = "X-Simapp-Budget"


def import_litellm(pool_size: int) -> Any:
    """Import LiteLLM offline, quiet, with our pool size (it reads these env vars at import)."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
        os.environ.setdefault("LITELLM_LOG", "ERROR")
        os.environ["AIOHTTP_CONNECTOR_LIMIT"] = str(pool_size)
        os.environ["AIOHTTP_CONNECTOR_LIMIT_PER_HOST"] = str(pool_size)
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        litellm.num_retries = 0
        litellm.drop_params = True
        _litellm = litellm
    return _litellm


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a 429 asks us to wait: retry-after-ms, Retry-After, x-ratelimit-reset-*.

    Header names are matched case-insensitively (httpx/aiohttp headers are, a plain dict from
    LiteLLM's `litellm_response_headers` is not); a value we cannot read is skipped, never raised.
    """
    if not headers:
        return None
    try:
        lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    except (AttributeError, TypeError):
        return None
    value = lowered.get("retry-after-ms", "").strip()
    if value:
        try:
            return _non_negative(float(value) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after", "").strip()
    if value:
        try:
            return _non_negative(float(value))
        except ValueError:
            try:
                return _non_negative(parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError, IndexError, OverflowError):
                pass
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset"):
        value = lowered.get(name, "").strip()
        if value:
            seconds = _duration(value)
            if seconds is not None:
                if seconds > _EPOCH_THRESHOLD:  # a Unix time (GitHub style), not a duration
                    seconds = max(0.0, seconds - time.time())
                return seconds
    return None


_EPOCH_THRESHOLD = 1e9  # ~2001-09-09 as a Unix time; no provider asks for a 31-year wait


def _non_negative(seconds: float) -> float:
    return seconds if seconds > 0 else 0.0  # also maps NaN to 0


def _duration(value: str) -> float | None:
    """OpenAI-style reset durations: '1s', '20ms', '6m0s', '0.5'; None when unreadable."""
    value = value.strip()
    try:
        return _non_negative(float(value))
    except ValueError:
        pass
    total, number = 0.0, ""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    i = 0
    try:
        while i < len(value):
            ch = value[i]
            if ch.isdigit() or ch == ".":
                number += ch
                i += 1
                continue
            unit = "ms" if value.startswith("ms", i) else ch
            if unit not in units or not number:
                return None
            total += float(number) * units[unit]
            number = ""
            i += len(unit)
    except ValueError:  # e.g. '1.2.3s'
        return None
    return total if not number else None


def backoff(attempt: int, base: float = 0.5, cap: float = 16.0) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt))."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and its causes/contexts, outermost first (cycle-safe, bounded)."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out and len(out) < 10:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def status_of(exc: BaseException) -> int | None:
    """The provider's HTTP status for a failed call.

    LiteLLM's `aiohttp_openai` route reports every HTTP error as InternalServerError with
    status_code 500 (a 429 or a 401 included); the status really received is on the aiohttp
    ClientResponseError in the cause chain, so a wire status found there wins.
    """
    for link in _chain(exc):
        provider = getattr(link, "provider_status_code", None)
        if isinstance(provider, int):
            return provider
        if _is_aiohttp_response_error(link):
            wire = getattr(link, "status", None)
            if isinstance(wire, int) and wire >= 100:
                return wire
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def _is_aiohttp_response_error(exc: BaseException) -> bool:
    try:
        from aiohttp import ClientResponseError
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        return False
    return isinstance(exc, ClientResponseError)


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


class LLMClient:
    """Completes chat messages for the engine; one instance per worker."""

    def __init__(self, settings: Settings, budgets: Any, breaker: Any, metrics: Any = None) -> None:
        self.settings = settings
        self.litellm = import_litellm(settings.llm_connection_pool_size)
        self.budgets = budgets
        self.breaker = breaker
        self.metrics = metrics
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        self.api_base = settings.llm_backend_url
        # An OpenAI-compatible backend without auth still needs a non-empty key for the SDK.
        self.api_key = key or ("no-key" if self.api_base else None)
        self.route = settings.llm_route if settings.llm_backend_url else None
        self._session: Any = None  # our aiohttp session for LiteLLM (created in the loop)
        self._first_call: asyncio.Future[None] | None = None

    def session(self) -> Any:
        """One aiohttp session for all LLM traffic: LLM_CONNECTION_POOL_SIZE sockets, and a
        trace hook that applies the rate budget's send gate to each request's write."""
        if self._session is None or self._session.closed:
            import aiohttp

            budgets = self.budgets

            async def on_request_chunk_sent(session: Any, ctx: Any, params: Any) -> None:
                # aiohttp awaits this right before it writes the chunk (the buffered headers go
                # with the first one), and writes in the same loop step once we return: holding
                # here holds the request's bytes. A body written in several chunks is gated per
                # chunk, which can only send fewer requests per second, never more.
                model = getattr(ctx, "simapp_model", None)
                if model is not None:
                    await budgets.send_gate(model)

            async def on_request_start(session: Any, ctx: Any, params: Any) -> None:
                ctx.simapp_model = params.headers.get(BUDGET_HEADER)  # the budget to gate by

            trace = aiohttp.TraceConfig()
            trace.on_request_start.append(on_request_start)
            trace.on_request_chunk_sent.append(on_request_chunk_sent)
            pool = self.settings.llm_connection_pool_size
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=pool, limit_per_host=pool),
                trace_configs=[trace],
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _first_call_gate(self) -> asyncio.Future[None] | None:
        """Let the process's first LLM call go alone; the others wait for it to finish.

        LiteLLM's first call in a process spends ~1 s initialising (measured: 1.1-1.4 s, part
        of it awaiting executor threads, part a 0.5 s blocking ABC check in the OpenAI SDK's
        request building), while later calls are cheap. Callers granted by the rate budget
        during that time all reach the wire together (measured: 10 grants 50 ms apart arrived
        within 1 ms), so the first second of every worker broke the 1 s window bound. Waiting
        here, before the budget is acquired, keeps grants and sends together. Returns the
        future the first caller must resolve, else None.
        """
        fut = self._first_call
        if fut is None:
            self._first_call = asyncio.get_running_loop().create_future()
            return self._first_call
        if not fut.done():
            await asyncio.shield(fut)
        return None

    def provider_model(self, model: str) -> str:
        return f"{self.route}/{model}" if self.route else model

    async def complete(self, model: str, messages: list[dict[str, str]]) -> Completion:
        """One chat completion with our retries; raises LLMError when it cannot succeed."""
        retries_left = self.settings.llm_retry_attempts
        attempt = 0
        rate_limited = 0
        while True:
            try:
                return await self._attempt(model, messages)
            except LLMError:
                raise
            except Exception as exc:  # classified below
                code = status_of(exc)
                kind = self._classify(exc, code)
                if self.metrics is not None:
                    self.metrics.llm_error(model, kind)
                if kind == "rate_limited":
                    rate_limited += 1
                    advised = retry_after_seconds(headers_of(exc))
                    if advised is None:
                        advised = backoff(rate_limited, 1.0, self.settings.llm_backoff_max)
                    pause = min(advised, self.settings.llm_backoff_max * 4)
                    self.budgets.pause(model, pause)
                    continue  # the whole model waits in acquire(); 429s are bounded by the deadline
                if kind == "fatal":
                    raise LLMError(
                        f"{type(exc).__name__} (HTTP {code}): {self._short(exc)}", END_LLM_ERROR
                    ) from None
                if retries_left <= 0:
                    raise LLMError(
                        f"gave up after {attempt + 1} attempts: {type(exc).__name__} "
                        f"(HTTP {code}): {self._short(exc)}",
                        END_LLM_UNAVAILABLE,
                    ) from None
                retries_left -= 1
                await asyncio.sleep(backoff(attempt, 0.5, self.settings.llm_backoff_max))
                attempt += 1

    @staticmethod
    def _classify(exc: BaseException, code: int | None) -> str:
        if isinstance(exc, BreakerOpen):
            return "breaker_open"
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return "timeout"
        if code == 429:
            return "rate_limited"
        if code in (400, 401, 403, 404, 422):
            return "fatal"
        if code == 408:
            return "timeout"
        if code is not None and code >= 500:
            return "server_error"
        return "connection_error"

    async def _attempt(self, model: str, messages: list[dict[str, str]]) -> Completion:
        first = await self._first_call_gate()
        loop = asyncio.get_running_loop()
        try:
            while True:
                waited = await self.budgets.acquire(model)
                if self.metrics is not None and waited > 0:
                    self.metrics.rate_wait(model, waited)
                started = time.perf_counter()
                try:
                    # deadline=now: admitted at once or BreakerOpen, never parked in the breaker
                    response = await self.breaker.call(
                        lambda: self._call(model, messages), deadline=loop.time()
                    )
                except BreakerOpen as exc:
                    await asyncio.sleep(self._breaker_wait(exc, loop))
                    continue  # a fresh grant: the one taken is spent unused (conservative)
                break
        finally:
            if first is not None and not first.done():
                first.set_result(None)
        if self.metrics is not None:
            self.metrics.llm_call(model, time.perf_counter() - started)
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
        if prompt or completion:
            self.budgets.record_tokens(model, prompt + completion)
        if self.metrics is not None:
            self.metrics.llm_tokens(model, prompt, completion, cost)
        return Completion(
            content=choice.message.content or "",
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=float(cost) if cost is not None else None,
        )

    @staticmethod
    def _breaker_wait(exc: BreakerOpen, loop: asyncio.AbstractEventLoop) -> float:
        """How long a caller the breaker turned away waits before taking a new rate grant.

        The rate grant comes first and the breaker is asked without waiting: a caller parked
        inside the breaker would hold a grant taken seconds earlier, and when the half-open
        probe closed the breaker every parked caller was sent at once (measured end to end:
        19 requests within 5 ms, a 429 from a provider at exactly our budget). Open: sleep
        until a probe may go. Half-open (the probe is running): poll briefly; each poll goes
        back through the budget, so the callers released by the close are paced by it.
        """
        if exc.retry_at is not None:
            return max(0.0, exc.retry_at - loop.time()) + random.uniform(0.0, 0.01)
        return random.uniform(0.05, 0.1)

    def _short(self, exc: BaseException) -> str:
        """Error text for summaries and logs, never carrying the API key."""
        text = str(exc).replace("\n", " ")
        if self.api_key and len(self.api_key) > 3:
            text = text.replace(self.api_key, "***")
        return text[:300]

    async def _call(self, model: str, messages: list[dict[str, str]]) -> Any:
        timeout = self.settings.llm_timeout
        async with asyncio.timeout(timeout + 1.0):  # hard deadline around LiteLLM's per-attempt one
            return await self.litellm.acompletion(
                model=self.provider_model(model),
                messages=messages,
                api_base=self.api_base,
                api_key=self.api_key,
                timeout=timeout,
                max_retries=0,
                shared_session=self.session(),
                extra_headers={BUDGET_HEADER: model},
            )


def is_breaker_failure(exc: BaseException) -> bool:
    """Only backend trouble counts towards opening the breaker, not our bad requests or 429s."""
    code = status_of(exc)
    if code is None:
        return True
    return code >= 500 or code == 408
