"""Produce simulation events (keyed by simulation id) to Kafka, optionally at a steady rate."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable

from simapp.config import Settings
from simapp.kafka import clients
from simapp.kafka.admin import ensure_topics


def all_topic_names(settings: Settings) -> list[str]:
    return [
        settings.kafka_topic,
        settings.results_topic,
        settings.dlq_topic,
        settings.progress_topic,
    ]


async def produce(
    settings: Settings,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    topic: str | None = None,
    rate: float | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send (key, value) records; returns how many were acknowledged by the broker."""
    await ensure_topics(settings, all_topic_names(settings))
    producer = clients.producer(
        settings,
        acks="all",
        linger_ms=5,
        max_request_size=8 * 1024 * 1024,
    )
    await clients.start(producer, settings)
    sent = 0
    started = time.monotonic()
    try:
        pending = []
        for key, value in records:
            if rate:
                due = started + sent / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(await producer.send(topic or settings.kafka_topic, value=value, key=key))
            sent += 1
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
                if on_sent:
                    on_sent(sent)
        await asyncio.gather(*pending)
        if on_sent:
            on_sent(sent)
    finally:
        await producer.stop()
    return sent


def encode_event(event: dict) -> tuple[bytes, bytes]:
    return str(event["id"]).encode(), json.dumps(event).encode()
