"""The seed's input event and output summary, and the strict decoder for untrusted event bytes.

Events come from any producer, so decoding never raises: it returns either a valid
`SimulationEvent` or a `Rejection` whose `reason` is a stable code (for the DLQ and metrics) and
whose `detail` names every offending field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from simapp.config import Settings
from simapp.urlpolicy import CallbackPolicy

DEFAULT_BATCH_ID = "default"


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
Id = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
]
Name = Annotated[Text, StringConstraints(min_length=1, max_length=200)]
Description = Annotated[Text, StringConstraints(max_length=4_000)]
Trait = Annotated[Text, StringConstraints(min_length=1, max_length=100)]
Intent = Annotated[Text, StringConstraints(min_length=1, max_length=8_000)]
ModelName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@\-]*$"),
]
Url = Annotated[str, StringConstraints(min_length=1, max_length=2_048)]


class Persona(BaseModel):
    """Who the simulated user is."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    name: Name
    description: Description = ""
    traits: list[Trait] = Field(default_factory=list, max_length=32)


class SimulationEvent(BaseModel):
    """One simulation request, as the seed's Event Schema defines it (+ batch grouping)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: Id
    persona: Persona
    intent: Intent
    max_iterations: int = Field(ge=1)
    callback_url: Url
    model: ModelName
    batch_id: Id = DEFAULT_BATCH_ID
    batch_size: int | None = Field(None, ge=1, le=10_000_000)


class Message(BaseModel):
    """One entry of `conversation_history` (OpenAI chat shape)."""

    role: Literal["system", "user", "assistant"]
    content: str


class Usage(BaseModel):
    """What a conversation cost (extra field after the seed's ones)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None
    llm_calls: int = 0


class Summary(BaseModel):
    """The seed's Output (Summary POST), then our extra fields."""

    simulation_id: str
    conversation_history: list[Message]
    total_iterations: int
    end_reason: str
    duration_ms: int
    usage: Usage
    batch_id: str = DEFAULT_BATCH_ID
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused. `reason` is a short code; `detail` is for humans."""

    reason: str
    detail: str
    simulation_id: str | None = None
    batch_id: str | None = None


def _field_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<event>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _peek(data: Any, field: str) -> str | None:
    """A string field of an event that failed validation, for the DLQ record and progress."""
    if isinstance(data, dict) and isinstance(data.get(field), str):
        return data[field][:128]
    return None


class EventDecoder:
    """Turns raw Kafka values into events or rejections, under the configured limits."""

    def __init__(self, settings: Settings) -> None:
        self.max_bytes = settings.max_event_bytes
        self.max_iterations = settings.max_iterations
        self.allowed_models = frozenset(settings.allowed_models)
        self.callback_policy = CallbackPolicy(settings.callback_allowed_hosts)

    def decode(self, raw: bytes | str | None) -> SimulationEvent | Rejection:
        """Never raises: any input yields an event or a rejection."""
        try:
            return self._decode(raw)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not kill the agent
            return Rejection("invalid_event", f"decoder error: {type(exc).__name__}")

    def _decode(self, raw: bytes | str | None) -> SimulationEvent | Rejection:
        if raw is None:
            return Rejection("empty", "message has no value")
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        if len(raw) > self.max_bytes:
            return Rejection("too_large", f"event is {len(raw)} bytes, limit {self.max_bytes}")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            return Rejection("not_json", f"not valid UTF-8 JSON: {exc}"[:300])
        if not isinstance(data, dict):
            return Rejection(
                "not_object", f"event must be a JSON object, got {type(data).__name__}"
            )
        sim_id, batch = _peek(data, "id"), _peek(data, "batch_id")
        try:
            event = SimulationEvent.model_validate(data)
        except ValidationError as exc:
            return Rejection("invalid_field", _field_errors(exc)[:2_000], sim_id, batch)
        if event.max_iterations > self.max_iterations:
            return Rejection(
                "invalid_field",
                f"max_iterations: must be between 1 and MAX_ITERATIONS={self.max_iterations}, "
                f"got {event.max_iterations}",
                sim_id,
                batch,
            )
        if self.allowed_models and event.model not in self.allowed_models:
            return Rejection(
                "unknown_model", f"model {event.model!r} is not in ALLOWED_MODELS", sim_id, batch
            )
        problem = self.callback_policy.check(event.callback_url)
        if problem is not None:
            return Rejection("forbidden_callback", f"callback_url: {problem}", sim_id, batch)
        return event
