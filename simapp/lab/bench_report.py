"""What `make bench` says about a run: the goals it is held to, its row in docs/benchmarks.md
(TABLE_HEADER names the columns) and the summary it prints.

Kept apart from the measurement so that the doc's columns and the goals can be read, and
changed, in one place.
"""

from __future__ import annotations

from typing import Any

from simapp.lab import results_doc

GOALS = {
    "wall_le_1.03x_paced_floor": "wall <= 1.03 x paced floor",
    "max_window_le_budget": "mock max 1 s window <= budget",
    "zero_429": "no 429 from the mock",
    "achieved_ge_0.9_budget": "achieved LLM rate >= 0.9 x budget",
    "zero_timeouts": "no conversation ended in timeout",
    "missing_zero": "every event delivered or dead-lettered",
    "cpu_le_8x_raw": "worker CPU per LLM call <= 8 x raw aiohttp loop",
    "cpu_le_0.35x_bare": "worker CPU per LLM call <= 0.35 x bare LiteLLM loop",
}

TABLE_HEADER = (
    "| date (UTC) | command | machine | count | workers | rps | route | wall s | paced floor s "
    "| wall/floor | achieved/budget | max 1 s window | 429s | worker CPU ms/call "
    "| raw ms/call | × raw | bare LiteLLM ms/call | × bare | peak RSS MB | p50 / p95 s "
    "| missing | notes |\n"
    "|---|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|---|"
)


def goals(r: dict[str, Any], rps: float) -> dict[str, bool | None]:
    """Each goal of GOALS met (True), missed (False) or not measured (None)."""

    def le(a: Any, b: float) -> bool | None:
        return None if a is None else a <= b

    return {
        "wall_le_1.03x_paced_floor": le(r.get("wall_over_floor"), 1.03),
        "max_window_le_budget": le(r.get("mock_max_1s_window"), rps),
        "zero_429": r.get("llm_429") == 0,
        "achieved_ge_0.9_budget": None
        if r.get("achieved_over_budget") is None
        else r["achieved_over_budget"] >= 0.9,
        "zero_timeouts": r.get("timeouts") == 0,
        "missing_zero": r.get("missing") == 0,
        "cpu_le_8x_raw": le(r.get("cpu_ratio_vs_raw"), 8.0),
        "cpu_le_0.35x_bare": le(r.get("cpu_ratio_vs_bare"), 0.35),
    }


def row_notes(r: dict[str, Any]) -> str:
    """The notes column: the note, the load around the run, what invalidates it, missed goals."""
    m, cpu = r["machine"], r.get("cpu_seconds_during_run", {})
    load = m.get("loadavg_at_start") or ["?"]
    notes = (
        f"load1 {load[0]} at start; other processes used {cpu.get('other_processes', '?')} of "
        f"{cpu.get('machine_capacity', '?')} CPU-s; mock {cpu.get('mock_llm', '?')} CPU-s, "
        f"broker {cpu.get('broker', '?')} CPU-s"
    )
    if r.get("note"):
        notes = f"{r['note']}; {notes}"
    notes += f"; {slots_note(r)}"
    problems = r.get("worker_log_problems") or {}
    if problems.get("agent_crashed") or problems.get("partitions_mismatch"):
        notes += (
            f"; INVALID: {problems.get('agent_crashed')} agent crashes, "
            f"{problems.get('partitions_mismatch')} partition mismatches in worker logs"
        )
    failed = [name for name, ok in (r.get("goals") or {}).items() if ok is False]
    if failed:
        notes += "; missed: " + ", ".join(failed)
    return notes


def slots_note(r: dict[str, Any]) -> str:
    """The latency the mock drew, the timeouts, and what the workers' slots did."""
    c = r["config"]
    drawn = r.get("mock_latency_ms") or {}
    slots = r.get("conversation_slots") or {}
    targets = ", ".join(f"{v:g}" for v in (slots.get("max_target") or {}).values())
    return (
        f"latency {c.get('latency_ms')}±{c.get('jitter_ms')} ms {c.get('latency_dist', 'uniform')}"
        f" (drawn p50 {drawn.get('p50')}, p99 {drawn.get('p99')} ms); timeouts "
        f"{r.get('timeouts')}; slot target max {targets or '?'}, limited by "
        f"{slots.get('limited_by_samples') or '?'}"
    )


def doc_row(r: dict[str, Any]) -> str:
    """The run's row under TABLE_HEADER."""
    m, c = r["machine"], r["config"]
    cells = [
        r["date"][:16].replace("T", " "),
        f"`{r['command']}`",
        f"{m['nproc']}× {m['cpu_model']}",
        c["count"],
        c["workers"],
        c["rps"],
        c["route"],
        r["wall_seconds"],
        r["floor_seconds"],
        r["wall_over_floor"],
        r["achieved_over_budget"],
        r["mock_max_1s_window"],
        r["llm_429"],
        r["worker_cpu_s_per_1000_calls"],
        r["raw_cpu_s_per_1000_calls"],
        r["cpu_ratio_vs_raw"],
        r["bare_cpu_s_per_1000_calls"],
        r["cpu_ratio_vs_bare"],
        ", ".join(str(x) for x in r["worker_peak_rss_mb"]),
        f"{r['p50_duration_s']} / {r['p95_duration_s']}",
        r["missing"],
        row_notes(r),
    ]
    return results_doc.row(cells)


def print_summary(r: dict[str, Any]) -> None:
    """The run's figures and goals on the terminal."""
    rows = [
        ("sent / delivered / missing", f"{r['sent']} / {r['delivered']} / {r['missing']}"),
        ("dead-lettered", r["dead_lettered"] or "none"),
        ("LLM calls (200) / per simulation", f"{r['llm_calls']} / {r['calls_per_simulation']}"),
        ("wall / paced floor", f"{r['wall_seconds']} s / {r['floor_seconds']} s "
                               f"= {r['wall_over_floor']}"),
        ("achieved RPS / budget", f"{r['achieved_rps']} / {r['config']['rps']} "
                                  f"= {r['achieved_over_budget']}"),
        ("mock max 1 s window / 429s", f"{r['mock_max_1s_window']} / {r['llm_429']}"),
        ("worker CPU s", f"{r['worker_cpu_seconds']} "
                         f"({r['worker_cpu_s_per_1000_calls']} s per 1000 calls)"),
        ("raw aiohttp loop CPU ms per call", r["raw_cpu_s_per_1000_calls"]),
        ("ratio simapp / raw", r["cpu_ratio_vs_raw"]),
        ("bare LiteLLM CPU ms per call", r["bare_cpu_s_per_1000_calls"]),
        ("ratio simapp / bare LiteLLM", r["cpu_ratio_vs_bare"]),
        ("peak RSS MB per worker", r["worker_peak_rss_mb"]),
        ("timeouts", r["timeouts"]),
        ("mock latency drawn (ms)", r.get("mock_latency_ms")),
        ("conversation slots", r.get("conversation_slots")),
        ("simulation p50 / p95", f"{r['p50_duration_s']} s / {r['p95_duration_s']} s"),
        ("workers' view per LLM call", f"{r['worker_view']['mean_llm_call_s']} s in the call, "
                                       f"{r['worker_view']['mean_rate_wait_s']} s budget wait"),
        ("CPU-s during run", r["cpu_seconds_during_run"]),
    ]  # fmt: skip
    print("=" * 72)
    for name, value in rows:
        print(f"{name:>34}: {value}")
    for name, ok in r["goals"].items():
        print(f"{'goal ' + GOALS[name]:>60}: {'ok' if ok else 'MISSED' if ok is False else '-'}")
    print("=" * 72, flush=True)
