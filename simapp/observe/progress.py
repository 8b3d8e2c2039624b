"""Batch progress: the messages workers send, and pure functions that fold them into a row.

The simulate agent reports each simulation's state changes with `ProgressReporter` to the
progress topic, keyed by batch id; the progress agent (agents/progress.py) owns the tables and
folds the messages with `apply_once`; the web views call `view`. No Faust here, so the
arithmetic is unit-tested without a broker.

A *row* is a JSON-able dict, one per batch. Progress messages can repeat (a crash or a
rebalance redelivers events), so the agent keeps a *seen* state per (batch, simulation) and
folds through `apply_once`, which counts every simulation at most once as consumed and at most
once as finished. `apply` is the raw fold for one already-deduplicated message.

Rate: finishes (completed + failed) per second, an exponentially weighted moving average with
time constant `RATE_TAU` seconds, kept as a decayed count S: on each finish at time t,
S = S * exp(-(t - t_last) / tau) + 1. A Poisson stream of rate r has E[S] = r * tau * (1 -
exp(-elapsed / tau)), so the rate is S divided by that window. Dividing by the elapsed part of
the window removes the start-up bias of a plain EWMA (early on it is simply finishes /
elapsed time) and makes bursts harmless: N finishes at the same instant add N to S, never
1/dt with dt = 0. The window is measured from the first event of the batch (not from the first
finish), so the conversations' own latency counts against the rate and early ETAs err long.
Viewing decays S to "now", so a stalled batch shows a falling rate and a growing ETA.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

KINDS = ("consumed", "completed", "failed", "spend")  # spend: cost to date, batches with a cap
FINAL = frozenset({"completed", "failed"})
RATE_TAU = 60.0  # seconds, time constant of the rate EWMA
MIN_WINDOW = 1.0  # seconds, smallest window a rate is measured over (bursts at start)
# Upper bounds (ms) of the duration histogram; one more bucket holds everything above.
DURATION_BUCKETS_MS: tuple[int, ...] = (
    100,
    200,
    300,
    500,
    750,
    1_000,
    1_500,
    2_000,
    3_000,
    5_000,
    7_500,
    10_000,
    15_000,
    20_000,
    30_000,
    45_000,
    60_000,
    90_000,
    120_000,
    180_000,
    300_000,
    600_000,
)
ROW_VERSION = 1


def progress_message(
    batch_id: str,
    kind: str,
    simulation_id: str,
    *,
    reason: str | None = None,
    batch_size: int | None = None,
    duration_ms: int | None = None,
    at: float | None = None,
    facts: dict[str, Any] | None = None,
    cost_usd: float | None = None,
    max_cost_usd: float | None = None,
) -> dict[str, Any]:
    """One progress message, as `parse_message` reads it back. A final message of a
    simulation that has a summary carries its `facts` for the batch report
    (simapp/observe/report.py `simulation_facts`); a "spend" message its cost since the
    last one and the batch's cap."""
    message = {
        "batch_id": batch_id,
        "kind": kind,
        "simulation_id": simulation_id,
        "reason": reason,
        "batch_size": batch_size,
        "duration_ms": duration_ms,
        "at": time.time() if at is None else at,
    }
    if facts is not None:
        message["facts"] = facts
    if kind == "spend":
        message["cost_usd"] = cost_usd
        message["max_cost_usd"] = max_cost_usd
    return message


class ProgressReporter:
    """Sends progress messages keyed by batch id, so one agent owns each batch's row.

    `send(key, value)` hands a message to the producer and returns the broker's
    acknowledgement to await (Faust's `topic.send`): `report` awaits it, `report_soon`
    returns it, for a caller that has other work to do before it needs the message durable.
    """

    def __init__(self, send: Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]) -> None:
        self._send = send

    async def report_soon(
        self, batch_id: str, kind: str, simulation_id: str, **fields: Any
    ) -> Awaitable[Any]:
        message = progress_message(batch_id, kind, simulation_id, **fields)
        return await self._send(batch_id.encode(), json.dumps(message).encode())

    async def report(self, batch_id: str, kind: str, simulation_id: str, **fields: Any) -> None:
        """Send and wait until the broker has it."""
        await (await self.report_soon(batch_id, kind, simulation_id, **fields))


class BadMessage(ValueError):
    """A progress message that cannot be applied (logged and skipped by the agent)."""


def parse_message(value: Any, now: float | None = None) -> dict[str, Any]:
    """Check and normalise one progress message; raises BadMessage naming the problem."""
    if not isinstance(value, Mapping):
        raise BadMessage(f"not an object: {type(value).__name__}")
    batch_id = value.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id:
        raise BadMessage("batch_id missing or not a string")
    kind = value.get("kind")
    if kind not in KINDS:
        raise BadMessage(f"unknown kind {kind!r}")
    sim = value.get("simulation_id")
    if not isinstance(sim, str) or not sim:
        raise BadMessage("simulation_id missing or not a string")
    at = value.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        at = time.time() if now is None else now
    size = value.get("batch_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        size = None
    duration = value.get("duration_ms")
    if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
        duration = None
    reason = value.get("reason")
    if reason is not None and not isinstance(reason, str):
        reason = str(reason)
    facts = value.get("facts")
    if kind == "spend":
        return {**_spend_fields(value), "batch_id": batch_id, "kind": kind,
                "simulation_id": sim, "at": float(at)}  # fmt: skip
    return {
        "batch_id": batch_id,
        "kind": kind,
        "simulation_id": sim,
        "reason": reason,
        "batch_size": size,
        "duration_ms": duration,
        "at": float(at),
        "facts": facts if kind in FINAL and isinstance(facts, Mapping) else None,
    }


def _spend_fields(value: Mapping[str, Any]) -> dict[str, Any]:
    """A spend message's cost (USD since the simulation's last one) and the batch's cap."""
    cost, cap = value.get("cost_usd"), value.get("max_cost_usd")
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost):
        raise BadMessage("cost_usd missing or not a number")
    if cap is not None and (
        isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap)
    ):
        cap = None
    return {"cost_usd": max(0.0, float(cost)), "max_cost_usd": cap}


def apply_spend(
    row: Mapping[str, Any] | None, msg: Mapping[str, Any], partition: int | None
) -> dict[str, Any]:
    """Add a simulation's cost since its last spend message to the batch's cost to date; the
    first cap a message names is the batch's, and `capped_at` is set once it is reached."""
    out = _copy(row) if row is not None else new_row(msg["batch_id"], partition)
    if partition is not None:
        out["partition"] = partition
    out["spent_usd"] = float(out.get("spent_usd") or 0.0) + msg["cost_usd"]
    if out.get("max_cost_usd") is None and msg.get("max_cost_usd"):
        out["max_cost_usd"] = float(msg["max_cost_usd"])
    cap = out.get("max_cost_usd")
    if cap is not None and out["spent_usd"] >= cap and not out.get("capped_at"):
        out["capped_at"] = msg["at"]
    return out


def new_row(batch_id: str, partition: int | None = None) -> dict[str, Any]:
    return {
        "v": ROW_VERSION,
        "batch_id": batch_id,
        "partition": partition,
        "batch_size": None,
        "total": 0,
        "total_known": False,
        "consumed": 0,
        "completed": 0,
        "failed": 0,
        "in_flight": 0,
        "failed_by_reason": {},
        "end_reasons": {},
        "started_at": None,
        "updated_at": None,
        "finished_at": None,
        "last_finish_at": None,
        "rate": 0.0,
        "rate_weight": 0.0,
        "hist": [0] * (len(DURATION_BUCKETS_MS) + 1),
        "duplicates": 0,
    }


def _copy(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["failed_by_reason"] = dict(row.get("failed_by_reason") or {})
    out["end_reasons"] = dict(row.get("end_reasons") or {})
    hist = list(row.get("hist") or [])
    size = len(DURATION_BUCKETS_MS) + 1
    out["hist"] = (hist + [0] * size)[:size]
    return out


def bucket_index(duration_ms: float) -> int:
    for i, bound in enumerate(DURATION_BUCKETS_MS):
        if duration_ms <= bound:
            return i
    return len(DURATION_BUCKETS_MS)


def quantile_ms(hist: list[int], q: float) -> float | None:
    """Estimate the q-quantile from the histogram, interpolating inside the bucket."""
    n = sum(hist)
    if n == 0:
        return None
    target = q * n
    cum = 0
    for i, count in enumerate(hist):
        if count and cum + count >= target:
            lower = DURATION_BUCKETS_MS[i - 1] if i > 0 else 0
            if i >= len(DURATION_BUCKETS_MS):
                return float(lower)  # open-ended top bucket: report its lower edge
            upper = DURATION_BUCKETS_MS[i]
            return lower + (upper - lower) * max(target - cum, 0) / count
        cum += count
    return float(DURATION_BUCKETS_MS[-1])


def _window(row: Mapping[str, Any], t: float) -> float:
    """tau * (1 - exp(-elapsed/tau)): the weight a steady rate of 1/s would have gathered."""
    started = row.get("started_at")
    elapsed = t - started if started is not None else 0.0
    elapsed = max(elapsed, MIN_WINDOW)
    return RATE_TAU * -math.expm1(-elapsed / RATE_TAU)


def rate_at(row: Mapping[str, Any], t: float) -> float:
    """Finishes per second at time t (decayed from the last finish)."""
    last = row.get("last_finish_at")
    weight = float(row.get("rate_weight") or 0.0)
    if last is None or weight <= 0:
        return 0.0
    weight *= math.exp(-max(t - last, 0.0) / RATE_TAU)
    return weight / _window(row, max(t, last))


def _totals(row: dict[str, Any]) -> None:
    finished = row["completed"] + row["failed"]
    row["in_flight"] = max(row["consumed"] - finished, 0)
    size = row.get("batch_size")
    row["total_known"] = size is not None
    row["total"] = max(size, row["consumed"], finished) if size is not None else row["consumed"]
    if row["total_known"] and finished >= row["total"] and row.get("finished_at") is None:
        row["finished_at"] = row.get("last_finish_at") or row.get("updated_at")


def apply(
    row: Mapping[str, Any] | None, msg: Mapping[str, Any], partition: int | None = None
) -> dict[str, Any]:
    """Fold one (already deduplicated, parsed) message into a row; returns a new row."""
    out = _copy(row) if row is not None else new_row(msg["batch_id"], partition)
    if partition is not None:
        out["partition"] = partition
    at = float(msg["at"])
    kind = msg["kind"]
    if msg.get("batch_size"):
        out["batch_size"] = max(int(msg["batch_size"]), out.get("batch_size") or 0)
    if out["started_at"] is None or at < out["started_at"]:
        out["started_at"] = at
    if out["updated_at"] is None or at > out["updated_at"]:
        out["updated_at"] = at
    if kind == "consumed":
        out["consumed"] += 1
    elif kind in FINAL:
        reason = msg.get("reason") or "unknown"
        if kind == "completed":
            out["completed"] += 1
            out["end_reasons"][reason] = out["end_reasons"].get(reason, 0) + 1
        else:
            out["failed"] += 1
            out["failed_by_reason"][reason] = out["failed_by_reason"].get(reason, 0) + 1
        duration = msg.get("duration_ms")
        if duration is not None:
            out["hist"][bucket_index(float(duration))] += 1
        last = out["last_finish_at"]
        weight = float(out["rate_weight"] or 0.0)
        if last is None:
            weight, last = 1.0, at
        else:
            # Messages from different workers may arrive slightly out of time order:
            # an earlier one is counted without decaying the sum backwards.
            weight = weight * math.exp(-max(at - last, 0.0) / RATE_TAU) + 1.0
            last = max(last, at)
        out["rate_weight"], out["last_finish_at"] = weight, last
        out["rate"] = rate_at(out, last)
    else:
        raise BadMessage(f"unknown kind {kind!r}")
    _totals(out)
    return out


def apply_once(
    row: Mapping[str, Any] | None,
    seen: str | None,
    msg: Mapping[str, Any],
    partition: int | None = None,
) -> tuple[dict[str, Any] | None, str | None, bool]:
    """Fold a message unless it repeats what `seen` (this simulation's state) already counted.

    Returns (row, seen, counted). A finish without an earlier "consumed" (lost or never sent)
    counts the consumption too, so in_flight never goes negative. The first final state
    wins: a later completed/failed for the same simulation is a duplicate.
    """
    kind = msg["kind"]
    if kind == "spend":  # increments, not states: every one counts (a crash may repeat one)
        return apply_spend(row, msg, partition), seen, True
    if seen in FINAL or (kind == "consumed" and seen is not None):
        out = _copy(row) if row is not None else new_row(msg["batch_id"], partition)
        out["duplicates"] = int(out.get("duplicates") or 0) + 1
        return out, seen, False
    if kind in FINAL and seen is None:
        row = apply(row, {**msg, "kind": "consumed"}, partition)
    return apply(row, msg, partition), kind, True


def seen_state(seen: Any) -> tuple[str | None, int | None, bool]:
    """A seen entry: (state, the progress offset of the message that counted it, whether a
    final message counted the consumption too). "completed@412/c"; older entries are the bare
    state ("completed"), offset unknown."""
    if not isinstance(seen, str):
        return None, None, False
    kind, _, rest = seen.partition("@")
    if not rest:
        return kind, None, False
    offset, _, flag = rest.partition("/")
    try:
        return kind, int(offset), flag == "c"
    except ValueError:
        return kind, None, False


def apply_at(
    row: Mapping[str, Any] | None,
    seen: str | None,
    msg: Mapping[str, Any],
    partition: int | None,
    offset: int,
) -> tuple[dict[str, Any] | None, str | None, bool]:
    """`apply_once` for the message at `offset` of the progress topic, safe against a crash
    between its writes. The agent writes the seen entry, the row and the report row as three
    changelog records, which a SIGKILL can split; the message was not committed, so it comes
    back. Returns (row, seen, counted): counted is True also for that redelivery, so the
    report row (its own `applied_offset`) can be completed.

    A counted message leaves its offset in the seen entry and in the row's `applied_offset`
    (messages of a batch are on one partition, folded in offset order, and a row is a whole
    snapshot, so a row at or past the offset holds the message):
    - seen kept, row lost: the seen entry names this very offset, so the message is folded
      into the row again (with the consumption when it counted that too), not skipped;
    - row kept, seen lost: the row is at or past the offset, so it is not folded twice.
    Spend messages are increments, not states: `apply_once` as they are.
    """
    if msg["kind"] == "spend":
        return apply_once(row, seen, msg, partition)
    kind, counted_at, with_consumed = seen_state(seen)
    applied = int((row or {}).get("applied_offset", -1))
    if counted_at == offset and kind == msg["kind"]:  # this message, again after a crash
        if applied >= offset and row is not None:
            return dict(row), seen, True
        before = None if kind == "consumed" or with_consumed else "consumed"
        out, _, _ = apply_once(row, before, msg, partition)
        assert out is not None
        out["applied_offset"] = offset
        return out, seen, True
    out, new_kind, counted = apply_once(row, kind, msg, partition)
    if not counted:
        return out, seen, False
    if applied >= offset and row is not None:
        out = dict(row)  # its seen entry was lost: the row holds it already
    elif out is not None:
        out["applied_offset"] = offset
    consumed_too = msg["kind"] in FINAL and kind is None
    return out, f"{new_kind}@{offset}" + ("/c" if consumed_too else ""), True


def view(row: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
    """What clients see of a row: counts, remaining, percent, rate, ETA, p50/p95."""
    now = time.time() if now is None else now
    total = int(row.get("total") or 0)
    completed = int(row.get("completed") or 0)
    failed = int(row.get("failed") or 0)
    finished = completed + failed
    remaining = max(total - finished, 0)
    done = bool(row.get("total_known")) and remaining == 0
    # A finished batch keeps the rate it had when it finished instead of decaying to zero.
    t = row.get("finished_at") if done and row.get("finished_at") else now
    rate = rate_at(row, t)
    if remaining == 0:
        eta: float | None = 0.0
    elif rate > 0:
        eta = remaining / rate
    else:
        eta = None
    started = row.get("started_at")
    end = row.get("finished_at") if done and row.get("finished_at") else now
    elapsed = max(end - started, 0.0) if started is not None else 0.0
    hist = list(row.get("hist") or [])
    p50 = quantile_ms(hist, 0.50)
    p95 = quantile_ms(hist, 0.95)
    return {
        "batch_id": row.get("batch_id"),
        "total": total,
        "total_known": bool(row.get("total_known")),
        "consumed": int(row.get("consumed") or 0),
        "completed": completed,
        "failed": failed,
        "in_flight": int(row.get("in_flight") or 0),
        "remaining": remaining,
        "percent": round(100.0 * finished / total, 2) if total else 0.0,
        "done": done,
        "rate": round(rate, 4),
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "failed_by_reason": dict(row.get("failed_by_reason") or {}),
        "end_reasons": dict(row.get("end_reasons") or {}),
        "started_at": started,
        "updated_at": row.get("updated_at"),
        "finished_at": row.get("finished_at"),
        "elapsed_seconds": round(elapsed, 2),
        "throughput": round(finished / elapsed, 4) if elapsed > 0 else 0.0,
        "duration_p50_s": round(p50 / 1000, 3) if p50 is not None else None,
        "duration_p95_s": round(p95 / 1000, 3) if p95 is not None else None,
        "duplicates": int(row.get("duplicates") or 0),
        "spent_usd": round(float(row["spent_usd"]), 6) if row.get("spent_usd") else None,
        "max_cost_usd": row.get("max_cost_usd"),
        "capped": bool(row.get("capped_at")),
    }


def merge_views(views: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One view per batch id; when two workers answer for one batch (only while partitions
    move), keep the one that has counted more, then the newer."""
    best: dict[str, dict[str, Any]] = {}
    for v in views:
        bid = v.get("batch_id")
        if not isinstance(bid, str):
            continue
        key = (int(v.get("completed", 0)) + int(v.get("failed", 0)), v.get("updated_at") or 0)
        cur = best.get(bid)
        if cur is None or key > (cur["completed"] + cur["failed"], cur.get("updated_at") or 0):
            best[bid] = dict(v)
    return sorted(best.values(), key=lambda v: (v.get("started_at") or 0, v["batch_id"]))


# ----- retention and the index of a worker's batches -----------------------------------------


def key_partition(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a raw key (the progress topic's batch
    ids, the simulation topic's ids)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def batch_expired(row: Mapping[str, Any], now: float, retention: float) -> bool:
    """A batch leaves the table, the metrics and the page `retention` seconds after it
    finished, or after its last message when it never finishes (lost or abandoned)."""
    last = row.get("finished_at") or row.get("updated_at")
    return isinstance(last, int | float) and last < now - retention


class BatchIndex:
    """This worker's batches, newest first, without reading every row: batch id ->
    (partition, updated_at, finished). The progress agent notes each row it writes and the
    retention sweep notes the rows it walks (rows recovered after a rebalance), so the views
    and the gauges read only the rows they show."""

    def __init__(self) -> None:
        self._batches: dict[str, tuple[int | None, float, bool]] = {}

    def note(self, row: Mapping[str, Any]) -> None:
        batch_id = row.get("batch_id")
        if not isinstance(batch_id, str):
            return
        updated = row.get("updated_at")
        done = bool(row.get("total_known")) and int(row.get("completed") or 0) + int(
            row.get("failed") or 0
        ) >= int(row.get("total") or 0)
        self._batches[batch_id] = (
            row.get("partition"),
            float(updated) if isinstance(updated, int | float) else 0.0,
            done,
        )

    def forget(self, batch_id: str) -> None:
        self._batches.pop(batch_id, None)

    def keep_only(self, partitions: set[int]) -> None:
        """Forget batches whose partition this worker no longer owns."""
        for batch_id, (partition, _, _) in list(self._batches.items()):
            if partition not in partitions:
                del self._batches[batch_id]

    def newest(self, partitions: set[int], n: int, unfinished: bool = False) -> list[str]:
        """Up to `n` batch ids of `partitions`, the most recently updated first."""
        chosen = [
            (updated, batch_id)
            for batch_id, (partition, updated, done) in self._batches.items()
            if partition in partitions and not (unfinished and done)
        ]
        return [batch_id for _, batch_id in sorted(chosen, reverse=True)[:n]]

    def count(self, partitions: set[int]) -> int:
        return sum(1 for p, _, _ in self._batches.values() if p in partitions)
