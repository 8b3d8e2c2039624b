"""Dead letters: the record format, the writer, and reading them back and replaying them.

A dead letter is one record on DLQ_TOPIC per rejected or undeliverable event: `reason` (a
stable code, also a metrics label), `detail` for humans, `simulation_id`, `batch_id`, `source`
(topic/partition/offset), `timestamp`, and either `original` (the event bytes, UTF-8 or
base64, capped at ORIGINAL_LIMIT) or the undeliverable `summary` with its `callback_url`.

Replay (`faust -A simapp dlq list|replay`) does the cheapest thing that finishes the job:
- an undeliverable summary (`callback_failed`) is POSTed again to its callback URL, with the
  same Idempotency-Key; the conversation is not simulated again;
- a rejected event (`original`) is produced again to the simulation topic, e.g. after the
  allowlist or the limits were changed; if it is still bad it comes back here;
- `duplicate_id` records are only replayed with `force`, since the id was already simulated.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from simapp.config import Settings
from simapp.delivery.callbacks import CallbackSender
from simapp.kafka.producer import produce
from simapp.kafka.reader import TopicReader, json_value
from simapp.kafka.records import fit
from simapp.observe import metrics

ORIGINAL_LIMIT = 256 * 1024  # bytes of the original event kept in a dead letter
REASONS = (
    "empty",
    "not_json",
    "not_object",
    "invalid_event",
    "invalid_field",
    "too_large",
    "forbidden_callback",
    "unknown_model",
    "duplicate_id",
    "callback_failed",
    "invalid_result",
    "internal_error",
)

Send = Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]  # (key, value) -> the ack to await


@dataclass(frozen=True, slots=True)
class Source:
    """Where an event was read: the dead letter's `source` and the table row's origin."""

    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def encode_original(raw: bytes | None) -> dict[str, Any]:
    """The original event bytes for a dead letter: text when UTF-8, else base64; capped."""
    if raw is None:
        return {"encoding": "none", "value": None, "size": 0}
    size = len(raw)
    kept = raw[:ORIGINAL_LIMIT]
    try:
        value, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return {"encoding": encoding, "value": value, "size": size, "truncated": size > len(kept)}


def dead_letter_record(
    reason: str,
    detail: str,
    source: Source,
    simulation_id: str | None,
    *,
    original: bytes | None = None,
    summary: dict[str, Any] | None = None,
    callback_url: str | None = None,
    batch_id: str | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "reason": reason,
        "detail": detail,
        "simulation_id": simulation_id,
        "batch_id": batch_id,
        "source": source.as_dict(),
        "timestamp": datetime.now(UTC).isoformat(),
        "failed_at": time.time(),
    }
    if summary is not None:
        record["summary"] = summary
        record["callback_url"] = callback_url
    else:
        record["original"] = encode_original(original)
    return record


class DeadLetters:
    """Writes dead letters (keyed by simulation id, else by source) and counts them.

    `send(key, value)` hands the record's bytes to the producer and returns the broker's
    acknowledgement, which `write` awaits: an outcome is recorded only once it is durable.
    A record larger than `max_bytes` has its longest strings cut (simapp/kafka/records.py).
    """

    def __init__(self, send: Send, max_bytes: int = 900_000) -> None:
        self._send = send
        self.max_bytes = max_bytes

    async def write(
        self, reason: str, detail: str, source: Source, simulation_id: str | None, **extra: Any
    ) -> None:
        record = dead_letter_record(reason, detail, source, simulation_id, **extra)
        key = simulation_id or f"{source.topic}-{source.partition}-{source.offset}"
        await (await self._send(key.encode(), fit(record, self.max_bytes)))
        metrics.dead_letters.labels(reason).inc()


async def read_dead_letters(settings: Settings, idle: float = 2.0) -> list[dict[str, Any]]:
    """Every record of the DLQ topic, from the beginning (no consumer group, no commits)."""
    out: list[dict[str, Any]] = []
    async with TopicReader(settings) as reader:
        await reader.from_start(settings.dlq_topic)
        async for record in reader.records(idle=idle):
            item = json_value(record)
            if isinstance(item, dict):
                item["_dlq"] = {"partition": record.partition, "offset": record.offset}
                out.append(item)
    return out


def select(
    records: Iterable[dict], reason: str | None = None, simulation_id: str | None = None
) -> list[dict]:
    return [
        r
        for r in records
        if (reason is None or r.get("reason") == reason)
        and (simulation_id is None or r.get("simulation_id") == simulation_id)
    ]


def original_bytes(record: dict) -> bytes | None:
    original = record.get("original") or {}
    value = original.get("value")
    if value is None or original.get("truncated"):
        return None
    if original.get("encoding") == "base64":
        return base64.b64decode(value)
    return str(value).encode("utf-8")


async def replay(settings: Settings, records: list[dict], force: bool = False) -> dict[str, int]:
    """Replay dead letters; returns counts by what happened."""
    counts = {"redelivered": 0, "still_undeliverable": 0, "requeued": 0, "skipped": 0}
    sender = CallbackSender.from_settings(settings)
    requeue: list[tuple[bytes | None, bytes]] = []
    try:
        for record in records:
            if record.get("reason") == "duplicate_id" and not force:
                counts["skipped"] += 1
            elif record.get("summary") and record.get("callback_url"):
                summary = record["summary"]
                result = await sender.deliver(
                    record["callback_url"], summary["simulation_id"], summary
                )
                counts["redelivered" if result.ok else "still_undeliverable"] += 1
            elif (raw := original_bytes(record)) is not None:
                key = record.get("simulation_id")
                requeue.append((key.encode() if key else None, raw))
                counts["requeued"] += 1
            else:
                counts["skipped"] += 1
        if requeue:
            await produce(settings, requeue)
    finally:
        await sender.close()
    return counts
