"""The engine's LLM: every call waits for its budgets, passes the breaker, and is retried.

Per attempt: wait while the call's breaker is open (its backend's; its provider's on the
LiteLLM route by model name) -> a slot in every budget the call
belongs to (model ceiling, then the backend's) -> the breaker admits it (or the slot is spent
unused and we wait again) -> the route sends it, its bytes held by the send gate at the write.
A 429 pauses the call's budgets for the advised time (every queued caller waits) and is tried
again; timeouts, 5xx and connection errors are retried LLM_RETRY_ATTEMPTS times with
full-jitter backoff; anything else ends the simulation with a clear end_reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from simapp.limits.breaker import AsyncCircuitBreaker, BreakerOpen
from simapp.limits.budgets import DEFAULT_BACKEND, Budget, RateLimits
from simapp.limits.retry import backoff, retry_after_seconds
from simapp.llm.completion import (
    END_CONTEXT_WINDOW,
    END_LLM_ERROR,
    END_LLM_UNAVAILABLE,
    Completion,
    LLMError,
)
from simapp.llm.errors import CONTEXT_WINDOW, FATAL, RATE_LIMITED, ProviderError
from simapp.observe.metrics import LLMMetrics

CHARS_PER_TOKEN = 4  # for the TPM estimate charged before a call (replaced by the actual count)
DEFAULT_COMPLETION_ESTIMATE = 256


class Route(Protocol):
    """How one backend's requests are made (llm/openai_protocol.py, llm/litellm_route.py)."""

    name: str

    async def close(self) -> None: ...

    async def send(
        self,
        model: str,
        messages: list[dict[str, str]],
        budgets: Sequence[Budget],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion: ...


@dataclass
class Backend:
    """An LLM backend: its route and its own circuit breaker (its budget is in RateLimits), or
    one breaker per provider (`breakers`: the LiteLLM route by model name), so a dead provider
    pauses only its own calls."""

    name: str
    route: Route
    breaker: AsyncCircuitBreaker | None  # None with `breakers`
    first_call: Any = None  # LiteLLM's FirstCallGate; None on the direct route
    breakers: Callable[[str], AsyncCircuitBreaker] | None = None  # model -> its breaker

    def breaker_for(self, model: str) -> AsyncCircuitBreaker:
        if self.breakers is not None:
            return self.breakers(model)
        assert self.breaker is not None, "a backend has a breaker or breakers"
        return self.breaker


class CallObserver(Protocol):
    """Told of every request and successful call (simapp.limits.concurrency)."""

    def call_sent(self) -> object: ...

    def call_ended(self, handle: object) -> None: ...

    def call_done(
        self, budgets: Sequence[Budget], entered: float, sent: float, done: float
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int  # retries after the first try, for retryable failures
    backoff_max: float  # cap of one backoff, and of a 429 pause without advice x 4


class LLMClient:
    """Completes chat messages for the engine; one instance per worker."""

    def __init__(
        self,
        limits: RateLimits,
        backends: dict[str, Backend],
        retry: RetryPolicy,
        metrics: LLMMetrics,
        redact: Callable[[str], str] = lambda text: text,
        observer: CallObserver | None = None,
    ) -> None:
        self.limits = limits
        self.backends = backends
        self.retry = retry
        self.metrics = metrics
        self._redact = redact
        self.observer = observer

    async def close(self) -> None:
        """Close the backends' sessions (tests; a worker keeps its client to the end)."""
        for backend in self.backends.values():
            await backend.route.close()

    async def complete(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        role: str = "assistant",
        temperature: float | None = None,
        max_tokens: int | None = None,
        endpoint: str | None = None,
    ) -> Completion:
        """One chat completion with our retries; raises LLMError when it cannot succeed."""
        entered = time.monotonic()
        backend = self.backends[endpoint or DEFAULT_BACKEND]
        budgets = self.limits.for_call(model, backend.name)
        estimate = estimate_tokens(messages, max_tokens)
        retries_left = self.retry.attempts
        attempt = rate_limited = 0
        while True:
            try:
                reply, sent = await self._attempt(
                    backend, model, messages, budgets, estimate, temperature, max_tokens
                )
            except ProviderError as exc:
                self.metrics.llm_error(model, exc.kind)
                if exc.kind == RATE_LIMITED:
                    rate_limited += 1
                    advised = retry_after_seconds(exc.headers)
                    if advised is None:
                        advised = backoff(rate_limited, 1.0, self.retry.backoff_max)
                    self.limits.pause(budgets, min(advised, self.retry.backoff_max * 4))
                    continue  # bounded by the conversation's own deadline
                text = self._redact(str(exc))[:300]
                if exc.kind == CONTEXT_WINDOW:
                    raise LLMError(text, END_CONTEXT_WINDOW) from None
                if exc.kind == FATAL:
                    raise LLMError(text, END_LLM_ERROR) from None
                if retries_left <= 0:
                    raise LLMError(
                        f"gave up after {attempt + 1} attempts: {text}", END_LLM_UNAVAILABLE
                    ) from None
                retries_left -= 1
                await asyncio.sleep(backoff(attempt, 0.5, self.retry.backoff_max))
                attempt += 1
                continue
            self.metrics.llm_tokens(
                model, reply.prompt_tokens, reply.completion_tokens, reply.cost_usd
            )
            if self.observer is not None:
                self.observer.call_done(budgets, entered, sent, time.monotonic())
            return reply

    async def _attempt(
        self,
        backend: Backend,
        model: str,
        messages: list[dict[str, str]],
        budgets: Sequence[Budget],
        estimate: int,
        temperature: float | None,
        max_tokens: int | None,
    ) -> tuple[Completion, float]:
        """One try: the reply, and when (time.monotonic()) its request went out."""
        release = await backend.first_call.enter() if backend.first_call is not None else None
        breaker = backend.breaker_for(model)
        try:
            while True:
                # Wait for the breaker before taking a slot: callers parked while it is open
                # hold no grant, so when it closes they are paced by the budget, not a burst.
                await breaker.ready()
                waited = await self.limits.acquire(budgets, estimate)
                if waited > 0:
                    self.metrics.rate_wait(model, waited)
                try:
                    ticket = breaker.admit()
                except BreakerOpen:
                    self.metrics.llm_error(model, "breaker_open")
                    continue  # the slot is spent unused: conservative, never a burst
                break
            sent = time.monotonic()
            started = time.perf_counter()
            handle = self.observer.call_sent() if self.observer is not None else None
            try:
                reply = await backend.route.send(
                    model, messages, budgets, temperature=temperature, max_tokens=max_tokens
                )
            except BaseException as exc:
                breaker.record(ticket, exc)
                raise
            finally:
                if self.observer is not None:
                    self.observer.call_ended(handle)
            breaker.record(ticket, None)
        finally:
            if release is not None:
                release()
        self.metrics.llm_call(model, time.perf_counter() - started)
        self.limits.record_tokens(budgets, reply.prompt_tokens + reply.completion_tokens)
        return reply, sent


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int | None) -> int:
    """Tokens a call will likely use, charged to TPM budgets until the real count is known."""
    prompt = sum(len(m.get("content") or "") for m in messages) // CHARS_PER_TOKEN
    return prompt + (max_tokens or DEFAULT_COMPLETION_ESTIMATE)
