"""A batch's spend cap (max_cost_usd, issue 22 point 3), its pure parts: the fold of "spend"
messages into the batch's row, and the pipeline's side (spend reported per turn and after the
judge, no LLM call once the batch is stopped, end_reason budget_exhausted). The real path
(Tansu, the mock LLM's prices, a worker, the sink) is tests/test_spend_cap_e2e.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from simapp.observe.progress import BadMessage, apply_once, parse_message, progress_message, view
from simapp.simulation.conversation import Completion
from simapp.simulation.schemas import EventDecoder
from tests.test_pipeline_unit import Parts, ScriptedLLM, event


def spend(cost: float, cap: float | None = 1.0, sim: str = "s1", at: float = 100.0) -> dict:
    return parse_message(
        progress_message("b1", "spend", sim, cost_usd=cost, max_cost_usd=cap, at=at)
    )


def test_spend_adds_up_and_the_cap_is_reached_once() -> None:
    row = None
    for i, cost in enumerate([0.3, 0.3, 0.3]):
        row, _, counted = apply_once(row, None, spend(cost, at=100.0 + i), 4)
        assert counted
    assert row is not None
    assert row["spent_usd"] == pytest.approx(0.9) and not row.get("capped_at")
    row, _, _ = apply_once(row, None, spend(0.2, at=110.0), 4)
    assert row["capped_at"] == 110.0
    row, _, _ = apply_once(row, None, spend(0.2, cap=50.0, at=120.0), 4)
    assert row["capped_at"] == 110.0, "reached once; a later message does not move it"
    assert row["max_cost_usd"] == 1.0, "the first cap the batch heard of is its cap"
    shown = view(row, now=130.0)
    assert (shown["spent_usd"], shown["max_cost_usd"], shown["capped"]) == (1.3, 1.0, True)
    assert (shown["completed"], shown["failed"], shown["total"]) == (0, 0, 0), "counts untouched"


@pytest.mark.parametrize("cost", [None, "0.5", True, float("nan"), float("inf")])
def test_a_spend_message_without_a_number_is_refused(cost: Any) -> None:
    message = progress_message("b1", "spend", "s1", cost_usd=cost, max_cost_usd=1.0)
    with pytest.raises(BadMessage):
        parse_message(json.loads(json.dumps(message, allow_nan=True)))


def test_a_negative_spend_counts_as_nothing_and_a_silly_cap_as_none() -> None:
    row, _, _ = apply_once(None, None, spend(-5.0, cap=float("nan")), 0)
    assert row["spent_usd"] == 0.0 and row.get("max_cost_usd") is None


@pytest.mark.parametrize("cap", [0, -1, "5", True, 1e7, "NaN"])
def test_the_event_field_is_validated(cap: Any) -> None:
    decoder = EventDecoder(_settings())
    raw = json.dumps(event(max_cost_usd=cap)).encode()
    decoded = decoder.decode(raw)
    assert getattr(decoded, "reason", None) == "invalid_field", decoded


@pytest.mark.parametrize("cap", [-1.0, 0.0, float("nan"), float("inf"), 1e9])
def test_submit_refuses_a_hostile_max_cost_for_every_line(cap: float) -> None:
    from simapp.commands.submit import validate_lines

    lines = [json.dumps({k: v for k, v in event().items() if k != "batch_id"})]
    events, problems = validate_lines(lines, _settings(), "b1", resolve_models=False, max_cost=cap)
    assert problems and "invalid_field" in problems[0], problems


def test_the_estimate_says_whether_the_cap_will_stop_the_batch() -> None:
    from simapp.commands.estimate import cap_line

    assert "should not stop" in cap_line(10.0, 4.0)
    assert "about 25% of its LLM calls" in cap_line(1.0, 4.0)
    assert "unknown" in cap_line(1.0, None)


def _settings() -> Any:
    from simapp.config import load_settings

    return load_settings(_env_file=None, callback_allowed_hosts="example.com")


class PricedLLM(ScriptedLLM):
    """The scripted conversation, every call costing 0.01 USD."""

    async def complete(self, model: str, messages: list[dict], **options: Any) -> Completion:
        reply = await super().complete(model, messages, **options)
        return Completion(reply.content, reply.prompt_tokens, reply.completion_tokens, 0.01)


def spends(parts: Parts) -> list[float]:
    return [m["cost_usd"] for m in parts.progress.values() if m["kind"] == "spend"]


async def test_each_turn_reports_its_cost_and_the_judges_cost_is_reported_too() -> None:
    parts = Parts(PricedLLM())
    parts.pipeline.stopped = lambda batch_id: False
    judged = event(max_cost_usd=5.0, judge={"criteria": ["polite"]})
    assert await parts.handle(judged) == "completed"
    summary = parts.results.values()[0]["summary"]
    assert len(parts.llm.calls) == summary["usage"]["llm_calls"] == 5  # 4 turns and the judge
    assert parts.llm.calls[-1] == "judge"
    assert sum(spends(parts)) == pytest.approx(summary["usage"]["cost_usd"]) == 0.05
    assert len(spends(parts)) == 5, "one per call: the turns' at their checkpoints, the judge's"


async def test_no_spend_messages_without_a_cap() -> None:
    parts = Parts(PricedLLM())
    parts.pipeline.stopped = lambda batch_id: True
    assert await parts.handle(event()) == "completed", "a batch without a cap is never stopped"
    assert spends(parts) == []


async def test_a_stopped_batch_makes_no_more_calls_and_ends_budget_exhausted() -> None:
    parts = Parts(PricedLLM())
    asked: list[str] = []

    def stopped(batch_id: str) -> bool:
        asked.append(batch_id)
        return bool(spends(parts))  # stopped as soon as the first call's cost is reported

    parts.pipeline.stopped = stopped
    capped = event(max_cost_usd=0.01, max_iterations=5, judge={"criteria": ["polite"]})
    assert await parts.handle(capped) == "budget_exhausted"
    assert parts.llm.calls == ["assistant"], "one call, then none: not the user, not the judge"
    assert set(asked) == {"b1"}
    record = parts.results.values()[0]
    assert record["failed"] is True
    summary = record["summary"]
    assert summary["end_reason"] == "budget_exhausted"
    assert [m["role"] for m in summary["conversation_history"]][-2:] == ["user", "assistant"]
    assert "max_cost_usd" in summary["error"]
    assert sum(spends(parts)) == pytest.approx(0.01) == summary["usage"]["cost_usd"]
