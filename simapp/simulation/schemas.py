"""The seed's input event and output summary, and the strict decoder for untrusted event bytes.

Events come from any producer, so decoding never raises: it returns either a valid
`SimulationEvent` or a `Rejection` whose `reason` is a stable code (for the DLQ and metrics) and
whose `detail` names every offending field.
"""

from __future__ import annotations

import hashlib
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
from simapp.delivery.urlpolicy import CallbackPolicy
from simapp.llm.destinations import ModelPolicy

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
SystemPrompt = Annotated[Text, StringConstraints(min_length=1, max_length=16_000)]
Instructions = Annotated[Text, StringConstraints(min_length=1, max_length=4_000)]
Criterion = Annotated[Text, StringConstraints(min_length=1, max_length=1_000)]
EndpointName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
]
Temperature = Annotated[float, Field(ge=0, le=2)]
MaxTokens = Annotated[int, Field(ge=1, le=32_768)]
MAX_CRITERIA = 32


class Persona(BaseModel):
    """Who the simulated user is."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    name: Name
    description: Description = ""
    traits: list[Trait] = Field(default_factory=list, max_length=32)


class AssistantSpec(BaseModel):
    """The system under test: its own system prompt, model and sampling, or a configured
    endpoint (ASSISTANT_ENDPOINTS: the user's own OpenAI-compatible chatbot)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    system_prompt: SystemPrompt | None = None
    model: ModelName | None = None
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    endpoint: EndpointName | None = None


class UserSpec(BaseModel):
    """The simulated user's model, sampling and extra instructions."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: ModelName | None = None
    temperature: Temperature | None = None
    instructions: Instructions | None = None


MAX_JUDGE_REPEATS = 9


class JudgeSpec(BaseModel):
    """Criteria the judge checks against the transcript once the conversation ended; asked
    `repeats` times, each criterion's verdict is the majority (a judge that disagrees with
    itself says so)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    criteria: list[Criterion] = Field(min_length=1, max_length=MAX_CRITERIA)
    model: ModelName | None = None
    repeats: int = Field(1, ge=1, le=MAX_JUDGE_REPEATS)
    temperature: Temperature | None = None  # default 0 when asked once, else 0.7


class SimulationEvent(BaseModel):
    """One simulation request: the seed's Event Schema, batch grouping, and the optional
    system under test, simulated user and judge (README, "Event fields")."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: Id
    persona: Persona
    intent: Intent
    max_iterations: int = Field(ge=1)
    callback_url: Url
    model: ModelName
    batch_id: Id = DEFAULT_BATCH_ID
    batch_size: int | None = Field(None, ge=1, le=10_000_000)
    assistant: AssistantSpec | None = None
    user: UserSpec | None = None
    judge: JudgeSpec | None = None
    min_iterations: int | None = Field(None, ge=1)
    scenario_id: Id | None = None
    batch_callback_url: Url | None = None  # the batch report is POSTed there when it finishes
    # The batch's spend cap in USD: once the batch's reported cost reaches it, its remaining
    # LLM calls are not made and its simulations end as budget_exhausted.
    max_cost_usd: float | None = Field(None, gt=0, le=1_000_000, allow_inf_nan=False)

    @property
    def scenario(self) -> str:
        """The scenario this simulation plays: `scenario_id`, else a stable hash of what
        makes the simulated user's part (persona, intent, user instructions), so repeats of
        one scenario pair up across batches (`faust -A simapp compare`)."""
        if self.scenario_id:
            return self.scenario_id
        instructions = self.user.instructions if self.user and self.user.instructions else ""
        text = json.dumps(
            [self.persona.model_dump(mode="json"), self.intent, instructions], sort_keys=True
        )
        return "s-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @property
    def assistant_model(self) -> str:
        return self.assistant.model if self.assistant and self.assistant.model else self.model

    def models(self, user_default: str | None, judge_default: str | None) -> dict[str, str]:
        """The model of each role this event uses (judge only when it has criteria)."""
        user = self.user.model if self.user and self.user.model else user_default
        out = {"assistant": self.assistant_model, "user": user or self.model}
        if self.judge is not None:
            out["judge"] = self.judge.model or judge_default or self.model
        return out

    def named_models(self) -> dict[str, str]:
        """The models the event itself names, by field (what ALLOWED_MODELS restricts)."""
        out = {"model": self.model}
        if self.assistant and self.assistant.model and not self.assistant.endpoint:
            out["assistant.model"] = self.assistant.model
        if self.user and self.user.model:
            out["user.model"] = self.user.model
        if self.judge and self.judge.model:
            out["judge.model"] = self.judge.model
        return out


class Message(BaseModel):
    """One entry of `conversation_history` (OpenAI chat shape)."""

    role: Literal["system", "user", "assistant"]
    content: str


class RoleUsage(BaseModel):
    """What one role's calls cost."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None

    def add(self, prompt: int, completion: int, cost: float | None) -> None:
        self.llm_calls += 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens = self.prompt_tokens + self.completion_tokens
        if cost is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost


class Usage(RoleUsage):
    """What a conversation cost (extra field after the seed's ones), in all and by role."""

    by_role: dict[str, RoleUsage] = Field(default_factory=dict)

    def charge(self, role: str, prompt: int, completion: int, cost: float | None) -> None:
        self.add(prompt, completion, cost)
        self.by_role.setdefault(role, RoleUsage()).add(prompt, completion, cost)


class CriterionVerdict(BaseModel):
    criterion: str
    passed: bool
    reasoning: str = ""
    agreed: int | None = None  # with judge.repeats > 1: how many answers gave this verdict


class Evaluation(BaseModel):
    """The judge's verdict on the transcript, or why there is none (`error`)."""

    passed: bool | None = None
    criteria: list[CriterionVerdict] = Field(default_factory=list)
    model: str
    error: str | None = None
    repeats: int | None = None  # with judge.repeats > 1: the answers the majority is over


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
    evaluation: Evaluation | None = None
    scenario_id: str | None = None


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

    def __init__(self, settings: Settings, *, resolve_models: bool = True) -> None:
        """`resolve_models=False` skips where a model would be sent (the LiteLLM route's
        resolution imports LiteLLM): for `submit --estimate`, never for a worker."""
        self.max_bytes = settings.max_event_bytes
        self.max_iterations = settings.max_iterations
        self.model_policy = ModelPolicy(settings, resolve=resolve_models)
        self.callback_policy = CallbackPolicy(settings.callback_allowed_hosts)
        self.endpoints = frozenset(settings.assistant_endpoints)

    def decode(self, raw: bytes | str | None) -> SimulationEvent | Rejection:
        """Never raises: any input yields an event or a rejection."""
        try:
            return self._decode(raw)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not kill the agent
            return Rejection("invalid_event", f"decoder error: {type(exc).__name__}")

    def _decode(self, raw: bytes | str | None) -> SimulationEvent | Rejection:
        data = self._parse(raw)
        if isinstance(data, Rejection):
            return data
        sim_id, batch = _peek(data, "id"), _peek(data, "batch_id")
        try:
            event = SimulationEvent.model_validate(data)
        except ValidationError as exc:
            return Rejection("invalid_field", _field_errors(exc)[:2_000], sim_id, batch)
        problem = self._problem(event)
        if problem is not None:
            reason, detail = problem
            return Rejection(reason, detail, sim_id, batch)
        return event

    def _parse(self, raw: bytes | str | None) -> dict[str, Any] | Rejection:
        """The event's JSON object, within the size limit."""
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
        return data

    def _problem(self, event: SimulationEvent) -> tuple[str, str] | None:
        """(reason, detail) when a valid event breaks this worker's rules, else None."""
        if event.max_iterations > self.max_iterations:
            return (
                "invalid_field",
                f"max_iterations: must be between 1 and MAX_ITERATIONS={self.max_iterations}, "
                f"got {event.max_iterations}",
            )
        if event.min_iterations is not None and event.min_iterations > event.max_iterations:
            return (
                "invalid_field",
                f"min_iterations: must not exceed max_iterations ({event.max_iterations}), "
                f"got {event.min_iterations}",
            )
        endpoint = event.assistant.endpoint if event.assistant else None
        if endpoint is not None and endpoint not in self.endpoints:
            return (  # never the configured names: an event must not learn them
                "invalid_field",
                f"assistant.endpoint: {endpoint!r} is not a configured endpoint",
            )
        for name, model in event.named_models().items():
            refusal = self.model_policy.refusal(model)
            if refusal is not None:
                reason, why = refusal
                return (reason, f"{name} {model!r} {why}")
        problem = self.callback_policy.check(event.callback_url)
        if problem is not None:
            return ("forbidden_callback", f"callback_url: {problem}")
        if event.batch_callback_url is not None:
            problem = self.callback_policy.check(event.batch_callback_url)
            if problem is not None:
                return ("forbidden_callback", f"batch_callback_url: {problem}")
        return None
