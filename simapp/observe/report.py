"""The batch report: what a burst found, folded as its simulations finish, in a bounded row.

The outbox (simapp/delivery/outbox.py) sends each simulation's final progress message with
`simulation_facts` of its results record: persona, assistant model or endpoint, models by
role, end reason, turns, duration, usage by role (tokens, cost), the judge's verdicts, the
results record's partition and offset when the simulation failed, dead-lettered or not. The
progress agent counts each simulation once (simapp/observe/progress.py `apply_once`) and, for
a counted final message, folds it here into the batch's *report row* (tables/reports.py), one
row write per simulation. The row stays small whatever the batch size:

- groups (personas, assistant models, endpoints, criteria, usage by model): the first
  REPORT_TOP_N distinct names each, every later one summed under `other`; counts of a named
  entry are exact;
- fixed histograms (turns, duration);
- a time series of TIMELINE_POINTS buckets that doubles its step (merging pairs) when the
  batch outgrows it: completions per bucket, and LLM calls per bucket with each simulation's
  calls spread evenly over its run, [end - duration, end] (an attribution, not a count of
  request times);
- the last REPORT_FAILURES_KEPT failing simulations (judged failing, failed, timed out or
  dead-lettered) with where their record is on the results topic, for the transcript view.

Pure functions over JSON-able dicts, no Faust: `fold` changes the row in place (the progress
agent is its only writer) and is unit-tested without a broker (tests/test_report_fold.py).
`report_view` is what the views, the webhook and the CLI show; `report_lines` prints it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from simapp.observe.progress import DURATION_BUCKETS_MS, quantile_ms

REPORT_VERSION = 1
ROLES = ("assistant", "user", "judge")
TIMELINE_POINTS = 120  # buckets of the time series; the step doubles when a batch outgrows it
FIRST_STEP = 1.0  # seconds, the time series' first step
# Upper bounds of the turns histogram; one more bucket holds everything above.
TURN_BUCKETS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50,
                                 75, 100, 200, 500)  # fmt: skip
NAME_CHARS = 120  # a persona, model or criterion name is kept to this many characters
CRITERIA_PER_FAILURE = 3  # failed criteria named in a failing simulation's entry
LISTED_END_REASONS = frozenset({"timeout"})  # failing although counted completed in progress
# a group entry: simulations, failed, judged, passed
N, FAILED, JUDGED, PASSED = range(4)
# a usage entry: calls, prompt tokens, completion tokens, cost (USD, known costs only)
CALLS, PROMPT, COMPLETION, COST = range(4)


def short_name(text: Any, limit: int = NAME_CHARS) -> str:
    """A name kept to `limit` characters; a longer one keeps a hash of the whole, so two
    long names that share their start stay apart."""
    text = str(text)
    if len(text) <= limit:
        return text
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4).hexdigest()
    return f"{text[: limit - 10]}…#{digest}"


# ----- facts: what the outbox says of one simulation -------------------------------------------


def simulation_facts(
    record: Mapping[str, Any], partition: int, offset: int, *, dead: bool
) -> dict[str, Any]:
    """The compact facts of a results record for its final progress message (a few hundred
    bytes: names shortened, the transcript left on the results topic)."""
    summary = record.get("summary") or {}
    facts = record.get("facts") or {}
    usage = summary.get("usage") or {}
    by_role: dict[str, list[Any]] = {}
    for role, u in (usage.get("by_role") or {}).items():
        if isinstance(u, Mapping):
            by_role[short_name(role, 20)] = [
                int(u.get("llm_calls") or 0),
                int(u.get("prompt_tokens") or 0),
                int(u.get("completion_tokens") or 0),
                u.get("cost_usd") if isinstance(u.get("cost_usd"), int | float) else None,
            ]
    end_reason = str(summary.get("end_reason") or "unknown")
    out: dict[str, Any] = {
        "persona": short_name(facts.get("persona") or "unknown"),
        "endpoint": short_name(facts["endpoint"]) if facts.get("endpoint") else None,
        "models": {
            short_name(role, 20): short_name(model)
            for role, model in (facts.get("models") or {}).items()
        },
        "end_reason": end_reason,
        "iterations": int(summary.get("total_iterations") or 0),
        "duration_ms": int(summary.get("duration_ms") or 0),
        "end_at": record.get("summarized_at"),
        "usage": by_role,
        "dead": dead,
    }
    judge = _judge_facts(summary.get("evaluation"))
    if judge is not None:
        out["judge"] = judge
    failing = (
        dead
        or bool(record.get("failed"))
        or end_reason in LISTED_END_REASONS
        or (judge is not None and judge["passed"] is False)
    )
    if failing:
        out["ref"] = [partition, offset]  # where its transcript is on the results topic
    if isinstance(record.get("batch_callback_url"), str):
        out["batch_callback_url"] = record["batch_callback_url"]
    return out


def _judge_facts(evaluation: Any) -> dict[str, Any] | None:
    if not isinstance(evaluation, Mapping):
        return None
    passed = evaluation.get("passed")
    criteria = [
        [short_name(v.get("criterion", "")), bool(v.get("passed"))]
        for v in evaluation.get("criteria") or []
        if isinstance(v, Mapping)
    ]
    return {
        "passed": passed if isinstance(passed, bool) else None,
        "error": bool(evaluation.get("error")),
        "criteria": criteria,
    }


# ----- the row ---------------------------------------------------------------------------------


def new_report(batch_id: str) -> dict[str, Any]:
    return {
        "v": REPORT_VERSION,
        "batch_id": batch_id,
        "simulations": 0,  # final messages folded with facts
        "unattributed": 0,  # final messages without facts (an event refused before it ran)
        "end_reasons": {},
        "judge": [0, 0, 0],  # judged, passed, judge errors
        "criteria": _group(),
        "personas": _group(),
        "models": _group(),  # by the assistant's model (simulations not on an endpoint)
        "endpoints": _group(),
        "usage_by_role": {},
        "usage_by_model": {"by": {}, "other": [0, 0, 0, 0.0]},
        "turns": [0] * (len(TURN_BUCKETS) + 1),
        "turns_sum": 0,
        "duration": [0] * (len(DURATION_BUCKETS_MS) + 1),
        "duration_sum_ms": 0,
        "timeline": {"t0": None, "step": FIRST_STEP, "done": [], "calls": [], "endpoint": []},
        "first_start": None,
        "last_end": None,
        "failing": [],  # the newest last
        "failing_total": 0,
        "webhook": {"url": None, "conflicts": 0, "sent_at": None},
    }


def _group() -> dict[str, Any]:
    return {"by": {}, "other": [0, 0, 0, 0]}


def _entry(group: dict[str, Any], name: str, top_n: int, size: int = 4) -> list[Any]:
    """The named entry, made while fewer than `top_n` exist; else the `other` entry."""
    by = group["by"]
    entry = by.get(name)
    if entry is None:
        if len(by) >= top_n:
            return group["other"]
        entry = by[name] = [0] * size
    return entry


def _count(group: dict[str, Any], name: str, top_n: int, failed: bool, passed: Any) -> None:
    entry = _entry(group, name, top_n)
    entry[N] += 1
    entry[FAILED] += 1 if failed else 0
    if passed is not None:
        entry[JUDGED] += 1
        entry[PASSED] += 1 if passed else 0


def _bucket(value: float, bounds: Sequence[int]) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


def fold(
    report: dict[str, Any],
    msg: Mapping[str, Any],
    *,
    top_n: int,
    kept: int,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Fold one counted final progress message (parsed, with its `facts` or None) into the
    report row, in place; returns it. `started_at` is the batch's first event (the time
    series starts there)."""
    facts = clean_facts(msg.get("facts"))
    at = float(msg["at"])
    failed = msg["kind"] == "failed"
    if facts is None:
        report["unattributed"] += 1
        if failed:
            _remember(report, msg, None, kept)
        _timeline(report, started_at, at, None, 0, 0)
        return report
    report["simulations"] += 1
    end_reason = facts["end_reason"]
    report["end_reasons"][end_reason] = report["end_reasons"].get(end_reason, 0) + 1
    judge = facts["judge"]
    passed = judge["passed"] if judge else None
    if judge:
        _judge(report, judge, top_n)
    _count(report["personas"], facts["persona"], top_n, failed, passed)
    endpoint, models = facts["endpoint"], facts["models"]
    if endpoint:
        _count(report["endpoints"], endpoint, top_n, failed, passed)
    else:
        _count(report["models"], models.get("assistant") or "unknown", top_n, failed, passed)
    calls, endpoint_calls = _usage(report, facts["usage"], models, top_n, bool(endpoint))
    iterations, duration_ms = facts["iterations"], facts["duration_ms"]
    report["turns"][_bucket(iterations, TURN_BUCKETS)] += 1
    report["turns_sum"] += iterations
    report["duration"][_bucket(duration_ms, DURATION_BUCKETS_MS)] += 1
    report["duration_sum_ms"] += duration_ms
    end = facts["end_at"] if facts["end_at"] is not None else at
    run = (end - duration_ms / 1000.0, end)
    _timeline(report, started_at, at, run, calls - endpoint_calls, endpoint_calls)
    _webhook(report, facts["batch_callback_url"])
    if failed or facts["dead"] or end_reason in LISTED_END_REASONS or passed is False:
        _remember(report, msg, facts, kept)
    return report


def clean_facts(facts: Any) -> dict[str, Any] | None:
    """Facts with the types `fold` relies on, or None when they are not facts (a progress
    message is anyone's to write: a malformed one counts, unattributed, and breaks nothing)."""
    if not isinstance(facts, Mapping):
        return None
    try:
        usage = {
            str(role): [int(u[0]), int(u[1]), int(u[2]),
                        float(u[3]) if isinstance(u[3], int | float) else None]
            for role, u in (facts.get("usage") or {}).items()
            if isinstance(u, Sequence) and len(u) == 4
        }  # fmt: skip
        judge = facts.get("judge")
        if isinstance(judge, Mapping):
            passed = judge.get("passed")
            judge = {
                "passed": passed if isinstance(passed, bool) else None,
                "error": bool(judge.get("error")),
                "criteria": [
                    [short_name(c[0]), bool(c[1])]
                    for c in judge.get("criteria") or []
                    if isinstance(c, Sequence) and len(c) == 2
                ],
            }
        else:
            judge = None
        ref = facts.get("ref")
        end_at = facts.get("end_at")
        models = facts.get("models") if isinstance(facts.get("models"), Mapping) else {}
        return {
            "persona": short_name(facts.get("persona") or "unknown"),
            "endpoint": short_name(facts["endpoint"]) if facts.get("endpoint") else None,
            "models": {str(k): short_name(v) for k, v in models.items()},
            "end_reason": short_name(facts.get("end_reason") or "unknown", 40),
            "iterations": max(0, int(facts.get("iterations") or 0)),
            "duration_ms": max(0, int(facts.get("duration_ms") or 0)),
            "end_at": float(end_at)
            if isinstance(end_at, int | float) and math.isfinite(end_at)
            else None,
            "usage": usage,
            "judge": judge,
            "ref": [int(ref[0]), int(ref[1])]
            if isinstance(ref, Sequence) and len(ref) == 2
            else None,
            "dead": bool(facts.get("dead")),
            "batch_callback_url": facts.get("batch_callback_url")
            if isinstance(facts.get("batch_callback_url"), str)
            else None,
        }
    except (TypeError, ValueError, AttributeError, IndexError, KeyError):
        return None


def _judge(report: dict[str, Any], judge: Mapping[str, Any], top_n: int) -> None:
    totals = report["judge"]
    if judge["error"]:
        totals[2] += 1
    if judge["passed"] is None:
        return
    totals[0] += 1
    totals[1] += 1 if judge["passed"] else 0
    for name, ok in judge["criteria"]:
        entry = _entry(report["criteria"], name, top_n, size=2)
        entry[0] += 1
        entry[1] += 1 if ok else 0


def _usage(
    report: dict[str, Any],
    usage: Mapping[str, Sequence[Any]],
    models: Mapping[str, str],
    top_n: int,
    endpoint: bool,
) -> tuple[int, int]:
    """Add a simulation's usage by role and by model; returns its LLM calls, and of them the
    ones that went to an assistant endpoint (under that endpoint's budget, not the
    backend's)."""
    calls = endpoint_calls = 0
    by_role = report["usage_by_role"]
    for role, u in usage.items():
        model = models.get(role) or "unknown"
        for entry in (
            by_role.setdefault(role, [0, 0, 0, 0.0]),
            _entry(report["usage_by_model"], model, top_n, size=4),
        ):
            entry[CALLS] += u[CALLS]
            entry[PROMPT] += u[PROMPT]
            entry[COMPLETION] += u[COMPLETION]
            if u[COST] is not None:
                entry[COST] = float(entry[COST] or 0.0) + u[COST]
        calls += u[CALLS]
        if endpoint and role == "assistant":
            endpoint_calls += u[CALLS]
    return calls, endpoint_calls


def _webhook(report: dict[str, Any], url: Any) -> None:
    """The first batch_callback_url of the batch wins; a different one is counted, not used."""
    if not isinstance(url, str):
        return
    hook = report["webhook"]
    if hook["url"] is None:
        hook["url"] = url
    elif hook["url"] != url:
        hook["conflicts"] += 1


def _remember(
    report: dict[str, Any], msg: Mapping[str, Any], facts: Mapping[str, Any] | None, kept: int
) -> None:
    """A failing simulation joins the list of the newest `kept`."""
    report["failing_total"] += 1
    if kept <= 0:
        return
    entry: dict[str, Any] = {
        "id": str(msg["simulation_id"]),
        "reason": str(msg.get("reason") or "unknown"),
        "at": float(msg["at"]),
    }
    if facts is not None:
        entry["end_reason"] = facts["end_reason"]
        entry["persona"] = facts["persona"]
        judge = facts["judge"] or {"criteria": []}
        failed = [name[:60] for name, ok in judge["criteria"] if not ok]
        if failed:
            entry["criteria"] = failed[:CRITERIA_PER_FAILURE]
        if judge.get("passed") is False:
            entry["judged_failing"] = True
        if facts["dead"]:
            entry["dead"] = True
        if facts["ref"] is not None:
            entry["ref"] = facts["ref"]
    else:
        entry["dead"] = True  # refused or crashed before a summary: its dead letter says why
    failing = report["failing"]
    failing.append(entry)
    if len(failing) > kept:
        del failing[: len(failing) - kept]


# ----- the time series -------------------------------------------------------------------------


def _timeline(
    report: dict[str, Any],
    started_at: float | None,
    at: float,
    run: tuple[float, float] | None,
    calls: int,
    endpoint_calls: int,
) -> None:
    """One completion at `at`; `calls` and `endpoint_calls` spread over `run`."""
    series = report["timeline"]
    if series["t0"] is None:
        candidates = [t for t in (started_at, run[0] if run else None, at) if t is not None]
        series["t0"] = float(min(candidates))
    _add(series, "done", at, at, 1.0)
    if run is not None:
        start, end = run
        report["first_start"] = min(report["first_start"] or start, start)
        report["last_end"] = max(report["last_end"] or end, end)
        if calls:
            _add(series, "calls", start, end, float(calls))
        if endpoint_calls:
            _add(series, "endpoint", start, end, float(endpoint_calls))


def _add(series: dict[str, Any], name: str, start: float, end: float, amount: float) -> None:
    """Add `amount` spread evenly over [start, end] (a point when they are equal); times
    before t0 count in the first bucket (clocks of different workers, resumed runs)."""
    t0 = series["t0"]
    start, end = max(start, t0), max(end, t0, start)
    _grow(series, end)
    step = series["step"]
    values = series[name]
    first, last = int((start - t0) // step), int((end - t0) // step)
    if len(values) <= last:
        values.extend([0.0] * (last + 1 - len(values)))
    if first == last or end <= start:
        values[last] = round(values[last] + amount, 6)
        return
    span = end - start
    for i in range(first, last + 1):
        lo, hi = max(start, t0 + i * step), min(end, t0 + (i + 1) * step)
        if hi > lo:
            values[i] = round(values[i] + amount * (hi - lo) / span, 6)


def _grow(series: dict[str, Any], t: float) -> None:
    """Double the step, merging pairs of buckets, until `t` falls inside the series."""
    while t - series["t0"] >= series["step"] * TIMELINE_POINTS:
        series["step"] *= 2
        for name in ("done", "calls", "endpoint"):
            old = series[name]
            series[name] = [round(sum(old[i : i + 2]), 6) for i in range(0, len(old), 2)]


# ----- what clients see ------------------------------------------------------------------------


def _rate(passed: int, judged: int) -> float | None:
    return round(passed / judged, 4) if judged else None


def _group_rows(group: Mapping[str, Any], key: str = "name") -> list[dict[str, Any]]:
    rows = []
    items = list((group.get("by") or {}).items())
    other = group.get("other") or [0, 0, 0, 0]
    if other[N]:
        items.append((None, other))
    for name, e in items:
        rows.append(
            {
                key: name,
                "other": name is None,
                "simulations": e[N],
                "failed": e[FAILED],
                "judged": e[JUDGED],
                "passed": e[PASSED],
                "pass_rate": _rate(e[PASSED], e[JUDGED]),
            }
        )
    return rows


def _usage_row(u: Sequence[Any]) -> dict[str, Any]:
    return {
        "llm_calls": int(u[CALLS]),
        "prompt_tokens": int(u[PROMPT]),
        "completion_tokens": int(u[COMPLETION]),
        "total_tokens": int(u[PROMPT]) + int(u[COMPLETION]),
        "cost_usd": round(float(u[COST] or 0.0), 9),
    }


def _hist_quantile(hist: Sequence[int], bounds: Sequence[int], q: float) -> float | None:
    n = sum(hist)
    if not n:
        return None
    target, cum = q * n, 0
    for i, count in enumerate(hist):
        cum += count
        if count and cum >= target:
            return float(bounds[i]) if i < len(bounds) else float(bounds[-1])
    return float(bounds[-1])


def budget_of(global_rps: float | None, per_worker_rps: float, members: int) -> tuple[float, str]:
    """The LLM budget the page draws, and what it is: LLM_GLOBAL_RATE_LIMIT_RPS when set,
    else LLM_RATE_LIMIT_RPS × the workers owning partitions now (assistant endpoints have
    budgets of their own, not in it)."""
    if global_rps:
        return float(global_rps), f"LLM_GLOBAL_RATE_LIMIT_RPS {global_rps:g}/s"
    members = max(members, 1)
    return (
        float(per_worker_rps) * members,
        f"LLM_RATE_LIMIT_RPS {per_worker_rps:g}/s × {members} worker(s) owning partitions now",
    )


def report_view(
    report: Mapping[str, Any],
    progress: Mapping[str, Any] | None = None,
    *,
    budget: tuple[float, str] | None = None,
    names: bool = True,
) -> dict[str, Any]:
    """What the views, the webhook and the CLI show of a report row (with the batch's
    progress view beside it). `names=False` puts labels (persona 1, criterion 1, ...) in
    place of the personas' names and the criteria's text, which the events wrote: what a
    worker without WEB_AUTH_TOKEN serves (README, Monitoring)."""
    judged, passed, errors = (list(report.get("judge") or [0, 0, 0]) + [0, 0, 0])[:3]
    n = int(report.get("simulations") or 0)
    failing = list(report.get("failing") or [])
    failing.reverse()  # the newest first
    hook = report.get("webhook") or {}
    view: dict[str, Any] = {
        "batch_id": report.get("batch_id"),
        "simulations": n,
        "unattributed": int(report.get("unattributed") or 0),
        "end_reasons": dict(report.get("end_reasons") or {}),
        "judge": {
            "judged": judged,
            "passed": passed,
            "errors": errors,
            "pass_rate": _rate(passed, judged),
        },
        "criteria": _criteria_rows(report.get("criteria") or _group()),
        "personas": _group_rows(report.get("personas") or _group()),
        "models": _group_rows(report.get("models") or _group(), "model"),
        "endpoints": _group_rows(report.get("endpoints") or _group(), "endpoint"),
        "usage": _usage_view(report),
        **_distributions(report, n),
        "timeline": _timeline_view(report.get("timeline") or {}),
        "llm_rate": _rate_view(report, budget),
        "failing": failing,
        "failing_total": int(report.get("failing_total") or 0),
        "webhook": {
            "set": bool(hook.get("url")),
            "sent_at": hook.get("sent_at"),
            "conflicts": int(hook.get("conflicts") or 0),
        },
    }
    if progress is not None:
        view["progress"] = dict(progress)
    if not names:
        hide_names(view)
    return view


def hide_names(view: dict[str, Any]) -> None:
    """Labels in place of the events' texts: persona names and criteria, in the groups and in
    the failing simulations' entries (the same label for the same name)."""
    personas: dict[str, str] = {}
    for i, row in enumerate(view["personas"], 1):
        if not row["other"]:
            personas[row["name"]] = row["name"] = f"persona {i}"
    criteria: dict[str, str] = {}
    for i, row in enumerate(view["criteria"], 1):
        if not row["other"]:
            criteria[row["criterion"][:60]] = row["criterion"] = f"criterion {i}"
    for entry in view["failing"]:
        if "persona" in entry:
            entry["persona"] = personas.get(entry["persona"], "persona (other)")
        if "criteria" in entry:
            entry["criteria"] = [criteria.get(c, "criterion (other)") for c in entry["criteria"]]
    view["names_hidden"] = True


def _criteria_rows(group: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = list((group.get("by") or {}).items())
    if (group.get("other") or [0])[0]:
        items.append((None, group["other"]))
    return [
        {
            "criterion": name,
            "other": name is None,
            "judged": e[0],
            "passed": e[1],
            "pass_rate": _rate(e[1], e[0]),
        }
        for name, e in items
    ]


def _usage_view(report: Mapping[str, Any]) -> dict[str, Any]:
    roles = report.get("usage_by_role") or {}
    total = [sum(u[i] for u in roles.values()) for i in range(4)]
    models = report.get("usage_by_model") or {}
    by_model = [
        {"model": name, "other": False, **_usage_row(u)}
        for name, u in (models.get("by") or {}).items()
    ]
    other = models.get("other") or [0, 0, 0, 0.0]
    if other[CALLS]:
        by_model.append({"model": None, "other": True, **_usage_row(other)})
    return {
        "total": _usage_row(total),
        "by_role": {role: _usage_row(u) for role, u in roles.items()},
        "by_model": by_model,
    }


def _distributions(report: Mapping[str, Any], n: int) -> dict[str, Any]:
    turns, duration = list(report.get("turns") or []), list(report.get("duration") or [])
    return {
        "turns": {
            "bounds": list(TURN_BUCKETS),
            "counts": turns,
            "mean": round(report.get("turns_sum", 0) / n, 2) if n else None,
            "p50": _hist_quantile(turns, TURN_BUCKETS, 0.5),
            "p95": _hist_quantile(turns, TURN_BUCKETS, 0.95),
        },
        "duration": {
            "bounds_ms": list(DURATION_BUCKETS_MS),
            "counts": duration,
            "mean_s": round(report.get("duration_sum_ms", 0) / n / 1000, 3) if n else None,
            "p50_s": _seconds(quantile_ms(duration, 0.5)),
            "p95_s": _seconds(quantile_ms(duration, 0.95)),
        },
    }


def _timeline_view(series: Mapping[str, Any]) -> dict[str, Any]:
    """Per-second rates of each bucket, the three series of one length."""
    step = float(series.get("step") or FIRST_STEP)
    length = max((len(series.get(k) or []) for k in ("done", "calls", "endpoint")), default=0)

    def rates(name: str) -> list[float]:
        values = list(series.get(name) or [])
        values += [0.0] * (length - len(values))
        return [round(v / step, 3) for v in values]

    return {
        "start": series.get("t0"),
        "step_s": step,
        "completions_per_s": rates("done"),
        "llm_calls_per_s": rates("calls"),
        "endpoint_calls_per_s": rates("endpoint"),
    }


def _rate_view(report: Mapping[str, Any], budget: tuple[float, str] | None) -> dict[str, Any]:
    """The backend's LLM calls over the span of the runs, against the budget."""
    first, last = report.get("first_start"), report.get("last_end")
    span = (last - first) if first is not None and last is not None and last > first else None
    series = report.get("timeline") or {}
    calls = sum(series.get("calls") or [])
    return {
        "achieved_rps": round(calls / span, 3) if span else None,
        "budget_rps": budget[0] if budget else None,
        "budget": budget[1] if budget else None,
    }


def _seconds(ms: float | None) -> float | None:
    return round(ms / 1000, 3) if ms is not None else None


# ----- the webhook -----------------------------------------------------------------------------


def webhook_due(report: Mapping[str, Any] | None, progress_row: Mapping[str, Any]) -> bool:
    """The batch finished (its progress row knows its total and counted every simulation),
    it has a batch_callback_url, and its report has not been sent yet."""
    if not report:
        return False
    hook = report.get("webhook") or {}
    finished = int(progress_row.get("completed") or 0) + int(progress_row.get("failed") or 0)
    return (
        bool(hook.get("url"))
        and hook.get("sent_at") is None
        and bool(progress_row.get("total_known"))
        and finished >= int(progress_row.get("total") or 0) > 0
    )


def batch_record(report: Mapping[str, Any], view: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The results topic's record that the outbox POSTs to the batch's callback URL (keyed
    by batch id; `batch` instead of `batch_id`, so readers of summaries pass it by)."""
    return {
        "kind": "batch",
        "batch": report["batch_id"],
        "summary": dict(view),
        "callback_url": (report.get("webhook") or {}).get("url"),
        "summarized_at": now,
    }


# ----- text ------------------------------------------------------------------------------------


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _money(value: float) -> str:
    return f"${value:.4f}"


def report_lines(view: Mapping[str, Any], shown: int = 10) -> list[str]:
    """The report as text (the `report` command, `make run`)."""
    p = view.get("progress") or {}
    lines = [f"batch {view.get('batch_id')}"]
    if p:
        eta = "done" if p.get("done") else f"ETA {p.get('eta_seconds')} s"
        lines.append(
            f"  progress: {p.get('completed', 0) + p.get('failed', 0)}/{p.get('total')} "
            f"finished ({p.get('completed')} completed, {p.get('failed')} failed, "
            f"{p.get('in_flight')} in flight), {eta}, elapsed {p.get('elapsed_seconds')} s"
        )
        if p.get("failed_by_reason"):
            lines.append("  failed by reason: " + _pairs(p["failed_by_reason"]))
    lines.append(f"  end reasons: {_pairs(view.get('end_reasons') or {}) or 'none'}")
    j = view.get("judge") or {}
    lines.append(
        f"  judge: {j.get('judged')} judged, pass rate {_pct(j.get('pass_rate'))}, "
        f"{j.get('errors')} judge errors"
    )
    for c in (view.get("criteria") or [])[:shown]:
        name = "(other criteria)" if c["other"] else c["criterion"]
        lines.append(f"    {_pct(c['pass_rate']):>6}  {c['passed']}/{c['judged']}  {name}")
    for title, rows, key in (
        ("persona", view.get("personas"), "name"),
        ("assistant model", view.get("models"), "model"),
        ("endpoint", view.get("endpoints"), "endpoint"),
    ):
        if not rows:
            continue
        lines.append(f"  by {title}: simulations, failed, pass rate")
        for r in rows[:shown]:
            name = "(other)" if r["other"] else r[key]
            lines.append(
                f"    {r['simulations']:>6} {r['failed']:>5} {_pct(r['pass_rate']):>7}  {name}"
            )
    usage = view.get("usage") or {}
    total = usage.get("total") or {}
    lines.append(
        f"  usage to date: {total.get('llm_calls')} LLM calls, {total.get('total_tokens')} "
        f"tokens, {_money(total.get('cost_usd') or 0.0)}"
    )
    for role, u in sorted((usage.get("by_role") or {}).items()):
        lines.append(
            f"    {role:<9} {u['llm_calls']:>7} calls {u['total_tokens']:>10} tokens "
            f"{_money(u['cost_usd'])}"
        )
    for m in (usage.get("by_model") or [])[:shown]:
        name = "(other models)" if m["other"] else m["model"]
        lines.append(
            f"    {name[:40]:<40} {m['llm_calls']:>7} calls {m['total_tokens']:>10} tokens "
            f"{_money(m['cost_usd'])}"
        )
    t, d, r = view.get("turns") or {}, view.get("duration") or {}, view.get("llm_rate") or {}
    lines.append(f"  turns: mean {t.get('mean')}, p50 <= {t.get('p50')}, p95 <= {t.get('p95')}")
    lines.append(
        f"  duration: mean {d.get('mean_s')} s, p50 {d.get('p50_s')} s, p95 {d.get('p95_s')} s"
    )
    budget = (
        f" against a budget of {r['budget_rps']:g}/s ({r['budget']})" if r.get("budget") else ""
    )
    lines.append(f"  achieved LLM rate: {r.get('achieved_rps')}/s{budget}")
    failing = view.get("failing") or []
    lines.append(
        f"  failing simulations: {view.get('failing_total')} (the newest {len(failing)} kept)"
    )
    for f in failing[:shown]:
        why = f.get("end_reason") or f.get("reason")
        extra = "; judge failed: " + ", ".join(f["criteria"]) if f.get("criteria") else ""
        dead = " (dead-lettered)" if f.get("dead") else ""
        lines.append(f"    {f['id']}: {why}{dead}{extra}")
    hook = view.get("webhook") or {}
    if hook.get("set"):
        state = "sent" if hook.get("sent_at") else "due when the batch finishes"
        conflicts = f", {hook['conflicts']} other URL(s) ignored" if hook.get("conflicts") else ""
        lines.append(f"  batch webhook: {state}{conflicts}")
    return lines


def _pairs(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
