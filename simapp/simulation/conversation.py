"""The conversation engine: the system under test and a simulated user, turn by turn.

Pure async code with no Faust inside, so it is unit-tested and replaceable: subclass
`ConversationEngine` and override `should_end` (end detection), `assistant_turn` /
`user_turn` (one turn), `user_view` (the simulated user's prompt), `evaluate` (the judge) or
`run_turns` (the loop), then set `ENGINE_CLASS=yourmodule:YourEngine`.

An event may bring the system under test (`assistant`: its system prompt, model, sampling,
or a configured endpoint), the simulated user's model and instructions (`user`), criteria for
a judge (`judge`) and `min_iterations`. The README's end_reason table lists every reason.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from simapp.llm.completion import (
    END_CONTEXT_WINDOW,
    END_LLM_ERROR,
    END_LLM_UNAVAILABLE,
    Completion,
    LLMError,
)
from simapp.simulation.schemas import (
    CriterionVerdict,
    Evaluation,
    Message,
    SimulationEvent,
    Summary,
    Usage,
)

STOP_MARKER = "<<END>>"

END_COMPLETED = "completed"
END_MAX_ITERATIONS = "max_iterations"
END_TIMEOUT = "timeout"
END_USER_ERROR = "user_error"
END_SIZE_LIMIT = "size_limit"  # the history outgrew MAX_HISTORY_BYTES
END_BUDGET_EXHAUSTED = "budget_exhausted"  # the batch's max_cost_usd was reached
END_REASONS = (
    END_COMPLETED,
    END_MAX_ITERATIONS,
    END_TIMEOUT,
    END_LLM_ERROR,
    END_LLM_UNAVAILABLE,
    END_CONTEXT_WINDOW,
    END_USER_ERROR,
    END_SIZE_LIMIT,
    END_BUDGET_EXHAUSTED,
)
SIZE_MARKER = "…[simapp cut {n} characters: the conversation reached MAX_HISTORY_BYTES]"
ROLE_ASSISTANT, ROLE_USER, ROLE_JUDGE = "assistant", "user", "judge"

GENERIC_ASSISTANT_PROMPT = (
    "You are a helpful, concise assistant. Answer the user's questions accurately."
)
GO_ON = (
    "Stay in character and reply with the user's next message. Do not end the conversation "
    "yet: the assistant has not answered enough times."
)
EMPTY_REPLY = "Your last reply was empty. Reply with the user's next message."
JUDGE_PROMPT = (
    "You are an impartial judge of a conversation between a user and an AI assistant. For "
    "each numbered criterion, decide whether the assistant's side of the conversation meets "
    "it. Answer with JSON only, in the order given: "
    '{"criteria": [{"criterion": "<text>", "passed": true, "reasoning": "<one sentence>"}]}'
)
REASONING_LIMIT = 2_000


class LLM(Protocol):
    """What the engine needs from an LLM client (simapp.llm.client.LLMClient)."""

    async def complete(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        role: str = ROLE_ASSISTANT,
        temperature: float | None = None,
        max_tokens: int | None = None,
        endpoint: str | None = None,
    ) -> Completion: ...


@dataclass(slots=True)
class ConversationState:
    """Everything needed to resume a conversation: what a checkpoint stores."""

    history: list[dict[str, str]]
    iterations: int = 0
    usage: Usage = field(default_factory=Usage)
    elapsed_ms: int = 0  # time spent in earlier attempts (before a crash/resume)
    ended: str | None = None  # the end_reason, once the turns are over (the judge may follow)
    error: str | None = None
    spend_reported: float = 0.0  # USD of this conversation reported to its batch's spend cap
    _bytes: int | None = None  # the history's JSON size, counted as turns are added

    @property
    def history_bytes(self) -> int:
        """UTF-8 bytes of the history as compact JSON (what its records will carry)."""
        if self._bytes is None:
            self._bytes = sum(message_bytes(m) for m in self.history)
        return self._bytes

    def add(self, role: str, content: str) -> None:
        self.history.append({"role": role, "content": content})
        self._bytes = self.history_bytes + message_bytes(self.history[-1])

    def to_dict(self) -> dict:
        return {
            "history": self.history,
            "iterations": self.iterations,
            "usage": self.usage.model_dump(),
            "elapsed_ms": self.elapsed_ms,
            "ended": self.ended,
            "error": self.error,
            "spend_reported": self.spend_reported,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ConversationState:
        return cls(
            history=list(data["history"]),
            iterations=int(data["iterations"]),
            usage=Usage.model_validate(data.get("usage") or {}),
            elapsed_ms=int(data.get("elapsed_ms", 0)),
            ended=data.get("ended"),
            error=data.get("error"),
            spend_reported=float(data.get("spend_reported") or 0.0),
        )


Checkpoint = Callable[[ConversationState], Awaitable[None]]
Stop = Callable[[], bool]  # True once the conversation must make no more LLM calls

_stop: ContextVar[Stop | None] = ContextVar("simapp_stop", default=None)


def message_bytes(message: dict[str, str]) -> int:
    """What one history entry adds to a record, as compact UTF-8 JSON."""
    return len(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")) + 1


def clip(content: str, room: int) -> tuple[str, bool]:
    """`content` cut to about `room` bytes of JSON, with a marker; (text, whether cut)."""
    size = len(json.dumps(content, ensure_ascii=False).encode("utf-8"))
    if size <= room:
        return content, False
    keep = max(0, int((room - 200) * len(content) / size))
    return content[:keep] + SIZE_MARKER.format(n=len(content) - keep), True


def assistant_system_prompt(event: SimulationEvent) -> str:
    spec = event.assistant
    return spec.system_prompt if spec and spec.system_prompt else GENERIC_ASSISTANT_PROMPT


def user_system_prompt(event: SimulationEvent, stop_marker: str = STOP_MARKER) -> str:
    """The prompt that makes an LLM play the persona, with the marker it must use to finish."""
    persona = event.persona
    traits = ", ".join(persona.traits) if persona.traits else "none in particular"
    lines = [
        "You are role-playing a user talking to an AI assistant. Stay in character; never say "
        "you are an AI.",
        f"Persona: {persona.name}",
        f"Description: {persona.description}",
        f"Traits: {traits}",
        f"Your goal: {event.intent}",
    ]
    if event.user and event.user.instructions:
        lines.append(f"Also: {event.user.instructions}")
    if event.min_iterations:
        lines.append(
            f"Do not end the conversation before the assistant has answered "
            f"{event.min_iterations} times."
        )
    lines += [
        "Reply with the user's next message only. When your goal is met or you want to stop, "
        "write a short closing message and end it with the stop marker.",
        f"Stop marker: {stop_marker}",
    ]
    return "\n".join(lines)


def judge_messages(event: SimulationEvent, history: list[dict[str, str]]) -> list[dict]:
    assert event.judge is not None
    criteria = "\n".join(f"{i}. {c}" for i, c in enumerate(event.judge.criteria, start=1))
    turns = "\n".join(
        f"{m['role'].upper()}: {m['content']}" for m in history if m["role"] != "system"
    )
    instructions = ""
    if event.assistant and event.assistant.system_prompt:
        instructions = f"The assistant's instructions:\n{event.assistant.system_prompt}\n\n"
    return [
        {"role": "system", "content": JUDGE_PROMPT},
        {"role": "user", "content": f"{instructions}Criteria:\n{criteria}\n\nTranscript:\n{turns}"},
    ]


def parse_verdicts(text: str, criteria: list[str]) -> list[CriterionVerdict] | None:
    """The judge's JSON answer, one verdict per criterion in order; None when unreadable."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match is None:
        return None
    try:
        data = json.loads(match.group(0))
    except ValueError:
        return None
    items = data.get("criteria") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) != len(criteria):
        return None
    verdicts = []
    for criterion, item in zip(criteria, items, strict=True):
        if not isinstance(item, dict) or not isinstance(item.get("passed"), bool):
            return None
        reasoning = item.get("reasoning")
        verdicts.append(
            CriterionVerdict(
                criterion=criterion,
                passed=item["passed"],
                reasoning=str(reasoning)[:REASONING_LIMIT] if reasoning is not None else "",
            )
        )
    return verdicts


def majority(runs: list[list[CriterionVerdict]]) -> list[CriterionVerdict]:
    """Per criterion, the verdict most answers gave (a tie fails it), how many gave it, and
    the reasoning of the first answer that gave it."""
    out = []
    for answers in zip(*runs, strict=True):
        passes = sum(1 for a in answers if a.passed)
        passed = passes * 2 > len(answers)
        agreeing = [a for a in answers if a.passed == passed]
        out.append(
            CriterionVerdict(
                criterion=answers[0].criterion,
                passed=passed,
                reasoning=agreeing[0].reasoning,
                agreed=len(agreeing),
            )
        )
    return out


class ConversationEngine:
    """Runs one simulation. Stateless between runs; one instance serves every conversation."""

    stop_marker = STOP_MARKER

    def __init__(
        self,
        llm: LLM,
        *,
        max_iterations_cap: int,
        timeout: float,
        user_model: str | None = None,
        judge_model: str | None = None,
        judge_timeout: float = 60.0,
        endpoint_models: Mapping[str, str] | None = None,
        max_history_bytes: int | None = None,
    ) -> None:
        self.llm = llm
        self.max_iterations_cap = max_iterations_cap
        self.timeout = timeout
        self.user_model = user_model
        self.judge_model = judge_model
        self.judge_timeout = judge_timeout
        self.endpoint_models = dict(endpoint_models or {})
        self.max_history_bytes = max_history_bytes

    # ----- extension points -------------------------------------------------------------
    def initial_state(self, event: SimulationEvent) -> ConversationState:
        return ConversationState(
            history=[
                {"role": "system", "content": assistant_system_prompt(event)},
                {"role": "user", "content": event.intent},
            ]
        )

    def should_end(self, event: SimulationEvent, state: ConversationState) -> str | None:
        """End detection after an assistant turn: an end_reason, or None to go on."""
        if state.iterations >= min(event.max_iterations, self.max_iterations_cap):
            return END_MAX_ITERATIONS
        return None

    def user_view(self, event: SimulationEvent, history: list[dict[str, str]]) -> list[dict]:
        """The simulated user's prompt: the persona, then the history with roles swapped."""
        swapped = {"user": "assistant", "assistant": "user"}
        messages = [{"role": "system", "content": user_system_prompt(event, self.stop_marker)}]
        messages.extend(
            {"role": swapped[m["role"]], "content": m["content"]}
            for m in history
            if m["role"] != "system"
        )
        return messages

    async def assistant_turn(self, event: SimulationEvent, state: ConversationState) -> None:
        spec = event.assistant
        endpoint = spec.endpoint if spec else None
        model = event.assistant_model
        if endpoint is not None and not (spec and spec.model):
            model = self.endpoint_models.get(endpoint, model)  # what the endpoint serves
        reply = await self.complete(
            model,
            state.history,
            role=ROLE_ASSISTANT,
            temperature=spec.temperature if spec else None,
            max_tokens=spec.max_tokens if spec else None,
            endpoint=endpoint,
        )
        self._account(state, ROLE_ASSISTANT, reply)
        self.append(state, "assistant", reply.content)
        state.iterations += 1

    async def user_turn(self, event: SimulationEvent, state: ConversationState) -> str | None:
        """Adds the simulated user's reply; `completed` when it used the stop marker (and the
        assistant answered `min_iterations` times), `user_error` when it twice said nothing."""
        spec = event.user
        model = (spec.model if spec else None) or self.user_model or event.model
        nudge = None
        for _attempt in range(2):
            messages = self.user_view(event, state.history)
            if nudge is not None:
                messages.append({"role": "system", "content": nudge})
            reply = await self.complete(
                model, messages, role=ROLE_USER, temperature=spec.temperature if spec else None
            )
            self._account(state, ROLE_USER, reply)
            text, done = self.strip_marker(reply.content)
            if done and state.iterations < (event.min_iterations or 0):
                done = False  # too early: the marker is not honoured
                nudge = GO_ON
            else:
                nudge = EMPTY_REPLY
            if text:
                self.append(state, "user", text)
            if done:
                return END_COMPLETED
            if text:
                return None
        return END_USER_ERROR

    async def run_turns(
        self, event: SimulationEvent, state: ConversationState, checkpoint: Checkpoint | None
    ) -> str:
        """The turn loop. Never spends a user turn after the last assistant turn."""
        while True:
            if state.history[-1]["role"] == "user":
                await self.assistant_turn(event, state)
                if checkpoint is not None:
                    await checkpoint(state)
            reason = self.over_size(state) or self.should_end(event, state)
            if reason is not None:
                return reason
            reason = await self.user_turn(event, state)
            if checkpoint is not None:
                await checkpoint(state)
            reason = self.over_size(state) or reason
            if reason is not None:
                return reason

    def append(self, state: ConversationState, role: str, content: str) -> None:
        """Add a turn; one that would take the history past MAX_HISTORY_BYTES is cut to fit
        (with a marker), and the conversation then ends with size_limit."""
        if self.max_history_bytes is not None:
            room = self.max_history_bytes - state.history_bytes
            content, cut = clip(content, max(room, 0))
            if cut:
                state.error = "the history reached MAX_HISTORY_BYTES; the last turn was cut"
        state.add(role, content)

    def over_size(self, state: ConversationState) -> str | None:
        """size_limit once the history is at its budget (a cut turn fills it)."""
        limit = self.max_history_bytes
        if limit is not None and state.history_bytes >= limit - 256:
            return END_SIZE_LIMIT
        return None

    async def evaluate(
        self, event: SimulationEvent, state: ConversationState, reason: str
    ) -> Evaluation | None:
        """The judge: `judge.repeats` calls over the transcript, one after the other, after
        any end but llm_error; each criterion's verdict is the majority of the answers that
        could be read (a tie fails it). Its failure is the evaluation's `error`, never the
        summary's."""
        judge = event.judge
        if judge is None or reason == END_LLM_ERROR:
            return None
        model = judge.model or self.judge_model or event.model
        temperature = judge.temperature
        if temperature is None:
            temperature = 0.0 if judge.repeats == 1 else 0.7  # repeats of one answer say nothing
        runs: list[list[CriterionVerdict]] = []
        error = "no answer"
        for _ in range(judge.repeats):
            verdicts, error = await self._judge_once(event, state, model, temperature, error)
            if verdicts is not None:
                runs.append(verdicts)
        if not runs:
            return Evaluation(model=model, error=error)
        if judge.repeats == 1:
            (verdicts,) = runs
            return Evaluation(
                passed=all(v.passed for v in verdicts), criteria=verdicts, model=model
            )
        verdicts = majority(runs)
        return Evaluation(
            passed=all(v.passed for v in verdicts),
            criteria=verdicts,
            model=model,
            repeats=len(runs),
        )

    async def _judge_once(
        self,
        event: SimulationEvent,
        state: ConversationState,
        model: str,
        temperature: float,
        error: str,
    ) -> tuple[list[CriterionVerdict] | None, str]:
        """One judge call: (verdicts, "") or (None, why not)."""
        assert event.judge is not None
        try:
            async with asyncio.timeout(self.judge_timeout):
                reply = await self.complete(
                    model,
                    judge_messages(event, state.history),
                    role=ROLE_JUDGE,
                    temperature=temperature,
                )
        except LLMError as exc:
            return None, f"judge call failed: {exc}"[:1_000]
        except TimeoutError:
            return None, f"judge gave no answer in {self.judge_timeout}s"
        self._account(state, ROLE_JUDGE, reply)
        verdicts = parse_verdicts(reply.content, list(event.judge.criteria))
        if verdicts is None:
            return None, f"unparseable verdict: {reply.content[:300]!r}"
        return verdicts, error

    # ----- driver -----------------------------------------------------------------------
    def strip_marker(self, text: str) -> tuple[str, bool]:
        if self.stop_marker in text:
            return text.replace(self.stop_marker, "").strip(), True
        return text.strip(), False

    @staticmethod
    def _account(state: ConversationState, role: str, reply: Completion) -> None:
        state.usage.charge(role, reply.prompt_tokens, reply.completion_tokens, reply.cost_usd)

    async def complete(self, model: str, messages: list[dict], **options: Any) -> Completion:
        """One LLM call of this conversation, unless its `stop` says no more (the batch's
        spend cap): then an LLMError ends it as budget_exhausted, no request made."""
        stop = _stop.get()
        if stop is not None and stop():
            raise LLMError("the batch's max_cost_usd was reached", END_BUDGET_EXHAUSTED)
        return await self.llm.complete(model, messages, **options)

    async def run(
        self,
        event: SimulationEvent,
        state: ConversationState | None = None,
        checkpoint: Checkpoint | None = None,
        stop: Stop | None = None,
    ) -> Summary:
        """Run (or resume from `state`) to an end, let the judge look, build the summary;
        `stop()` is asked before every LLM call."""
        _stop.set(stop)
        state = state or self.initial_state(event)
        started = time.monotonic()
        if state.ended is None:
            budget = max(0.0, self.timeout - state.elapsed_ms / 1000)
            try:
                async with asyncio.timeout(budget):
                    reason = await self.run_turns(event, state, checkpoint)
            except TimeoutError:
                reason = END_TIMEOUT
            except LLMError as exc:
                reason, state.error = exc.end_reason, str(exc)[:1_000]
            state.ended = reason
            if checkpoint is not None and event.judge is not None:
                await checkpoint(state)  # a crash from here on resumes at the judge
        evaluation = await self.evaluate(event, state, state.ended)
        # The history is only ever appended with completed turns, so it is consistent here.
        duration_ms = state.elapsed_ms + int((time.monotonic() - started) * 1000)
        return Summary(
            simulation_id=event.id,
            conversation_history=[Message(**m) for m in state.history],
            total_iterations=state.iterations,
            end_reason=state.ended,
            duration_ms=duration_ms,
            usage=state.usage,
            batch_id=event.batch_id,
            error=state.error,
            evaluation=evaluation,
            scenario_id=event.scenario,
        )
