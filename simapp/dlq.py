"""Dead letters: read them back and replay them (`faust -A simapp dlq list|replay`).

Replay does the cheapest thing that finishes the job:
- an undeliverable summary (`callback_failed`) is POSTed again to its callback URL, with the
  same Idempotency-Key; the conversation is not simulated again;
- a rejected event (`original`) is produced again to the simulation topic, e.g. after the
  allowlist or the limits were changed; if it is still bad it comes back here;
- `duplicate_id` records are only replayed with `force`, since the id was already simulated.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer

from simapp.callbacks import CallbackSender
from simapp.config import Settings
from simapp.producer import produce
from simapp.urlpolicy import CallbackPolicy


async def read_dead_letters(settings: Settings, idle: float = 2.0) -> list[dict[str, Any]]:
    """Every record of the DLQ topic, from the beginning (no consumer group, no commits)."""
    consumer = AIOKafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    try:
                        item = json.loads(record.value)
                    except ValueError:
                        continue
                    item["_dlq"] = {"partition": record.partition, "offset": record.offset}
                    out.append(item)
                    last = time.monotonic()
    finally:
        await consumer.stop()
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
    sender = CallbackSender(
        timeout=settings.callback_timeout,
        attempts=settings.callback_retry_attempts,
        deadline=settings.callback_deadline,
        policy=CallbackPolicy(settings.callback_allowed_hosts),
    )
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
