"""Unit tests of the conversation engine's end conditions (pure logic, scripted LLM)."""

from __future__ import annotations

import asyncio

import pytest

from simapp.simulation.conversation import (
    STOP_MARKER,
    Completion,
    ConversationEngine,
    ConversationState,
    LLMError,
)
from simapp.simulation.schemas import SimulationEvent

EVENT = SimulationEvent.model_validate(
    {
        "id": "sim-1",
        "persona": {"name": "Tess", "description": "tester", "traits": ["curious"]},
        "intent": "Help me test",
        "max_iterations": 3,
        "callback_url": "http://example.com/cb",
        "model": "gpt-4",
    }
)


class ScriptedLLM:
    """Answers assistant calls with 'A<n>' and user calls from a script."""

    def __init__(self, user_replies: list[str], delay: float = 0.0, fail_on: int | None = None):
        self.user_replies = list(user_replies)
        self.calls: list[tuple[str, list[dict]]] = []
        self.options: list[dict] = []
        self.delay = delay
        self.fail_on = fail_on

    async def complete(self, model: str, messages: list[dict], **options) -> Completion:
        self.calls.append((model, messages))
        self.options.append(options)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise LLMError("HTTP 401: bad key")
        if self.delay:
            await asyncio.sleep(self.delay)
        if "Stop marker:" in messages[0]["content"]:
            return Completion(self.user_replies.pop(0), 3, 2)
        return Completion(f"A{len(self.calls)}", 5, 1, cost_usd=0.001)


def engine(llm, **kw) -> ConversationEngine:
    return ConversationEngine(
        llm, max_iterations_cap=kw.pop("cap", 10), timeout=kw.pop("timeout", 5), **kw
    )


async def test_user_stop_marker_ends_and_is_stripped():
    llm = ScriptedLLM(["more please", f"thanks, bye {STOP_MARKER}"])
    s = await engine(llm).run(EVENT)
    assert s.end_reason == "completed"
    assert [m.role for m in s.conversation_history] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert s.conversation_history[-1].content == "thanks, bye"
    assert s.total_iterations == 2
    assert s.usage.llm_calls == 4 and s.usage.prompt_tokens == 16 and s.usage.completion_tokens == 6
    assert s.usage.cost_usd == pytest.approx(0.002)


async def test_bare_stop_marker_adds_no_empty_message():
    s = await engine(ScriptedLLM([STOP_MARKER])).run(EVENT)
    assert s.end_reason == "completed"
    assert [m.role for m in s.conversation_history] == ["system", "user", "assistant"]


async def test_max_iterations_spends_no_user_turn_after_last_assistant_turn():
    llm = ScriptedLLM(["u1", "u2", "u3", "u4"])
    s = await engine(llm).run(EVENT)
    assert s.end_reason == "max_iterations" and s.total_iterations == 3
    assert s.conversation_history[-1].role == "assistant"
    assert len(llm.calls) == 5  # A, U, A, U, A


async def test_max_iterations_capped_by_setting():
    s = await engine(ScriptedLLM(["u"] * 10), cap=2).run(EVENT)
    assert s.end_reason == "max_iterations" and s.total_iterations == 2


async def test_timeout_delivers_partial_history():
    s = await engine(ScriptedLLM(["u"] * 10, delay=0.2), timeout=0.5).run(EVENT)
    assert s.end_reason == "timeout"
    assert 1 <= s.total_iterations < 3
    roles = [m.role for m in s.conversation_history]
    assert roles[:2] == ["system", "user"]


async def test_unrecoverable_llm_error_ends_with_reason():
    s = await engine(ScriptedLLM(["u"], fail_on=2)).run(EVENT)
    assert s.end_reason == "llm_error" and "401" in (s.error or "")
    assert s.total_iterations == 1


async def test_user_model_and_role_swap():
    llm = ScriptedLLM([STOP_MARKER])
    await engine(llm, user_model="judge-model").run(EVENT)
    model, messages = llm.calls[1]
    assert model == "judge-model"
    assert "Persona: Tess" in messages[0]["content"] and "curious" in messages[0]["content"]
    assert [m["role"] for m in messages[1:]] == ["assistant", "user"]  # intent is "ours"


async def test_resume_from_checkpoint_rebills_no_turn():
    seen: list[ConversationState] = []

    async def checkpoint(state: ConversationState) -> None:
        seen.append(ConversationState.from_dict(state.to_dict()))

    await engine(ScriptedLLM(["u1", "u2"])).run(EVENT, checkpoint=checkpoint)
    mid = seen[1]  # after A1 and U1
    llm = ScriptedLLM(["u2"])
    s = await engine(llm).run(EVENT, state=mid)
    assert s.total_iterations == 3 and len(llm.calls) == 3  # A2, U2, A3 only


async def test_custom_end_detection_extension_point():
    class StopOnA(ConversationEngine):
        def should_end(self, event, state):
            return "custom" if state.history[-1]["content"].startswith("A") else None

    s = await StopOnA(ScriptedLLM([]), max_iterations_cap=10, timeout=5).run(EVENT)
    assert s.end_reason == "custom" and s.total_iterations == 1


class JudgeLLM:
    """The judge answers from a script of verdict lists (None: an unreadable answer)."""

    def __init__(self, answers: list[list[bool] | None]) -> None:
        self.answers = list(answers)
        self.temperatures: list[float] = []

    async def complete(self, model: str, messages: list[dict], **options) -> Completion:
        if options.get("role") != "judge":
            return Completion(
                f"fine {STOP_MARKER}" if "Stop marker" in messages[0]["content"] else "A"
            )
        self.temperatures.append(options.get("temperature"))
        answer = self.answers.pop(0)
        if answer is None:
            return Completion("no idea")
        items = [
            {"criterion": "c", "passed": p, "reasoning": f"r{i}{p}"} for i, p in enumerate(answer)
        ]
        return Completion('{"criteria": ' + __import__("json").dumps(items) + "}")


def judged(repeats: int, **judge) -> SimulationEvent:
    data = EVENT.model_dump()
    data["judge"] = {"criteria": ["first", "second"], "repeats": repeats, **judge}
    return SimulationEvent.model_validate(data)


async def test_the_judge_asked_three_times_gives_the_majority_and_the_agreement():
    llm = JudgeLLM([[True, False], [True, True], None, [False, False]])
    summary = await engine(llm).run(judged(3))
    evaluation = summary.evaluation
    assert evaluation is not None and evaluation.repeats == 2  # one answer unreadable
    first, second = evaluation.criteria
    assert (first.passed, first.agreed) == (True, 2)
    assert (second.passed, second.agreed) == (False, 1)  # 1 of 2 passed: a tie fails it
    assert evaluation.passed is False
    assert summary.usage.by_role["judge"].llm_calls == 3  # every answer is paid for
    assert llm.temperatures == [0.7, 0.7, 0.7]  # repeats of a temperature-0 answer say nothing


async def test_one_judge_call_by_default_at_temperature_zero():
    llm = JudgeLLM([[True, True]])
    summary = await engine(llm).run(judged(1))
    assert summary.evaluation is not None and summary.evaluation.repeats is None
    assert [c.agreed for c in summary.evaluation.criteria] == [None, None]
    assert llm.temperatures == [0.0]


def test_judge_repeats_are_bounded():
    with pytest.raises(ValueError):
        judged(10)
