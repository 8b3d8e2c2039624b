"""A batch's summaries for a team's own notebook: JSON, JSON lines or CSV, one at a time.

`faust -A simapp report BATCH --format json|jsonl|csv` reads the results topic from its start
(simapp/commands/report.py) and hands each record here: `batch_rows` keeps the batch's
summaries, each simulation once (the first summary on the topic: a crash between a summary
and its "done" row can write a second one, which its receiver dropped by Idempotency-Key),
and `write_rows` writes each as it comes. Memory stays flat whatever the batch: a summary is
dropped once written, and what remains per simulation is an 8-byte digest of its id (about
100 bytes in a Python set: 1 MB for 10,000 simulations, against 10,000 transcripts;
tests/test_report_export.py measures it).

JSON lines and JSON give the summary as it was POSTed plus `facts` (persona, scenario,
endpoint, the model of each role). CSV has one row per summary with fixed columns (usage by
role, the judge's verdict and failed criteria, no transcript); a text cell that a spreadsheet
would read as a formula (=, +, -, @, tab, carriage return) starts with a quote.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import IO, Any

FORMATS = ("json", "jsonl", "csv")
ROLES = ("assistant", "user", "judge")
CSV_COLUMNS = [
    "simulation_id", "batch_id", "scenario_id", "persona", "endpoint",
    "assistant_model", "user_model", "judge_model", "end_reason", "total_iterations",
    "messages", "duration_ms", "llm_calls", "prompt_tokens", "completion_tokens",
    "total_tokens", "cost_usd",
    *(f"{role}_{field}" for role in ROLES for field in ("calls", "tokens", "cost_usd")),
    "judge_passed", "judge_failed_criteria", "judge_error", "error",
]  # fmt: skip
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def id_digest(simulation_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(simulation_id.encode(), digest_size=8).digest(), "big")


async def batch_rows(values: AsyncIterable[bytes | None], batch_id: str) -> AsyncIterator[dict]:
    """The batch's summaries among results-topic values, each simulation once, in topic
    order: {**summary, "facts": facts}."""
    needle = json.dumps({"batch_id": batch_id}, separators=(",", ":"))[1:-1].encode()
    seen: set[int] = set()
    async for value in values:
        if not value or needle not in value:
            continue  # another batch's: not even parsed
        try:
            record = json.loads(value)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("batch_id") != batch_id:
            continue  # a batch record ("batch", not "batch_id"), or another shape
        summary = record.get("summary")
        if not isinstance(summary, dict) or not isinstance(summary.get("simulation_id"), str):
            continue
        digest = id_digest(summary["simulation_id"])
        if digest in seen:
            continue
        seen.add(digest)
        yield {**summary, "facts": record.get("facts") or {}}


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One summary as the CSV's fixed columns."""
    facts = row.get("facts") or {}
    models = facts.get("models") or {}
    usage = row.get("usage") or {}
    by_role = usage.get("by_role") or {}
    evaluation = row.get("evaluation") or {}
    failed = [
        str(v.get("criterion", ""))
        for v in evaluation.get("criteria") or []
        if isinstance(v, Mapping) and not v.get("passed")
    ]
    out: dict[str, Any] = {
        "simulation_id": row.get("simulation_id"),
        "batch_id": row.get("batch_id"),
        "scenario_id": row.get("scenario_id") or facts.get("scenario_id"),
        "persona": facts.get("persona"),
        "endpoint": facts.get("endpoint"),
        "assistant_model": models.get("assistant"),
        "user_model": models.get("user"),
        "judge_model": models.get("judge"),
        "end_reason": row.get("end_reason"),
        "total_iterations": row.get("total_iterations"),
        "messages": len(row.get("conversation_history") or []),
        "duration_ms": row.get("duration_ms"),
        "llm_calls": usage.get("llm_calls"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "cost_usd": usage.get("cost_usd"),
        "judge_passed": evaluation.get("passed"),
        "judge_failed_criteria": " | ".join(failed) or None,
        "judge_error": evaluation.get("error"),
        "error": row.get("error"),
    }
    for role in ROLES:
        u = by_role.get(role) or {}
        out[f"{role}_calls"] = u.get("llm_calls")
        out[f"{role}_tokens"] = u.get("total_tokens")
        out[f"{role}_cost_usd"] = u.get("cost_usd")
    return {k: _cell(v) for k, v in out.items()}


async def write_rows(rows: AsyncIterable[dict], fmt: str, out: IO[str]) -> int:
    """Write each row as it comes, in `fmt` (json, jsonl or csv); returns how many."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    count = 0
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    elif fmt == "json":
        out.write("[")
    async for row in rows:
        if writer is not None:
            writer.writerow(csv_row(row))
        elif fmt == "json":
            out.write(("," if count else "") + "\n" + json.dumps(row, ensure_ascii=False))
        else:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    if fmt == "json":
        out.write("\n]\n")
    out.flush()
    return count
