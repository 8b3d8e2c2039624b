"""`faust -A simapp compare BASELINE CANDIDATE`: did the candidate batch do better?

Reads both batches' summaries from the results topic (streaming: per scenario only counts and
a few failing verdicts are kept), pairs them by scenario and prints the pass-rate difference
overall and per criterion with its 95 % interval, "no change" when the interval holds 0
(simapp/observe/comparison.py), the regressions with the judge's reasoning, the fixes, cost,
turns and duration per scenario side by side, and the scenarios of one batch only. `--format
json` for a CI pipeline; `--fail-on-regression` exits 1 when the candidate is worse overall or
on any criterion. Exit 2 when a batch has no summaries.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from faust.cli import AppCommand, argument, option

from simapp.commands.base import SimappCommand
from simapp.observe.comparison import BOOTSTRAP, WORSE
from simapp.worker.application import app, settings
from simapp.worker.comparisons import NoSummaries, compare_batches

SHOWN = 20  # rows of each list the text output shows (--format json has all)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _diff(row: dict[str, Any]) -> str:
    low, high = row["ci95"]
    change = row["call"].upper() if row["call"] != "no change" else "no change"
    return (
        f"{_pct(row['baseline'])} -> {_pct(row['candidate'])}: {100 * row['difference']:+.1f} "
        f"points [95% CI {100 * low:+.1f}, {100 * high:+.1f}] {change}"
    )


def text_lines(result: dict[str, Any], baseline: str, candidate: str) -> list[str]:
    lines = [
        f"compare {baseline} -> {candidate}: {result['scenarios']} scenarios paired; "
        f"{len(result['only_in_baseline'])} only in {baseline}, "
        f"{len(result['only_in_candidate'])} only in {candidate}",
        f"overall pass rate: {_diff(result['overall'])}",
    ]
    mcnemar = result["overall"].get("mcnemar")
    if mcnemar:
        lines.append(
            f"  McNemar exact: {mcnemar['regressions']} regressions, {mcnemar['fixes']} fixes, "
            f"p = {mcnemar['p_value']:.4g}"
        )
    lines.append("per criterion:")
    for name, row in result["criteria"].items():
        lines.append(f"  {name[:70]!r}: {_diff(row)}")
    for title, key in (("regressions (worse in the candidate)", "regressions"), ("fixes", "fixes")):
        rows = result[key]
        lines.append(f"{title}: {len(rows)}")
        for row in rows[:SHOWN]:
            lines.append(
                f"  {row['scenario_id']} ({row['persona']}): {_pct(row['baseline'])} -> "
                f"{_pct(row['candidate'])}"
            )
            for failed in row["failed"][:3]:
                lines.append(f"      {failed['criterion'][:60]!r}: {failed['reasoning'][:120]}")
    lines.append("per scenario (baseline | candidate): pass rate, cost $, turns, duration s")
    for row in result["side_by_side"][:SHOWN]:
        a, b = row["baseline"], row["candidate"]
        lines.append(
            f"  {row['scenario_id']}: {_pct(a['pass_rate'])} {a['cost_usd']} {a['turns']} "
            f"{a['duration_s']} | {_pct(b['pass_rate'])} {b['cost_usd']} {b['turns']} "
            f"{b['duration_s']}"
        )
    for side in ("baseline", "candidate"):
        only = result[f"only_in_{side}"]
        if only:
            lines.append(f"only in the {side}: {', '.join(only[:SHOWN])}")
    flaky = result["flaky"]
    lines.append(
        f"flaky scenarios (mixed verdicts over repeats): {len(flaky['baseline'])} in "
        f"{baseline}, {len(flaky['candidate'])} in {candidate}"
    )
    return lines


def regressed(result: dict[str, Any]) -> bool:
    return result["overall"]["call"] == WORSE or any(
        row["call"] == WORSE for row in result["criteria"].values()
    )


@app.command(
    argument("baseline", type=str),
    argument("candidate", type=str),
    option("--format", "fmt", type=str, default="text", show_default=True, help="text or json"),
    option("--fail-on-regression/--no-fail-on-regression", default=False),
    option("--seed", type=int, default=0, show_default=True, help="bootstrap seed"),
    option("--resamples", type=int, default=BOOTSTRAP, show_default=True),
    base=SimappCommand,
)
async def compare(
    self: AppCommand,
    baseline: str,
    candidate: str,
    fmt: str,
    fail_on_regression: bool,
    seed: int,
    resamples: int,
) -> int:
    """Compare CANDIDATE with BASELINE, scenario by scenario (pass rates with 95 % CIs)."""
    if fmt not in ("text", "json") or resamples < 100:
        print("--format must be text or json, --resamples at least 100", file=sys.stderr)
        return 2
    try:
        result = await compare_batches(
            settings, baseline, candidate, seed=seed, resamples=resamples
        )
    except NoSummaries as missing:
        print(missing, file=sys.stderr)
        return 2
    if fmt == "json":
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(text_lines(result, baseline, candidate)))
    return 1 if fail_on_regression and regressed(result) else 0
