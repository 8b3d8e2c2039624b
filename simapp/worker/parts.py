"""A worker's parts, built from the settings: rate limits, LLM backends, the pipeline.

No Faust app here (agents/wiring.py hands in the topics and the table and connects the
signals), so tests build the same parts the worker does. Cheap parts exist at once; the
engine, the LLM client and the callback sender are built on first use inside the worker's
event loop, where their HTTP sessions must live.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiokafka.errors import MessageSizeTooLargeError

from simapp.config import Settings
from simapp.delivery.callbacks import CallbackSender
from simapp.delivery.dead_letters import DeadLetters
from simapp.delivery.outbox import Outbox
from simapp.kafka.records import fit
from simapp.limits.breaker import AsyncCircuitBreaker
from simapp.limits.budgets import DEFAULT_BACKEND, RateLimits
from simapp.limits.concurrency import ConversationSlots
from simapp.limits.group import GroupAllotment, read_layout
from simapp.llm.client import Backend, CallObserver, LLMClient, RetryPolicy
from simapp.llm.destinations import (
    OPENAI_BASE_URL,
    Destinations,
    ModelPolicy,
    Unroutable,
    destinations_for,
)
from simapp.llm.errors import is_backend_failure
from simapp.llm.session import llm_session
from simapp.observe import metrics
from simapp.observe.metrics import LLMMetrics, ModelLabels
from simapp.observe.progress import ProgressReporter
from simapp.outbound.addresses import HostList, origin_of
from simapp.simulation.checkpoints import TableStore
from simapp.simulation.conversation import ConversationEngine
from simapp.simulation.ledger import RunLedger
from simapp.simulation.pipeline import Pipeline
from simapp.simulation.schemas import EventDecoder

log = logging.getLogger(__name__)


def load_engine_class(path: str) -> type[ConversationEngine]:
    """ENGINE_CLASS=module:Class, the engine extension point."""
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, ConversationEngine)):
        raise TypeError(f"ENGINE_CLASS {path} is not a ConversationEngine subclass")
    return cls


def rate_limits(s: Settings) -> RateLimits:
    """The default backend's budget (every model), its model ceilings, and one budget per
    assistant endpoint (its `rps` is the whole group's: each worker takes its share)."""
    limits = RateLimits(
        s.llm_base_rps,
        tpm=s.llm_tpm_limit,
        model_rps=s.llm_model_rate_limits,
        safety_margin=s.llm_rate_safety_margin,
        shared=s.llm_global_rate_limit_rps is not None,  # the group's limit: take our share
    )
    for name, endpoint in s.assistant_endpoints.items():
        limits.add_backend(name, endpoint.rps, endpoint.tpm, shared=True)
    return limits


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


def redactor(*secrets: str | None) -> Callable[[str], str]:
    """Error texts for summaries and logs, never carrying an API key."""
    kept = [secret for secret in secrets if secret and len(secret) > 3]

    def redact(text: str) -> str:
        for secret in kept:
            text = text.replace(secret, "***")
        return text

    return redact


def url_password(url: str | None) -> str | None:
    """The password a URL carries (user:password@host), to redact wherever it might show."""
    try:
        return urlsplit(url).password if url else None
    except ValueError:
        return None


def configured_models(s: Settings) -> list[str]:
    """Model names the operator wrote down (they keep their metric labels)."""
    names = [s.user_simulator_model, s.judge_model, *s.llm_model_rate_limits]
    names += [e.model for e in s.assistant_endpoints.values()]
    names += [m for m in s.allowed_models if not any(c in m for c in "*?[")]
    return [n for n in names if n]


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


def llm_client(
    s: Settings, limits: RateLimits, observer: CallObserver | None = None
) -> LLMClient:
    llm_metrics = LLMMetrics(ModelLabels(configured_models(s)))
    session = LazySession(lambda: llm_session(limits, s.llm_pool_size))
    key = s.llm_api_key.get_secret_value() if s.llm_api_key else None
    destinations = destinations_for(s)
    backend_url = s.llm_backend_url or (OPENAI_BASE_URL if s.direct_llm_route else None)
    name = origin_of(backend_url) if backend_url else "provider-default"  # never credentials
    breakers = None
    if s.direct_llm_route:
        from simapp.llm.openai_protocol import OpenAIProtocol

        route: Any = OpenAIProtocol(backend_url or OPENAI_BASE_URL, key, s.llm_timeout, session)
        first_call = None
    else:
        from simapp.llm.litellm_route import LiteLLMRoute

        route_session = session
        if destinations.by_name:  # where a model name says: the session refuses internal hosts
            allowed = HostList(s.llm_allowed_internal_hosts)
            route_session = LazySession(lambda: llm_session(limits, s.llm_pool_size, allowed))
            breakers = provider_breakers(destinations, s, llm_metrics)
        route = LiteLLMRoute(
            s.llm_backend_url,
            key,
            s.llm_timeout,
            s.llm_pool_size,
            route_session,
            destinations,
            key_provider=s.llm_api_key_provider,
        )
        first_call = route.first_call
        if destinations.by_name:
            warn_operator_models(s, ModelPolicy(s, destinations))
    backend_breaker = breaker_for(name, s, llm_metrics) if breakers is None else None
    backends = {
        DEFAULT_BACKEND: Backend(DEFAULT_BACKEND, route, backend_breaker, first_call, breakers)
    }
    secrets = [key, url_password(s.llm_backend_url)]
    for endpoint_name, endpoint in s.assistant_endpoints.items():
        from simapp.llm.openai_protocol import OpenAIProtocol

        endpoint_key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        if endpoint.api_key_env and not endpoint_key:
            log.warning(
                "assistant endpoint %s: %s is not set; its requests carry no API key",
                endpoint_name,
                endpoint.api_key_env,
            )
        secrets += [endpoint_key, url_password(endpoint.base_url)]
        endpoint_route = OpenAIProtocol(
            endpoint.base_url,
            endpoint_key,
            s.llm_timeout,
            session,
            label=f"endpoint {endpoint_name!r}",
        )
        backends[endpoint_name] = Backend(
            endpoint_name,
            endpoint_route,
            breaker_for(f"endpoint:{endpoint_name}", s, llm_metrics),
        )
    return LLMClient(
        limits,
        backends,
        RetryPolicy(attempts=s.llm_retry_attempts, backoff_max=s.llm_backoff_max),
        llm_metrics,
        redact=redactor(*secrets),
        observer=observer,
    )


def provider_breakers(
    destinations: Destinations, s: Settings, llm_metrics: LLMMetrics
) -> Callable[[str], AsyncCircuitBreaker]:
    """model -> its provider's breaker, made on the provider's first call: a dead provider
    pauses its own calls, not every conversation."""
    by_provider: dict[str, AsyncCircuitBreaker] = {}

    def breaker(model: str) -> AsyncCircuitBreaker:
        try:
            provider = destinations.resolve(model).provider
        except Unroutable:
            provider = "unknown"
        found = by_provider.get(provider)
        if found is None:
            found = by_provider[provider] = breaker_for(f"provider:{provider}", s, llm_metrics)
        return found

    return breaker


def warn_operator_models(s: Settings, policy: ModelPolicy) -> None:
    """USER_SIMULATOR_MODEL and JUDGE_MODEL are the operator's: no event rule applies to them,
    but their calls meet the same session guard, so say so at start-up."""
    for setting, model in (("USER_SIMULATOR_MODEL", s.user_simulator_model),
                           ("JUDGE_MODEL", s.judge_model)):  # fmt: skip
        if not model:
            continue
        try:
            problem = policy.address_refusal(policy.destinations.resolve(model))
        except Unroutable as exc:
            problem = str(exc)
        if problem is not None:
            log.warning("%s %r %s; its calls will fail", setting, model, problem)


def sender_to(topic: Any) -> Callable[[bytes, Any], Awaitable[Awaitable[Any]]]:
    """send(key, value): hands the record to Faust's producer; returns the broker's ack."""

    async def send(key: bytes, value: Any) -> Awaitable[Any]:
        return await topic.send(key=key, value=value)

    return send


def durable(
    send: Callable[[bytes, Any], Awaitable[Awaitable[Any]]],
) -> Callable[[bytes, Any], Awaitable[Any]]:
    """send(key, value) that returns once the broker acknowledged the record."""

    async def send_durable(key: bytes, value: Any) -> Any:
        return await (await send(key, value))

    return send_durable


def record_sender(topic: Any, max_bytes: int) -> Callable[[bytes, Any], Awaitable[Any]]:
    """Durable sends of JSON records within `max_bytes`; a record the broker still refuses
    for its size (its message.max.bytes is below MAX_RECORD_BYTES) is cut to half, then to a
    quarter, before the error is the caller's."""
    send = durable(sender_to(topic))

    async def send_record(key: bytes, record: dict[str, Any]) -> Any:
        limit = max_bytes
        while True:
            try:
                return await send(key, fit(record, limit))
            except MessageSizeTooLargeError:
                if limit <= max_bytes // 4:
                    raise
                log.warning("the broker refused a %d-byte record: cutting it further", limit)
                limit //= 2

    return send_record


class WorkerParts:
    """The parts of one worker, built from the settings."""

    def __init__(self, s: Settings, topics: Any, table: Any, stops: Any = None) -> None:
        """`table` holds the simulations' rows; `stops` (a global table, optional) the batches
        whose spend cap was reached."""
        self.settings = s
        self.stops = stops
        self._stops_seen: dict[str, bool] = {}  # the batches seen stopped (the last 1000)
        self.topics = topics
        self.limits = rate_limits(s)
        self.limits.allot({}, 0.0)  # none of the group's budgets before the first assignment
        self.slots = ConversationSlots(
            self.limits, s.conversation_ceiling, initial_cycle=s.llm_expected_latency
        )
        metrics.conversation_slots(self.slots)
        self.allotment = GroupAllotment(self.limits, self._budgets_changed)
        self.store = TableStore(table, s.max_record_bytes)
        self.ledger = RunLedger(self.store)
        self.decoder = EventDecoder(s)
        self._pipeline: Pipeline | None = None
        self._outbox: Outbox | None = None
        self._dead_letters: DeadLetters | None = None

    def pipeline(self) -> Pipeline:
        """Built on first use, inside the worker's loop."""
        if self._pipeline is None:
            s, t = self.settings, self.topics
            engine_cls = load_engine_class(s.engine_class)
            engine = engine_cls(
                llm_client(s, self.limits, self.slots),
                max_iterations_cap=s.max_iterations,
                timeout=s.conversation_timeout,
                user_model=s.user_simulator_model,
                judge_model=s.judge_model,
                judge_timeout=s.llm_timeout * 2,
                endpoint_models={name: e.model for name, e in s.assistant_endpoints.items()},
                max_history_bytes=s.max_history_bytes,
            )
            self._pipeline = Pipeline(
                decoder=self.decoder,
                ledger=self.ledger,
                store=self.store,
                engine=engine,
                dead_letters=self.dead_letters(),
                progress=ProgressReporter(sender_to(t.progress)),
                send_result=record_sender(t.results, s.max_record_bytes),
                send_event=durable(sender_to(t.events)),
                checkpoint_turns=s.checkpoint_turns,
                slots=self.slots,
                stopped=self._stopped if self.stops is not None else None,
            )
        return self._pipeline

    def _stopped(self, batch_id: str) -> bool:
        """The batch reached its max_cost_usd (its owner wrote the global table); the first
        time this worker sees it, a line says so."""
        stop = self.stops.get(batch_id)
        if stop is None:
            return False
        if batch_id not in self._stops_seen:
            if len(self._stops_seen) >= 1_000:
                self._stops_seen.pop(next(iter(self._stops_seen)))
            self._stops_seen[batch_id] = True
            at = stop.get("at") if isinstance(stop, dict) else None
            lag = f" {time.time() - at:.2f} s after the cap was reached" if at else ""
            log.warning("batch %s stopped on this worker%s: max_cost_usd", batch_id, lag)
        return True

    def dead_letters(self) -> DeadLetters:
        if self._dead_letters is None:
            self._dead_letters = DeadLetters(
                sender_to(self.topics.dlq), self.settings.max_record_bytes
            )
        return self._dead_letters

    def outbox(self) -> Outbox:
        """Built on first use, inside the worker's loop."""
        if self._outbox is None:
            s = self.settings
            # Lives as long as the worker: closing its session while summaries past the
            # shutdown grace can still be POSTed would turn our own shutdown into failures.
            self._outbox = Outbox(
                CallbackSender.from_settings(s),
                self.dead_letters(),
                ProgressReporter(sender_to(self.topics.progress)),
                max_wait=s.callback_max_wait,
                host_rps=s.callback_host_rps,
                fail_max=s.callback_breaker_fail_max,
                reset=s.callback_breaker_reset,
                pending_bytes=s.callback_pending_bytes,
            )
            metrics.outbox(self._outbox)
        return self._outbox

    def on_flow(self, active: bool) -> None:
        """Faust stopped (False) or resumed (True) the flow of events."""
        self.slots.on_flow(active)
        if self._outbox is not None:
            self._outbox.on_flow(active)

    def share_of(self, assigned: Any) -> float:
        """This worker's part of the group: owned / total simulation partitions."""
        return len(self.owned(assigned)) / self.settings.kafka_partitions

    def owned(self, assigned: Any) -> list[int]:
        return [tp.partition for tp in assigned if tp.topic == self.settings.kafka_topic]

    def on_assigned(
        self,
        assigned: Any,
        distribution: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
        me: str | None = None,
    ) -> None:
        """A new assignment: this worker's units of the group's budgets, from the whole
        assignment (`distribution`: member URL -> topic -> partitions, Faust's assignor's;
        simapp/limits/group.py), or from its own share when that cannot be read."""
        s = self.settings
        mine = self.owned(assigned)
        layout = None
        if distribution is not None and me is not None:
            layout = read_layout(distribution, s.kafka_topic, me, mine, s.kafka_partitions)
            if layout is None:
                log.warning(
                    "the group's assignment of %s does not list each of its %d partitions once "
                    "(do two workers advertise the same WEB_HOST:METRICS_PORT? is "
                    "KAFKA_PARTITIONS the topic's?); group budgets fall back to floor(share x "
                    "limit) per worker, which may leave a worker without budget: %s",
                    s.kafka_topic,
                    s.kafka_partitions,
                    {url: topics.get(s.kafka_topic) for url, topics in distribution.items()},
                )
        self.allotment.assign(layout, self.share_of(assigned))
        log.info("rate budget: %d/%d partitions", len(mine), s.kafka_partitions)

    def on_revoked(self) -> None:
        """Hold the group's budgets at zero until the new assignment is known."""
        self.allotment.revoke()

    def _budgets_changed(self) -> None:
        self.slots.recompute()
        metrics.budget_rates(self.limits)
