"""What a burst will cost and how long it will take, before anything is sent.

`faust -A simapp submit FILE --estimate` and `loadtest --estimate`. Per event: its iterations
(max_iterations, capped by MAX_ITERATIONS) times a calls-per-iteration figure, plus one judge
call when it has criteria; tokens per call; prices from LiteLLM's cost map (simapp/llm/costs.py).
The figures come from the last results on the results topic when there are some (what these
conversations really did), else from stated defaults: 2 calls per iteration (an assistant and a
user turn each: every conversation running to max_iterations, the upper bound) and
DEFAULT_PROMPT_TOKENS / DEFAULT_COMPLETION_TOKENS per call. The time is calls over the rate
the budgets allow, each backend on its own budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from simapp.config import Settings
from simapp.limits.budgets import effective_rate
from simapp.llm.costs import price_of
from simapp.simulation.schemas import SimulationEvent

log = logging.getLogger(__name__)

DEFAULT_CALLS_PER_ITERATION = 2.0
DEFAULT_PROMPT_TOKENS = 600
DEFAULT_COMPLETION_TOKENS = 80
HISTORY_RESULTS = 2_000  # the most recent results read for the figures


@dataclass(frozen=True)
class Figures:
    """What one conversation iteration and one call cost, and where the numbers come from."""

    calls_per_iteration: float = DEFAULT_CALLS_PER_ITERATION
    prompt_tokens: float = DEFAULT_PROMPT_TOKENS
    completion_tokens: float = DEFAULT_COMPLETION_TOKENS
    source: str = "stated defaults (no earlier results read)"


def figures_from_results(results: list[dict[str, Any]]) -> Figures | None:
    """Figures from earlier summaries (the results topic keeps max_iterations beside them)."""
    iterations = calls = prompt = completion = 0
    results = [{**r, **r["summary"]} if isinstance(r.get("summary"), dict) else r for r in results]
    for r in results:
        usage, max_iterations = r.get("usage") or {}, r.get("max_iterations")
        if not isinstance(max_iterations, int) or max_iterations < 1:
            continue
        judge = (usage.get("by_role") or {}).get("judge") or {}
        iterations += max_iterations
        calls += int(usage.get("llm_calls") or 0) - int(judge.get("llm_calls") or 0)
        prompt += int(usage.get("prompt_tokens") or 0)
        completion += int(usage.get("completion_tokens") or 0)
    all_calls = sum(int((r.get("usage") or {}).get("llm_calls") or 0) for r in results)
    if not iterations or not all_calls:
        return None
    return Figures(
        calls_per_iteration=calls / iterations,
        prompt_tokens=prompt / all_calls,
        completion_tokens=completion / all_calls,
        source=f"the last {len(results)} results on the results topic",
    )


async def read_recent_results(settings: Settings, limit: int = HISTORY_RESULTS) -> list[dict]:
    """Up to `limit` of the newest records of the results topic ([] when unreachable)."""
    from simapp.kafka.reader import TopicReader, json_value

    out: list[dict] = []
    try:
        async with asyncio.timeout(15), TopicReader(settings, request_timeout_ms=5_000) as reader:
            partitions = reader.partitions(settings.results_topic)
            if not partitions:
                return out
            await reader.from_last(settings.results_topic, max(1, limit // len(partitions)))
            async for record in reader.records(limit=limit, idle=1.0):
                value = json_value(record)
                if isinstance(value, dict):
                    out.append(value)
    except Exception as exc:  # noqa: BLE001 - an estimate without history is still useful
        log.debug("results topic not read: %r", exc)
    return out[-limit:]


def estimate(
    events: list[SimulationEvent], settings: Settings, figures: Figures, workers: int = 1
) -> dict[str, Any]:
    """Calls, tokens and cost per (role, model), and the time at the configured budgets."""
    rows: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_backend: dict[str, float] = defaultdict(float)
    endpoint_models = {n: e.model for n, e in settings.assistant_endpoints.items()}
    for event in events:
        iterations = min(event.max_iterations, settings.max_iterations)
        turns = iterations * figures.calls_per_iteration
        models = event.models(settings.user_simulator_model, settings.judge_model)
        endpoint = event.assistant.endpoint if event.assistant else None
        if endpoint and not (event.assistant and event.assistant.model):
            models["assistant"] = endpoint_models.get(endpoint, models["assistant"])
        share = {"assistant": turns / 2, "user": turns / 2}
        if event.judge is not None:
            share["judge"] = 1.0
        for role, calls in share.items():
            row = rows[(role, models[role])]
            row["calls"] += calls
            backend = endpoint if role == "assistant" and endpoint else "default"
            by_backend[backend] += calls
    out_rows = []
    for (role, model), row in sorted(rows.items()):
        prompt = row["calls"] * figures.prompt_tokens
        completion = row["calls"] * figures.completion_tokens
        price = price_of(model)
        cost = price.cost(int(prompt), int(completion)) if price else None
        out_rows.append(
            {"role": role, "model": model, "calls": round(row["calls"]),
             "prompt_tokens": round(prompt), "completion_tokens": round(completion),
             "cost_usd": None if cost is None else round(cost, 4)}
        )  # fmt: skip
    costs = [row["cost_usd"] for row in out_rows]
    total_cost = None if None in costs else round(sum(costs), 4)
    times = {name: calls / rate_of(settings, name, workers) for name, calls in by_backend.items()}
    caps = [e.max_cost_usd for e in events if e.max_cost_usd is not None]
    return {
        "events": len(events),
        "llm_calls": round(sum(by_backend.values())),
        "by_role_and_model": out_rows,
        "seconds": round(max(times.values(), default=0.0), 1),
        "seconds_by_backend": {k: round(v, 1) for k, v in times.items()},
        "cost_usd": total_cost,
        "max_cost_usd": min(caps) if caps else None,
        "figures": figures.__dict__,
        "workers": workers,
    }


def rate_of(settings: Settings, backend: str, workers: int) -> float:
    """Requests/s the group may send to a backend: the global budget, else one per worker."""
    margin = settings.llm_rate_safety_margin
    if backend != "default":
        return effective_rate(settings.assistant_endpoints[backend].rps, 1.0, margin)
    if settings.llm_global_rate_limit_rps:
        return effective_rate(settings.llm_global_rate_limit_rps, 1.0, margin)
    return effective_rate(settings.llm_rate_limit_rps * workers, 1.0, margin)


def cap_line(cap: float, cost: float | None) -> str:
    """Whether the batch's max_cost_usd is likely to stop it, by the estimated cost."""
    if cost is None:
        return f"spend cap: ${cap:.2f}; the cost is unknown, so it may stop the batch"
    if cost <= cap:
        return f"spend cap: ${cap:.2f}, above the estimated cost: it should not stop the batch"
    return (
        f"spend cap: ${cap:.2f}, below the estimated cost: the batch is likely to stop at about "
        f"{cap / cost:.0%} of its LLM calls; the simulations it has not finished end as "
        "budget_exhausted"
    )


def report_lines(result: dict[str, Any], settings: Settings) -> list[str]:
    f = result["figures"]
    budget = (
        f"LLM_GLOBAL_RATE_LIMIT_RPS={settings.llm_global_rate_limit_rps:g}"
        if settings.llm_global_rate_limit_rps
        else f"LLM_RATE_LIMIT_RPS={settings.llm_rate_limit_rps:g} x {result['workers']} worker(s)"
    )
    cost = result["cost_usd"]
    lines = [
        f"estimate for {result['events']} events (nothing was sent)",
        f"  assumptions: {f['calls_per_iteration']:.2f} LLM calls per iteration and "
        f"{f['prompt_tokens']:.0f} prompt + {f['completion_tokens']:.0f} completion tokens per "
        f"call, from {f['source']}; an iteration's calls split evenly between the assistant "
        "and the simulated user; one judge call per event with criteria",
        f"  LLM calls: {result['llm_calls']}",
        f"  time at the budget: {result['seconds']:.0f} s ({budget}, less the "
        f"{settings.llm_rate_safety_margin:.0%} safety margin; each endpoint at its own rps)",
        "  cost: "
        + (
            "unknown: some models are not in LiteLLM's cost map" if cost is None else f"${cost:.2f}"
        ),  # fmt: skip
    ]
    cap = result.get("max_cost_usd")
    if cap is not None:
        lines.append("  " + cap_line(cap, cost))
    for row in result["by_role_and_model"]:
        price = "unpriced" if row["cost_usd"] is None else f"${row['cost_usd']:.4f}"
        lines.append(
            f"    {row['role']:<9} {row['model']:<32} {row['calls']:>8} calls  "
            f"{row['prompt_tokens']:>10} + {row['completion_tokens']:>8} tokens  {price}"
        )
    return lines
