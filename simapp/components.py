"""A worker's parts, built from the settings: rate limits, LLM backends, the pipeline.

No Faust app here (simapp/wiring.py hands in the topics and the table and connects the
signals), so tests build the same parts the worker does. Cheap parts exist at once; the
engine, the LLM client and the callback sender are built on first use inside the worker's
event loop, where their HTTP sessions must live.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from simapp.breaker import AsyncCircuitBreaker
from simapp.callbacks import CallbackSender
from simapp.checkpoints import TableStore
from simapp.config import Settings
from simapp.conversation import ConversationEngine
from simapp.dlq import DeadLetters
from simapp.ledger import RunLedger
from simapp.llm_client import Backend, LLMClient, RetryPolicy
from simapp.llm_errors import is_backend_failure
from simapp.llm_session import llm_session
from simapp.metrics import LLMMetrics
from simapp.pipeline import Pipeline
from simapp.progress import ProgressReporter
from simapp.ratelimit import DEFAULT_BACKEND, RateLimits
from simapp.schemas import EventDecoder

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"  # LLM_ROUTE=openai without LLM_BACKEND_URL


def load_engine_class(path: str) -> type[ConversationEngine]:
    """ENGINE_CLASS=module:Class, the engine extension point."""
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, ConversationEngine)):
        raise TypeError(f"ENGINE_CLASS {path} is not a ConversationEngine subclass")
    return cls


def rate_limits(s: Settings) -> RateLimits:
    return RateLimits(
        s.llm_base_rps,
        tpm=s.llm_tpm_limit,
        model_rps=s.llm_model_rate_limits,
        safety_margin=s.llm_rate_safety_margin,
        shared=s.llm_global_rate_limit_rps is not None,  # the group's limit: take our share
    )


class LazySession:
    """One aiohttp session, created on first use inside the running loop."""

    def __init__(self, factory: Callable[[], aiohttp.ClientSession]) -> None:
        self._factory = factory
        self._session: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._factory()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def redactor(secret: str | None) -> Callable[[str], str]:
    """Error texts for summaries and logs, never carrying the API key."""
    if not secret or len(secret) <= 3:
        return lambda text: text
    return lambda text: text.replace(secret, "***")


def breaker_for(name: str, s: Settings, llm_metrics: LLMMetrics) -> AsyncCircuitBreaker:
    breaker = AsyncCircuitBreaker(
        name,
        fail_max=s.breaker_fail_max,
        reset_timeout=s.breaker_reset_timeout,
        exclude=lambda exc: not is_backend_failure(exc),
    )
    breaker.add_listener(lambda old, new: llm_metrics.breaker_state(name, new))
    llm_metrics.breaker_state(name, "closed")
    return breaker


def llm_client(s: Settings, limits: RateLimits) -> LLMClient:
    llm_metrics = LLMMetrics()
    session = LazySession(lambda: llm_session(limits, s.llm_connection_pool_size))
    key = s.llm_api_key.get_secret_value() if s.llm_api_key else None
    name = s.llm_backend_url or "provider-default"
    if s.direct_llm_route:
        from simapp.openai_protocol import OpenAIProtocol

        route: Any = OpenAIProtocol(
            s.llm_backend_url or OPENAI_BASE_URL, key, s.llm_timeout, session
        )
        first_call = None
    else:
        from simapp.litellm_route import LiteLLMRoute

        route = LiteLLMRoute(
            s.llm_backend_url, key, s.llm_timeout, s.llm_connection_pool_size, session
        )
        first_call = route.first_call
    backends = {
        DEFAULT_BACKEND: Backend(
            DEFAULT_BACKEND, route, breaker_for(name, s, llm_metrics), first_call
        )
    }
    return LLMClient(
        limits,
        backends,
        RetryPolicy(attempts=s.llm_retry_attempts, backoff_max=s.llm_backoff_max),
        llm_metrics,
        redact=redactor(key),
    )


class WorkerParts:
    """The parts of one worker, built from the settings."""

    def __init__(self, s: Settings, topics: Any, table: Any) -> None:
        self.settings = s
        self.topics = topics
        self.limits = rate_limits(s)
        self.store = TableStore(table)
        self.ledger = RunLedger(self.store)
        self.decoder = EventDecoder(s)
        self._pipeline: Pipeline | None = None

    def pipeline(self) -> Pipeline:
        """Built on first use, inside the worker's loop."""
        if self._pipeline is None:
            s, t = self.settings, self.topics
            engine_cls = load_engine_class(s.engine_class)
            engine = engine_cls(
                llm_client(s, self.limits),
                max_iterations_cap=s.max_iterations,
                timeout=s.conversation_timeout,
                user_model=s.user_simulator_model,
            )
            # Lives as long as the worker: closing it while conversations past the shutdown
            # grace can still finish would turn our own shutdown into callback failures.
            sender = CallbackSender.from_settings(s)
            self._pipeline = Pipeline(
                decoder=self.decoder,
                ledger=self.ledger,
                store=self.store,
                engine=engine,
                sender=sender,
                dead_letters=DeadLetters(lambda key, record: t.dlq.send(key=key, value=record)),
                progress=ProgressReporter(lambda key, value: t.progress.send(key=key, value=value)),
                send_result=lambda key, value: t.results.send(key=key, value=value),
                send_event=lambda key, value: t.events.send(key=key, value=value),
                checkpoint_turns=s.checkpoint_turns,
            )
        return self._pipeline

    def share_of(self, assigned: Any) -> float:
        """This worker's part of the group: owned / total simulation partitions."""
        owned = sum(1 for tp in assigned if tp.topic == self.settings.kafka_topic)
        return owned / self.settings.kafka_partitions

    def on_assigned(self, assigned: Any) -> None:
        """A new assignment: this worker's share of the group's budgets."""
        share = self.share_of(assigned)
        self.limits.set_share(share)
        log.info(
            "rate budget share %.3f (%d/%d partitions)",
            share,
            round(share * self.settings.kafka_partitions),
            self.settings.kafka_partitions,
        )

    def on_revoked(self) -> None:
        """Hold the group's budgets at zero until the new assignment is known."""
        self.limits.set_share(0.0)
