"""Every setting simapp reads, in one typed object built from the environment (and `.env`).

The seed README names the first group (names and defaults kept exactly); the rest are ours.
A bad value fails at start-up with a message that names the variable, instead of surfacing as
a confusing error deep inside a worker.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import ssl
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

RECORD_OVERHEAD_BYTES = 196_608  # a summary's verdicts, usage and fields beside its history
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750: what a bearer token may hold


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


class SecurityProtocol(StrEnum):
    """How every Kafka client reaches the brokers (Kafka's `security.protocol`)."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"  # TLS: the broker's certificate verified (KAFKA_SSL_CAFILE or the system's CAs)
    SASL_PLAINTEXT = "SASL_PLAINTEXT"  # SASL authentication, no TLS
    SASL_SSL = "SASL_SSL"  # SASL authentication over TLS

    @property
    def tls(self) -> bool:
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def sasl(self) -> bool:
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)


class SaslMechanism(StrEnum):
    """The SASL mechanisms simapp's clients speak (Kafka's `sasl.mechanism`)."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


def _no_key_password() -> bytes:
    """An encrypted client key fails to load instead of prompting on the terminal."""
    return b""


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
    # --- Kafka security (the names the Kafka ecosystem uses; every client, simapp/kafka/clients.py)
    kafka_security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = Field(
        None,
        description="PEM file of the CAs that sign the brokers' certificates; unset = the "
        "system's CAs",
    )
    kafka_ssl_certfile: FilePath | None = Field(
        None,
        description="PEM client certificate (mutual TLS), with its key unless "
        "KAFKA_SSL_KEYFILE is set",
    )
    kafka_ssl_keyfile: FilePath | None = Field(
        None, description="PEM key of the client certificate"
    )

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
    llm_api_key_provider: str = Field(
        "openai",
        pattern=r"^[a-z0-9][a-z0-9_.\-]*$",
        description="the LiteLLM provider LLM_API_KEY is sent to on the LiteLLM route without "
        "LLM_BACKEND_URL (others read LiteLLM's own variables: ANTHROPIC_API_KEY, ...); with "
        "LLM_BACKEND_URL the key goes to that backend",
    )
    llm_allowed_internal_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="internal hosts (names, *.domain, CIDRs) the LiteLLM route may send to, "
        "e.g. a local Ollama; any other address that is not globally routable is refused",
    )
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
    callback_timeout: float = Field(10, gt=0, description="seconds for one POST")
    callback_max_wait: float = Field(
        21_600,
        gt=0,
        description="seconds a summary waits out its receiver (retries, an open breaker) "
        "after it became durable, before it becomes a callback_failed dead letter",
    )
    callback_host_rps: float = Field(
        200, gt=0, description="POSTs per second to one receiver (scheme, host, port)"
    )
    callback_breaker_fail_max: int = Field(
        5, ge=1, description="consecutive failures after which a receiver's summaries wait"
    )
    callback_breaker_reset: float = Field(
        5.0, gt=0, description="seconds between probes of a receiver whose breaker is open"
    )
    callback_pending_bytes: int = Field(
        256 * 2**20,
        ge=2**20,
        description="summary bytes a worker holds for delivery; past it, it reads no more",
    )
    callback_retry_attempts: int = Field(
        5, ge=0, le=50, description="retries of `dlq replay`'s re-POST (not the worker's)"
    )
    callback_deadline: float = Field(
        120, gt=0, description="seconds `dlq replay` tries one summary (not the worker's)"
    )
    callback_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    callback_signing_secret: SecretStr | None = Field(
        None,
        description="whsec_ + base64 of 24-64 random bytes: every callback is signed the "
        "Standard Webhooks way (webhook-id, webhook-timestamp, webhook-signature); unset = "
        "unsigned",
    )

    # --- Dead-letter replay (ours; simapp/delivery/replay.py) ---
    dlq_replay_group: str | None = Field(
        None,
        min_length=1,
        description="consumer group of `dlq replay`; unset = KAFKA_CONSUMER_GROUP-dlq-replay",
    )
    dlq_replay_topic: str | None = Field(
        None,
        min_length=1,
        description="compacted topic where `dlq replay` records each dead letter it replayed; "
        "unset = DLQ_TOPIC-replayed",
    )
    dlq_replay_secret: SecretStr | None = Field(
        None,
        description="key (32+ characters) of the HMAC on the mark of a replayed event; needed "
        "by `dlq replay --force` and by the workers to honour it",
    )

    # --- Input limits (ours) ---
    max_event_bytes: int = Field(65_536, ge=512)
    max_history_bytes: int = Field(
        512 * 1024,
        ge=4096,
        description="a conversation whose history (JSON, UTF-8) outgrows it ends: size_limit",
    )
    max_record_bytes: int = Field(
        900_000,
        ge=65_536,
        le=16 * 2**20,
        description="the largest record simapp writes to Kafka; below the broker's "
        "message.max.bytes (1 MiB by default) and the producer's max request size",
    )
    allowed_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="glob patterns (gpt-4o*, anthropic/*) of the models events may name; "
        "empty = any",
    )
    allowed_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="providers the models events name may go to (LiteLLM's names: openai, "
        "anthropic, ...); empty = any",
    )

    # --- Metrics / web / logs ---
    metrics_port: int = Field(8000, ge=0, le=65535)
    web_host: str = Field("127.0.0.1", description="host name other workers use to reach us")
    web_bind: str = "0.0.0.0"
    web_auth_token: SecretStr | None = Field(
        None,
        description="the token every web route but the progress page asks for (Authorization: "
        "Bearer); unset = the routes answer whoever reaches the port",
    )
    log_format: str = Field("text", pattern="^(text|json)$")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    worker_datadir: str | None = Field(
        None, description="Faust data directory; unset = faust --datadir, else Faust's default"
    )
    table_store: str = Field("rocksdb://", description="rocksdb:// (durable) or memory://")
    # A worker opens one RocksDB database per table and partition (5 tables x KAFKA_PARTITIONS);
    # Faust's defaults (64 MB memtables, 3 of them, a 2 GB block cache, each per database) let
    # a memtable keep every write and tombstone for weeks before its first flush (issue 19).
    rocksdb_write_buffer_bytes: int = Field(
        256 * 1024,
        ge=64 * 1024,
        le=1 << 30,
        description="memtable size of each RocksDB table partition (at most 2 are kept)",
    )
    rocksdb_block_cache_bytes: int = Field(
        128 * 1024, ge=0, le=1 << 30, description="block cache of each RocksDB table partition"
    )

    # --- Retention: what a worker forgets (simapp/worker/retention.py) ---
    batch_retention: float = Field(
        7 * 86_400,
        gt=0,
        description="seconds a finished batch (or one with no news) stays in the progress "
        "table, the metrics and the page",
    )
    simulation_retention: float = Field(
        7 * 86_400,
        gt=0,
        description="seconds a simulation's row stays after its last write (a redelivery or a "
        "duplicate id is recognised within it)",
    )
    retention_sweep_rows: int = Field(
        1000, ge=10, description="rows of each table the retention sweep looks at per second"
    )
    progress_batches_shown: int = Field(
        200, ge=1, le=10_000, description="batches a worker lists in /progress/ (the newest)"
    )
    gauged_batches: int = Field(
        50, ge=0, le=1000, description="batches (the most recently updated) with their own series"
    )

    # --- The batch report (simapp/observe/report.py) ---
    report_top_n: int = Field(
        30,
        ge=1,
        le=500,
        description="personas, models, endpoints and criteria a batch report names (the first "
        "ones seen); later ones are summed under 'other'",
    )
    report_failures_kept: int = Field(
        50,
        ge=0,
        le=1000,
        description="failing simulations a batch report lists (the newest), each with a "
        "pointer to its transcript on the results topic",
    )

    @field_validator(
        "callback_allowed_hosts",
        "allowed_models",
        "allowed_providers",
        "llm_allowed_internal_hosts",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "llm_backend_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """`KAFKA_SASL_USERNAME=` (as .env.example writes an unset one) means unset."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("web_auth_token", mode="before")
    @classmethod
    def _no_web_token(cls, value: Any) -> Any:
        """`WEB_AUTH_TOKEN=` (as .env.example writes an unset one) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("web_auth_token")
    @classmethod
    def _web_token(cls, value: SecretStr | None) -> SecretStr | None:
        """A bearer token (RFC 6750's b64token syntax) too long to guess; the message never
        shows it."""
        if value is not None:
            if not _B64TOKEN.fullmatch(value.get_secret_value()):
                raise ValueError(
                    "may hold only A-Z a-z 0-9 - . _ ~ + / (and = at its end): it is sent in "
                    "an Authorization header"
                )
            if len(value.get_secret_value()) < 32:
                raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("kafka_ssl_cafile")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=str(value))
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"not a PEM file of CA certificates ({exc})") from None
        return value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        """SASL needs its mechanism and credentials, TLS files need TLS, a client key needs a
        certificate that matches it: refused at start-up, naming the variables."""
        protocol = self.kafka_security_protocol
        problems = []
        if protocol.sasl:
            needed = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
            missing = [name.upper() for name in needed if getattr(self, name) is None]
            if missing:
                problems.append(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
        else:
            given = [
                n.upper()
                for n in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
                if getattr(self, n) is not None
            ]
            if given:
                problems.append(
                    f"{', '.join(given)} set, but KAFKA_SECURITY_PROTOCOL={protocol} does not "
                    "use SASL (SASL_SSL or SASL_PLAINTEXT do)"
                )
        files = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
        given = [name.upper() for name in files if getattr(self, name) is not None]
        if given and not protocol.tls:
            problems.append(
                f"{', '.join(given)} set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
                "(SSL or SASL_SSL do)"
            )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            problems.append("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (the certificate)")
        elif self.kafka_ssl_certfile is not None and protocol.tls:
            try:
                context = ssl.create_default_context()
                context.load_cert_chain(
                    str(self.kafka_ssl_certfile),
                    str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
                    password=_no_key_password,
                )
            except (ssl.SSLError, ValueError) as exc:
                problems.append(
                    "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE: not an unencrypted PEM "
                    f"certificate and its key ({exc})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

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

    @field_validator("callback_allowed_hosts", "llm_allowed_internal_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            if "/" in entry:
                ipaddress.ip_network(entry, strict=False)  # raises ValueError naming the entry
        return [entry.lower() for entry in value]

    @field_validator(
        "callback_signing_secret",
        "dlq_replay_group",
        "dlq_replay_topic",
        "dlq_replay_secret",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """`CALLBACK_SIGNING_SECRET=` (as .env.example writes an unset one) means unset."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("callback_signing_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        """Standard Webhooks' symmetric secret: whsec_ + base64 of 24-64 bytes."""
        if value is not None:
            secret_key(value)  # raises ValueError saying what is wrong, never the value
        return value

    @field_validator("dlq_replay_secret")
    @classmethod
    def _replay_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @model_validator(mode="after")
    def _room_for_a_summary(self) -> Settings:
        """A history at its budget, plus the judge's verdicts and the rest of a summary or
        a dead letter, must fit one record."""
        if self.max_history_bytes + RECORD_OVERHEAD_BYTES > self.max_record_bytes:
            raise ValueError(
                f"MAX_HISTORY_BYTES ({self.max_history_bytes}) + {RECORD_OVERHEAD_BYTES} must "
                f"not exceed MAX_RECORD_BYTES ({self.max_record_bytes})"
            )
        return self

    @property
    def replay_group(self) -> str:
        """The consumer group of `dlq replay`."""
        return self.dlq_replay_group or f"{self.kafka_consumer_group}-dlq-replay"

    @property
    def replay_topic(self) -> str:
        """The topic where `dlq replay` records what it replayed."""
        return self.dlq_replay_topic or f"{self.dlq_topic}-replayed"

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


WHSEC_PREFIX = "whsec_"


def secret_key(secret: SecretStr) -> bytes:
    """The HMAC key of a Standard Webhooks secret (whsec_ + base64 of 24-64 bytes); raises
    ValueError saying what is wrong with it, never showing it."""
    text = secret.get_secret_value().strip()
    if not text.startswith(WHSEC_PREFIX):
        raise ValueError(f"must start with {WHSEC_PREFIX} (Standard Webhooks' symmetric secret)")
    try:
        key = base64.b64decode(text.removeprefix(WHSEC_PREFIX), validate=True)
    except ValueError:
        raise ValueError(f"must be {WHSEC_PREFIX} followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"must hold 24 to 64 random bytes after {WHSEC_PREFIX} (holds {len(key)})")
    return key


class SettingsError(SystemExit):
    """Raised at start-up with one line per bad variable."""


_SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|(^|_)KEY($|_)")
_URL_USERINFO = re.compile(r"(//[^/@\s:]*:)[^/@\s]*@")


def secret_bearing(name: str) -> bool:
    """Whether a setting's value may hold a secret: a SecretStr field (LLM_API_KEY,
    KAFKA_SASL_PASSWORD) or a name that says so (…PASSWORD, …SECRET, …TOKEN, …_KEY). Its bad
    value is never shown."""
    field = Settings.model_fields.get(name.lower())
    if field is not None and "SecretStr" in str(field.annotation):
        return True
    return bool(_SECRET_WORDS.search(name.upper()))


def _shown(name: str, value: Any) -> str:
    """A bad value as an error may show it: masked when secret-bearing, and the password of
    any URL (user:password@host) masked too."""
    if secret_bearing(name):
        return "***"
    return _URL_USERINFO.sub(r"\1***@", repr(value))


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's error into a message naming each variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err["loc"]
            message = err["msg"].removeprefix("Value error, ")
            if not loc:  # a rule across settings: its message names them; its input is all
                lines.append(f"  {message}")
                continue
            name = str(loc[0]).upper()
            where = ".".join([name, *(str(part) for part in loc[1:])])
            lines.append(f"  {where}: {message} (got {_shown(name, err.get('input'))})")
        raise SettingsError("invalid simapp configuration:\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
