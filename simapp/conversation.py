"""The conversation engine: an assistant under test and a simulated user, turn by turn.

Pure async code with no Faust inside, so it can be unit-tested and replaced. Extension points
(the seed's Development section): subclass `ConversationEngine` and override `should_end`
(end detection), `assistant_turn` / `user_turn` (one turn each) or `run_turns` (the loop), then
point `ENGINE_CLASS=yourmodule:YourEngine` at it. No fork needed.

`end_reason` values:
- ``completed``      the simulated user said it is done (it emitted the stop marker);
- ``max_iterations`` the assistant answered `max_iterations` times;
- ``timeout``        CONVERSATION_TIMEOUT elapsed; the partial history is delivered;
- ``llm_error``      the provider refused a call in a way retrying cannot fix (401/403, 400,
                     unknown model); `error` in the summary says what;
- ``llm_unavailable`` retries were exhausted (timeouts, 5xx, connection errors).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from simapp.schemas import Message, SimulationEvent, Summary, Usage

STOP_MARKER = "<<END>>"

END_COMPLETED = "completed"
END_MAX_ITERATIONS = "max_iterations"
END_TIMEOUT = "timeout"
END_LLM_ERROR = "llm_error"
END_LLM_UNAVAILABLE = "llm_unavailable"
END_CONTEXT_WINDOW = "context_window_exceeded"
END_REASONS = (
    END_COMPLETED,
    END_MAX_ITERATIONS,
    END_TIMEOUT,
    END_LLM_ERROR,
    END_LLM_UNAVAILABLE,
    END_CONTEXT_WINDOW,
)


@dataclass(slots=True)
class Completion:
    """One LLM answer and what it cost."""

    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


class LLMError(Exception):
    """An LLM call failed for good. `end_reason` is llm_error or llm_unavailable."""

    def __init__(self, message: str, end_reason: str = END_LLM_ERROR) -> None:
        super().__init__(message)
        self.end_reason = end_reason


class LLM(Protocol):
    """What the engine needs from an LLM client (simapp.llm_client.LLMClient)."""

    async def complete(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        role: str = "assistant",
        temperature: float | None = None,
        max_tokens: int | None = None,
        endpoint: str | None = None,
    ) -> Completion: ...


@dataclass(slots=True)
class ConversationState:
    """Everything needed to resume a conversation: it is what a checkpoint stores."""

    history: list[dict[str, str]]
    iterations: int = 0
    usage: Usage = field(default_factory=Usage)
    elapsed_ms: int = 0  # time spent in earlier attempts (before a crash/resume)

    def to_dict(self) -> dict:
        return {
            "history": self.history,
            "iterations": self.iterations,
            "usage": self.usage.model_dump(),
            "elapsed_ms": self.elapsed_ms,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ConversationState:
        return cls(
            history=list(data["history"]),
            iterations=int(data["iterations"]),
            usage=Usage.model_validate(data.get("usage") or {}),
            elapsed_ms=int(data.get("elapsed_ms", 0)),
        )


Checkpoint = Callable[[ConversationState], Awaitable[None]]


def assistant_system_prompt(event: SimulationEvent) -> str:
    return "You are a helpful, concise assistant. Answer the user's questions accurately."


def user_system_prompt(event: SimulationEvent, stop_marker: str = STOP_MARKER) -> str:
    """Prompt that makes an LLM play the persona. Mentions the marker it must use to finish."""
    persona = event.persona
    traits = ", ".join(persona.traits) if persona.traits else "none in particular"
    return (
        "You are role-playing a user talking to an AI assistant. Stay in character; never say "
        "you are an AI.\n"
        f"Persona: {persona.name}\n"
        f"Description: {persona.description}\n"
        f"Traits: {traits}\n"
        f"Your goal: {event.intent}\n"
        "Reply with the user's next message only. When your goal is met or you want to stop, "
        "write a short closing message and end it with the stop marker.\n"
        f"Stop marker: {stop_marker}"
    )


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
    ) -> None:
        self.llm = llm
        self.max_iterations_cap = max_iterations_cap
        self.timeout = timeout
        self.user_model = user_model

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
        """The simulated user's prompt: the history with roles swapped."""
        swapped = {"user": "assistant", "assistant": "user"}
        messages = [{"role": "system", "content": user_system_prompt(event, self.stop_marker)}]
        messages.extend(
            {"role": swapped[m["role"]], "content": m["content"]}
            for m in history
            if m["role"] != "system"
        )
        return messages

    async def assistant_turn(self, event: SimulationEvent, state: ConversationState) -> None:
        reply = await self.llm.complete(event.model, state.history)
        self._account(state, reply)
        state.history.append({"role": "assistant", "content": reply.content})
        state.iterations += 1

    async def user_turn(self, event: SimulationEvent, state: ConversationState) -> str | None:
        """Adds the simulated user's reply; returns `completed` when it used the stop marker."""
        reply = await self.llm.complete(
            self.user_model or event.model, self.user_view(event, state.history)
        )
        self._account(state, reply)
        text, done = self.strip_marker(reply.content)
        if text or not done:
            state.history.append({"role": "user", "content": text})
        return END_COMPLETED if done else None

    async def run_turns(
        self, event: SimulationEvent, state: ConversationState, checkpoint: Checkpoint | None
    ) -> str:
        """The turn loop. Never spends a user turn after the last assistant turn."""
        while True:
            if state.history[-1]["role"] == "user":
                await self.assistant_turn(event, state)
                if checkpoint is not None:
                    await checkpoint(state)
            reason = self.should_end(event, state)
            if reason is not None:
                return reason
            reason = await self.user_turn(event, state)
            if checkpoint is not None:
                await checkpoint(state)
            if reason is not None:
                return reason

    # ----- driver -----------------------------------------------------------------------
    def strip_marker(self, text: str) -> tuple[str, bool]:
        if self.stop_marker in text:
            return text.replace(self.stop_marker, "").strip(), True
        return text.strip(), False

    @staticmethod
    def _account(state: ConversationState, reply: Completion) -> None:
        usage = state.usage
        usage.llm_calls += 1
        usage.prompt_tokens += reply.prompt_tokens
        usage.completion_tokens += reply.completion_tokens
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        if reply.cost_usd is not None:
            usage.cost_usd = (usage.cost_usd or 0.0) + reply.cost_usd

    async def run(
        self,
        event: SimulationEvent,
        state: ConversationState | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> Summary:
        """Run (or resume from `state`) to an end and build the summary."""
        state = state or self.initial_state(event)
        started = time.monotonic()
        budget = max(0.0, self.timeout - state.elapsed_ms / 1000)
        error: str | None = None
        try:
            async with asyncio.timeout(budget):
                reason = await self.run_turns(event, state, checkpoint)
        except TimeoutError:
            reason = END_TIMEOUT
        except LLMError as exc:
            reason, error = exc.end_reason, str(exc)[:1_000]
        # The history is only ever appended with completed turns, so it is consistent here.
        duration_ms = state.elapsed_ms + int((time.monotonic() - started) * 1000)
        return Summary(
            simulation_id=event.id,
            conversation_history=[Message(**m) for m in state.history],
            total_iterations=state.iterations,
            end_reason=reason,
            duration_ms=duration_ms,
            usage=state.usage,
            batch_id=event.batch_id,
            error=error,
        )
