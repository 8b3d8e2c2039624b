"""The simulate agent: consumes simulation events with CONCURRENT_CONVERSATIONS actors.

A thin Faust loop: every event goes to `Runtime.handle`, which never raises. The event is
acked when the body returns, i.e. after its summary was delivered or dead-lettered; the
committer never commits past an event that is still running (simapp/committer.py).
"""

from __future__ import annotations

from typing import Any

from simapp import metrics
from simapp.application import app, runtime, settings, topics


@app.agent(topics.events, concurrency=settings.concurrent_conversations)
async def simulate(stream: Any) -> None:
    async for event in stream.events():
        message = event.message
        await runtime.handle(
            event.value, message.topic, message.partition, message.offset, event.key
        )


@app.on_partitions_revoked.connect
async def _on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
    runtime.on_revoke()


@app.on_partitions_assigned.connect
async def _on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
    runtime.on_assignment(sum(1 for tp in assigned if tp.topic == settings.kafka_topic))


@app.timer(5.0)
async def sample_lag_and_budget() -> None:
    """kafka_consumer_lag from the fetch high watermark (Tansu's ListOffsets is wrong for
    multi-record batches, the fetch answer is not) and this worker's effective LLM budget."""
    consumer = app.consumer
    read_offsets = getattr(consumer, "_read_offset", {})
    metrics.kafka_consumer_lag.clear()  # forget partitions we no longer own
    for tp in consumer.assignment():
        if tp.topic != settings.kafka_topic:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet
            continue
        if highwater is None or highwater < 0:
            continue
        read = read_offsets.get(tp)
        position = (read + 1) if read is not None else 0
        metrics.kafka_consumer_lag.labels(tp.topic, str(tp.partition)).set(
            max(0, highwater - position)
        )
    budgets = runtime.budgets
    if budgets is not None:
        base = settings.llm_global_rate_limit_rps or settings.llm_rate_limit_rps
        metrics.llm_rate_limit_rps.labels("default").set(
            base * budgets.share * (1 - budgets.safety_margin)
        )
        for model in list(budgets.stats):
            metrics.llm_rate_limit_rps.labels(model).set(budgets.rate(model))
