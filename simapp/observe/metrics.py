"""Prometheus metrics, with the seed's names.

prometheus-client exposes a Counter named `x` as `x_total` (the Prometheus convention that
`promtool check metrics` enforces), so `conversations_completed` is scraped as
`conversations_completed_total`. docker/prometheus/rules.yml records the seed's bare names
from them so the seed's example PromQL runs unchanged in Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)
_ITER_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50)

# --- conversations (seed) ---
conversations_active = Gauge(
    "conversations_active", "Conversations running now in this worker", registry=REGISTRY
)
# --- conversation slots (ours; simapp/limits/concurrency.py) ---
conversations_target = Gauge(
    "conversations_target",
    "Conversations this worker runs at once to keep its budgets full (Little's law)",
    registry=REGISTRY,
)
conversations_waiting = Gauge(
    "conversations_waiting",
    "Events waiting for a conversation slot (taken from Kafka, not started)",
    registry=REGISTRY,
)
conversations_limited_by = Gauge(
    "conversations_limited_by",
    "1 for what sets the pace now: budget (the target fills the budgets), latency (fewer "
    "events than the target), ceiling (CONCURRENT_CONVERSATIONS caps the target)",
    ["reason"],
    registry=REGISTRY,
)
conversation_call_cycle_seconds = Gauge(
    "conversation_call_cycle_seconds",
    "Mean seconds a conversation spends per LLM call, budget waits excluded (recent calls)",
    registry=REGISTRY,
)
conversations_completed = Counter(
    "conversations_completed",
    "Simulations whose summary was delivered (by end_reason)",
    ["end_reason"],
    registry=REGISTRY,
)
conversations_failed = Counter(
    "conversations_failed",
    "Simulations that failed: rejected input, LLM error, or undeliverable summary (by reason)",
    ["reason"],
    registry=REGISTRY,
)
conversation_duration_seconds = Histogram(
    "conversation_duration_seconds",
    "Wall time of a conversation",
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
iterations_per_conversation = Histogram(
    "iterations_per_conversation",
    "Assistant turns per conversation",
    buckets=_ITER_BUCKETS,
    registry=REGISTRY,
)
# --- LLM (seed) ---
llm_api_calls = Counter("llm_api_calls", "Successful LLM API calls", ["model"], registry=REGISTRY)
llm_api_latency_seconds = Histogram(
    "llm_api_latency_seconds",
    "Latency of successful LLM API calls",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
llm_api_errors = Counter(
    "llm_api_errors", "Failed LLM API attempts by type", ["type"], registry=REGISTRY
)
# --- LLM (ours) ---
llm_tokens = Counter("llm_tokens", "LLM tokens used", ["model", "kind"], registry=REGISTRY)
llm_cost_usd = Counter("llm_cost_usd", "LLM cost in USD (when known)", ["model"], registry=REGISTRY)
llm_rate_limited = Counter(
    "llm_rate_limited", "HTTP 429 answers from the LLM provider", ["model"], registry=REGISTRY
)
llm_rate_limit_wait_seconds = Counter(
    "llm_rate_limit_wait_seconds",
    "Seconds callers waited for the rate budget",
    ["model"],
    registry=REGISTRY,
)
llm_rate_limit_rps = Gauge(
    "llm_rate_limit_rps",
    "This worker's effective request budget per backend (requests/s, every model)",
    ["budget"],
    registry=REGISTRY,
)
llm_model_rate_limit_rps = Gauge(
    "llm_model_rate_limit_rps",
    "This worker's effective per-model ceiling inside its backend budget (requests/s)",
    ["model"],
    registry=REGISTRY,
)
circuit_breaker_state = Gauge(
    "circuit_breaker_state",
    "LLM backend circuit breaker: 0 closed, 1 half-open, 2 open",
    ["backend"],
    registry=REGISTRY,
)
# --- callbacks (ours) ---
callback_deliveries = Counter(
    "callback_deliveries", "Summaries delivered to callbacks", registry=REGISTRY
)
callback_failures = Counter(
    "callback_failures", "Summaries that could not be delivered (dead-lettered)", registry=REGISTRY
)
callback_attempts = Counter(
    "callback_attempts", "Callback POST attempts (including retries)", registry=REGISTRY
)
dead_letters = Counter(
    "dead_letters", "Records written to the dead-letter topic", ["reason"], registry=REGISTRY
)
# --- Kafka (seed) ---
kafka_consumer_lag = Gauge(
    "kafka_consumer_lag",
    "Messages not yet consumed (fetch high watermark - position), by partition",
    ["topic", "partition"],
    registry=REGISTRY,
)
kafka_messages_consumed = Counter(
    "kafka_messages_consumed", "Simulation events taken from Kafka", registry=REGISTRY
)
kafka_commits_succeeded = Counter(
    "kafka_commits_succeeded", "Offset commits that succeeded", registry=REGISTRY
)
kafka_commits_failed = Counter(
    "kafka_commits_failed", "Offset commits that failed", registry=REGISTRY
)
kafka_offset_gaps = Counter(
    "kafka_offset_gaps",
    "Offsets fetched but lost before an actor took them, held and fetched again",
    ["topic"],
    registry=REGISTRY,
)
# --- progress (seed) ---
remaining_simulations = Gauge(
    "remaining_simulations",
    "Simulations not finished yet, by batch",
    ["batch_id"],
    registry=REGISTRY,
)
total_simulations = Gauge(
    "total_simulations", "Simulations in the batch, by batch", ["batch_id"], registry=REGISTRY
)

_BREAKER_STATES = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}


MODEL_LABELS = 20  # distinct model names a worker labels beyond the configured ones
OTHER = "other"


class ModelLabels:
    """The `model` label of a metric: events name models, so without a bound every name a
    burst sends would become a series forever. The models the operator configured, and the
    first MODEL_LABELS others seen, keep their name; the rest are "other"."""

    def __init__(self, configured: Iterable[str] = (), limit: int = MODEL_LABELS) -> None:
        self.names = {name for name in configured if name}
        self.limit = len(self.names) + limit

    def __call__(self, model: str) -> str:
        if model in self.names:
            return model
        if len(self.names) < self.limit:
            self.names.add(model)
            return model
        return OTHER


class LLMMetrics:
    """The hooks the LLM client calls; kept tiny because they run on every LLM call."""

    def __init__(self, labels: ModelLabels | None = None) -> None:
        self.label = labels or ModelLabels()

    def llm_call(self, model: str, seconds: float) -> None:
        model = self.label(model)
        llm_api_calls.labels(model).inc()
        llm_api_latency_seconds.labels(model).observe(seconds)

    def llm_error(self, model: str, kind: str) -> None:
        llm_api_errors.labels(kind).inc()
        if kind == "rate_limited":
            llm_rate_limited.labels(self.label(model)).inc()

    def llm_tokens(self, model: str, prompt: int, completion: int, cost: float | None) -> None:
        model = self.label(model)
        llm_tokens.labels(model, "prompt").inc(prompt)
        llm_tokens.labels(model, "completion").inc(completion)
        if cost:
            llm_cost_usd.labels(model).inc(cost)

    def rate_wait(self, model: str, seconds: float) -> None:
        llm_rate_limit_wait_seconds.labels(self.label(model)).inc(seconds)

    def breaker_state(self, backend: str, state: str) -> None:
        circuit_breaker_state.labels(backend).set(_BREAKER_STATES.get(state, 0))


def forget_batch(batch_id: str) -> None:
    """Drop a batch's series (its row expired): at once, not at the next gauge refresh."""
    for gauge in (total_simulations, remaining_simulations):
        try:
            gauge.remove(batch_id)
        except KeyError:
            pass


def conversation_slots(slots: Any) -> None:
    """Export a ConversationSlots' state, read when /metrics is scraped (no cost per call)."""
    conversations_target.set_function(lambda: slots.target)
    conversations_waiting.set_function(lambda: slots.waiting)
    conversation_call_cycle_seconds.set_function(lambda: slots.cycle)
    for reason in ("budget", "latency", "ceiling"):
        conversations_limited_by.labels(reason).set_function(
            lambda reason=reason: 1.0 if slots.reason == reason else 0.0
        )


callback_waiting = Gauge(
    "callback_waiting",
    "Summaries waiting for their receiver (it failed them, or its breaker is open)",
    registry=REGISTRY,
)
callback_pending = Gauge(
    "callback_pending", "Summaries in this worker's outbox, not yet settled", registry=REGISTRY
)
callback_pending_bytes = Gauge(
    "callback_pending_bytes", "Bytes of the summaries in this worker's outbox", registry=REGISTRY
)


_waiting_by_receiver: list[Any] = []  # the outbox's `waiting`, once it exists


def outbox(box: Any) -> None:
    """Export an Outbox's state, read when /metrics is scraped (and by the progress views,
    `waiting_by_receiver`: per receiver, too many labels for Prometheus)."""
    _waiting_by_receiver[:] = [box.waiting]
    callback_waiting.set_function(lambda: sum(box.waiting().values()))
    callback_pending.set_function(lambda: len(box.jobs))
    callback_pending_bytes.set_function(lambda: box.held)


def waiting_by_receiver() -> dict[str, int]:
    """Summaries waiting for their receiver, by receiver ({} before the outbox exists)."""
    return _waiting_by_receiver[0]() if _waiting_by_receiver else {}


table_rows = Gauge(
    "table_rows",
    "Rows of a table in this worker's partitions, counted by the last full retention sweep",
    ["table"],
    registry=REGISTRY,
)
table_rows_expired = Counter(
    "table_rows_expired", "Rows deleted by the retention sweep", ["table"], registry=REGISTRY
)


def table_rows_source(sweepers: dict[str, Any]) -> None:
    """table_rows{table} from each sweeper's last full pass (NaN before the first)."""
    for name, sweeper in sweepers.items():
        table_rows.labels(name).set_function(
            lambda s=sweeper: float(s.rows) if s.rows is not None else float("nan")
        )


def budget_rates(limits: Any) -> None:
    """Export the effective rate of every budget of a simapp.limits.budgets.RateLimits."""
    for budget in limits.backends():
        llm_rate_limit_rps.labels(budget.name).set(budget.rate)
    for budget in limits.ceilings():
        llm_model_rate_limit_rps.labels(budget.name.removeprefix("model:")).set(budget.rate)


def exposition() -> bytes:
    """The Prometheus text exposition of our registry."""
    return generate_latest(REGISTRY)
