"""Did the candidate batch do better than the baseline? A comparison that knows its noise.

Simulations pair up by scenario (the summary's `scenario_id`): per scenario, its pass rate in
each batch (passed / judged, over the scenario's repeats), and the same per criterion. The
difference of the mean pass rates has a 95 % confidence interval from a paired bootstrap over
scenarios (a seeded resampling of the paired scenarios, so the same input prints the same
numbers); when each scenario ran once, McNemar's exact test on the discordant pairs says how
likely such a split is by chance. A difference whose interval holds 0 is "no change", never a
gain or a loss: single runs flip verdicts between identical batches (tau2-bench #540 measured
10-55 % of tasks), so a few flips are noise until the interval says otherwise.

Pure functions over plain dicts: `faust -A simapp compare` feeds them from the results topic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BETTER, WORSE, NO_CHANGE = "better", "worse", "no change"
BOOTSTRAP = 2000  # resamples
CONFIDENCE = 0.95


@dataclass
class Scenario:
    """One scenario's simulations in one batch."""

    runs: int = 0
    judged: int = 0
    passed: int = 0
    criteria: dict[str, list[int]] = field(default_factory=dict)  # criterion -> [passed, judged]
    cost: float = 0.0
    turns: int = 0
    duration_ms: int = 0
    persona: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)  # failed criteria, reasoning

    def add(self, summary: Mapping[str, Any], persona: str | None = None) -> None:
        """Fold one summary of this scenario."""
        self.runs += 1
        self.persona = self.persona or persona
        usage = summary.get("usage") or {}
        self.cost += float(usage.get("cost_usd") or 0.0)
        self.turns += int(summary.get("total_iterations") or 0)
        self.duration_ms += int(summary.get("duration_ms") or 0)
        evaluation = summary.get("evaluation") or {}
        if evaluation.get("passed") is None:
            return
        self.judged += 1
        self.passed += 1 if evaluation["passed"] else 0
        for verdict in evaluation.get("criteria") or []:
            counts = self.criteria.setdefault(str(verdict.get("criterion")), [0, 0])
            counts[0] += 1 if verdict.get("passed") else 0
            counts[1] += 1
            if not verdict.get("passed"):
                self.failures.append(
                    {
                        "simulation_id": summary.get("simulation_id"),
                        "criterion": verdict.get("criterion"),
                        "reasoning": verdict.get("reasoning", ""),
                    }
                )

    @property
    def rate(self) -> float | None:
        return self.passed / self.judged if self.judged else None

    @property
    def all_passed(self) -> bool:
        """pass^K: every judged run passed."""
        return self.judged > 0 and self.passed == self.judged

    @property
    def flaky(self) -> bool:
        """Mixed verdicts over the scenario's repeats."""
        return 0 < self.passed < self.judged

    def criterion_rate(self, criterion: str) -> float | None:
        passed, judged = self.criteria.get(criterion, (0, 0))
        return passed / judged if judged else None


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (binomial, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(
    pairs: list[tuple[float, float]], resamples: int = BOOTSTRAP, seed: int = 0
) -> tuple[float, float, float]:
    """(mean of b - a, low, high) of the 95 % percentile interval, resampling pairs."""
    if not pairs:
        return 0.0, 0.0, 0.0
    diffs = [b - a for a, b in pairs]
    n = len(diffs)
    mean = sum(diffs) / n
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    tail = (1 - CONFIDENCE) / 2
    low = means[int(math.floor(tail * (resamples - 1)))]
    high = means[int(math.ceil((1 - tail) * (resamples - 1)))]
    return mean, low, high


def call(low: float, high: float) -> str:
    """better / worse when the interval excludes 0, else no change."""
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return NO_CHANGE


def compare(
    baseline: Mapping[str, Scenario],
    candidate: Mapping[str, Scenario],
    *,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison of two batches' scenarios (see the module docstring)."""
    shared = sorted(
        s for s in baseline.keys() & candidate.keys() if _judged_both(baseline, candidate, s)
    )
    pairs = [(baseline[s].rate or 0.0, candidate[s].rate or 0.0) for s in shared]
    mean, low, high = paired_bootstrap(pairs, resamples, seed)
    overall: dict[str, Any] = {
        "baseline": _mean(p[0] for p in pairs),
        "candidate": _mean(p[1] for p in pairs),
        "difference": mean,
        "ci95": [low, high],
        "call": call(low, high) if shared else NO_CHANGE,
    }
    single = all(baseline[s].judged == 1 and candidate[s].judged == 1 for s in shared)
    if shared and single:
        b = sum(1 for s in shared if baseline[s].passed and not candidate[s].passed)
        c = sum(1 for s in shared if not baseline[s].passed and candidate[s].passed)
        overall["mcnemar"] = {"regressions": b, "fixes": c, "p_value": mcnemar_exact(b, c)}
    return {
        "scenarios": len(shared),
        "only_in_baseline": sorted(baseline.keys() - candidate.keys()),
        "only_in_candidate": sorted(candidate.keys() - baseline.keys()),
        "overall": overall,
        "criteria": _criteria(baseline, candidate, shared, resamples, seed),
        "regressions": _changes(baseline, candidate, shared, worse=True),
        "fixes": _changes(baseline, candidate, shared, worse=False),
        "side_by_side": [_side(s, baseline[s], candidate[s]) for s in shared],
        "flaky": {
            "baseline": sorted(s for s in baseline if baseline[s].flaky),
            "candidate": sorted(s for s in candidate if candidate[s].flaky),
        },
    }


def _judged_both(a: Mapping[str, Scenario], b: Mapping[str, Scenario], s: str) -> bool:
    return a[s].judged > 0 and b[s].judged > 0


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _criteria(
    baseline: Mapping[str, Scenario],
    candidate: Mapping[str, Scenario],
    shared: list[str],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    names = sorted(
        {c for s in shared for c in baseline[s].criteria}
        & {c for s in shared for c in candidate[s].criteria}
    )
    out = {}
    for name in names:
        pairs = []
        for s in shared:
            a, b = baseline[s].criterion_rate(name), candidate[s].criterion_rate(name)
            if a is not None and b is not None:
                pairs.append((a, b))
        mean, low, high = paired_bootstrap(pairs, resamples, seed)
        out[name] = {
            "scenarios": len(pairs),
            "baseline": _mean(p[0] for p in pairs),
            "candidate": _mean(p[1] for p in pairs),
            "difference": mean,
            "ci95": [low, high],
            "call": call(low, high) if pairs else NO_CHANGE,
        }
    return out


def _changes(
    baseline: Mapping[str, Scenario],
    candidate: Mapping[str, Scenario],
    shared: list[str],
    *,
    worse: bool,
) -> list[dict[str, Any]]:
    """Scenarios whose pass rate went down (worse) or up, with the failing reasoning of the
    side that failed."""
    out = []
    for s in shared:
        a, b = baseline[s].rate or 0.0, candidate[s].rate or 0.0
        if (b < a) if worse else (b > a):
            failing = candidate[s] if worse else baseline[s]
            out.append(
                {
                    "scenario_id": s,
                    "persona": baseline[s].persona or candidate[s].persona,
                    "baseline": a,
                    "candidate": b,
                    "failed": failing.failures[:10],
                }
            )
    return out


def _side(s: str, a: Scenario, b: Scenario) -> dict[str, Any]:
    def per_run(x: Scenario) -> dict[str, Any]:
        runs = max(x.runs, 1)
        return {
            "runs": x.runs,
            "pass_rate": x.rate,
            "cost_usd": round(x.cost / runs, 6),
            "turns": round(x.turns / runs, 2),
            "duration_s": round(x.duration_ms / runs / 1000, 2),
        }

    return {"scenario_id": s, "baseline": per_run(a), "candidate": per_run(b)}
