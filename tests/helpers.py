"""Helpers for end-to-end tests: topic namespaces, producing events, reading topics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer

from simapp.catalogue import make_events
from simapp.config import load_settings
from simapp.embedded.stack import EmbeddedStack
from simapp.producer import encode_event, produce


@dataclass
class Namespace:
    """Unique topic and group names, so tests sharing one broker never see each other's data."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def overrides(self) -> dict[str, str]:
        t = self.tag
        return {
            "kafka_topic": f"events-{t}",
            "results_topic": f"results-{t}",
            "dlq_topic": f"dlq-{t}",
            "progress_topic": f"progress-{t}",
            "checkpoint_topic": f"checkpoints-{t}",
            "kafka_consumer_group": f"group-{t}",
        }

    def settings(self, stack: EmbeddedStack, **extra: Any) -> Any:
        return load_settings(
            kafka_bootstrap_servers=stack.bootstrap,
            kafka_partitions=stack.partitions,
            **self.overrides(),
            **extra,
        )


def events_for(
    stack: EmbeddedStack, count: int, *, batch_id: str | None = None, **kw: Any
) -> list[dict]:
    return make_events(
        count,
        callback_url=f"{stack.sink_url}/callback",
        batch_id=batch_id or f"b{uuid.uuid4().hex[:8]}",
        **kw,
    )


def send_events(stack: EmbeddedStack, ns: Namespace, events: Iterable[dict]) -> int:
    return send_raw(stack, ns, (encode_event(e) for e in events))


def send_raw(
    stack: EmbeddedStack, ns: Namespace, records: Iterable[tuple[bytes | None, bytes]]
) -> int:
    return asyncio.run(produce(ns.settings(stack), list(records)))


def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[dict]:
    """Read JSON values from the start of `topic` until `expect` records or the timeout."""

    async def _read() -> list[dict]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        out: list[dict] = []
        try:
            deadline = time.monotonic() + timeout
            while len(out) < expect and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(json.loads(r.value) for r in records)
        finally:
            await consumer.stop()
        return out

    return asyncio.run(_read())


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def delivered_for(stack: EmbeddedStack, ids: set[str]) -> list[dict]:
    """Deliveries at the sink whose simulation id is in `ids` (all attempts that succeeded)."""
    return [item for item in stack.sink_items() if item.get("simulation_id") in ids]
