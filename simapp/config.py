"""Every setting simapp reads, in one typed object built from the environment (and `.env`).

The seed README names the first group (names and defaults kept exactly); the rest are ours.
A bad value fails at start-up with a message that names the variable, instead of surfacing as
a confusing error deep inside a worker.
"""

from __future__ import annotations

import ipaddress
import json
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class EndpointConfig(BaseModel):
    """An assistant endpoint events may name (`assistant.endpoint`): the user's own
    OpenAI-compatible chatbot or agent. Events never carry its URL or its secret."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(pattern=r"^https?://[^\s/]+", description="OpenAI-compatible base URL")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="env variable holding its key"
    )
    rps: float = Field(gt=0, description="its request limit for the whole group")
    tpm: int | None = Field(None, gt=0)
    model: str = Field("default", description="model name sent when the event names none")


class LLMRoute(StrEnum):
    """How LLM calls reach the provider."""

    auto = "auto"  # openai when LLM_BACKEND_URL is set, else litellm
    openai = "openai"  # POST {LLM_BACKEND_URL}/chat/completions on our own aiohttp session
    litellm = "litellm"  # the LiteLLM library: routing by model name to any provider


class BrokerProfile(StrEnum):
    """Which broker the Faust settings are tuned for."""

    kafka = "kafka"  # real Kafka: production defaults
    embedded = "embedded"  # the Tansu broker of the embedded stack: its quirks need short timeouts


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """simapp configuration. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- Kafka (seed) ---
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_topic: str = "simulation-events"
    kafka_consumer_group: str = "simulation-consumer-group"
    # --- Kafka (ours) ---
    kafka_partitions: int = Field(
        8, ge=1, le=1024, description="partitions of every topic we create"
    )
    results_topic: str = "simulation-results"
    dlq_topic: str = "simulation-events-dlq"
    progress_topic: str = "simulation-progress"
    kafka_replication_factor: int = Field(1, ge=1, le=10)
    broker_profile: BrokerProfile = BrokerProfile.kafka
    commit_interval: float = Field(2.0, gt=0, le=60)

    # --- Consumer (seed) ---
    concurrent_conversations: int = Field(
        1000,
        ge=1,
        le=10_000,
        description="the most conversations a worker runs at once (the ceiling; how many run "
        "is sized from the budget and the measured latency, simapp/limits/concurrency.py)",
    )
    llm_rate_limit_rps: float = Field(10, gt=0)
    max_iterations: int = Field(10, ge=1, le=1000)
    conversation_timeout: float = Field(300, gt=0)
    # --- Consumer (ours) ---
    shutdown_grace_seconds: float = Field(30, ge=0, le=3600)
    checkpoint_turns: bool = Field(True, description="checkpoint every turn (resume after crash)")
    safe_commit: bool = Field(
        True, description="never commit past an in-flight event; False = stock Faust (tests only)"
    )

    # --- LLM client (seed) ---
    llm_backend_url: str | None = None
    llm_timeout: float = Field(30, gt=0)
    llm_retry_attempts: int = Field(3, ge=0, le=20)
    llm_connection_pool_size: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="sockets to LLM backends; unset = CONCURRENT_CONVERSATIONS (a conversation "
        "has at most one call in flight); set lower, it also caps the conversations",
    )
    llm_api_key: SecretStr | None = None
    # --- LLM client (ours) ---
    llm_route: LLMRoute = Field(
        LLMRoute.auto,
        description="auto: the OpenAI protocol spoken directly when LLM_BACKEND_URL is set, "
        "else the LiteLLM library; openai or litellm force one",
    )
    user_simulator_model: str | None = None
    judge_model: str | None = Field(None, description="judge's model; unset = the event's model")
    assistant_endpoints: Annotated[dict[str, EndpointConfig], NoDecode] = Field(
        default_factory=dict, description="JSON: endpoint name -> base_url, api_key_env, rps"
    )
    llm_global_rate_limit_rps: float | None = Field(None, gt=0)
    llm_model_rate_limits: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    llm_tpm_limit: int | None = Field(None, gt=0)
    llm_rate_safety_margin: float = Field(0.05, ge=0, lt=0.5)
    llm_expected_latency: float = Field(
        1.0,
        gt=0,
        description="a call's latency (s) assumed until the first calls are measured",
    )
    llm_backoff_max: float = Field(16.0, gt=0)
    breaker_fail_max: int = Field(5, ge=1)
    breaker_reset_timeout: float = Field(60.0, gt=0)
    engine_class: str = Field(
        "simapp.simulation.conversation:ConversationEngine",
        description="module:Class of the conversation engine (extension point)",
    )

    # --- Callbacks (ours) ---
    callback_timeout: float = Field(10, gt=0)
    callback_retry_attempts: int = Field(5, ge=0, le=50)
    callback_deadline: float = Field(120, gt=0)
    callback_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- Input limits (ours) ---
    max_event_bytes: int = Field(65_536, ge=512)
    allowed_models: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- Metrics / web / logs ---
    metrics_port: int = Field(8000, ge=0, le=65535)
    web_host: str = Field("127.0.0.1", description="host name other workers use to reach us")
    web_bind: str = "0.0.0.0"
    log_format: str = Field("text", pattern="^(text|json)$")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    worker_datadir: str | None = Field(
        None, description="Faust data directory; unset = faust --datadir, else Faust's default"
    )
    table_store: str = Field("rocksdb://", description="rocksdb:// (durable) or memory://")

    @field_validator("callback_allowed_hosts", "allowed_models", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("llm_model_rate_limits", mode="before")
    @classmethod
    def _model_limits(cls, value: Any) -> Any:
        """Accept JSON ({"gpt-4": 20}) or `gpt-4=20,claude-3=5`."""
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return {}
            if value.startswith("{"):
                return json.loads(value)
            pairs = (item.split("=", 1) for item in _split_csv(value))
            return {name.strip(): float(rate) for name, rate in pairs}
        return value

    @field_validator("assistant_endpoints", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("assistant_endpoints")
    @classmethod
    def _endpoint_names(cls, value: dict[str, EndpointConfig]) -> dict[str, EndpointConfig]:
        import re

        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}", name):
                raise ValueError(f"endpoint name {name!r}: letters, digits, . _ - (max 64)")
        return value

    @field_validator("callback_allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            if "/" in entry:
                ipaddress.ip_network(entry, strict=False)  # raises ValueError naming the entry
        return [entry.lower() for entry in value]

    @property
    def embedded(self) -> bool:
        return self.broker_profile is BrokerProfile.embedded

    @property
    def direct_llm_route(self) -> bool:
        """Whether LLM calls speak the OpenAI protocol on our own session (not via LiteLLM)."""
        if self.llm_route is LLMRoute.auto:
            return self.llm_backend_url is not None
        return self.llm_route is LLMRoute.openai

    @property
    def llm_pool_size(self) -> int:
        """Sockets the LLM session may open: one per conversation unless capped."""
        return self.llm_connection_pool_size or self.concurrent_conversations

    @property
    def conversation_ceiling(self) -> int:
        """The most conversations a worker runs: a call never waits for a socket."""
        return min(self.concurrent_conversations, self.llm_pool_size)

    @property
    def llm_base_rps(self) -> float:
        """The request budget before this worker's share: the group's, or the instance's."""
        return self.llm_global_rate_limit_rps or self.llm_rate_limit_rps


class SettingsError(SystemExit):
    """Raised at start-up with one line per bad variable."""


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's error into a message naming each variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err["loc"]
            name = str(loc[0]).upper() if loc else "?"
            where = ".".join([name, *(str(part) for part in loc[1:])])
            shown = "***" if "KEY" in name else repr(err.get("input"))
            lines.append(f"  {where}: {err['msg']} (got {shown})")
        raise SettingsError("invalid simapp configuration:\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
