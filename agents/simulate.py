"""The simulate agent: consumes simulation events with CONCURRENT_CONVERSATIONS actors.

CONCURRENT_CONVERSATIONS is the ceiling; how many conversations run is the worker's
conversation slots' target (simapp/limits/concurrency.py), the others wait at its door.
A thin Faust loop: every event goes to the worker's Pipeline, which never raises. The event
is acked when the body returns, i.e. after its summary was delivered or dead-lettered; the
committer never commits past an event that is still running, or that an actor gave up on
(simapp/kafka/committer.py). An event re-queued by `dlq replay` carries a ReplayMark in its
headers; it is read here (checked with DLQ_REPLAY_SECRET when set) and handed to the pipeline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from simapp.agents.wiring import give_back, parts

from simapp.delivery.dead_letters import ReplayMark, Source
from simapp.observe import metrics
from simapp.simulation.pipeline import DEFERRED
from simapp.worker.application import app, settings, topics

LAG_SAMPLE_SECONDS = 5.0
SLOTS_RESIZE_SECONDS = 1.0
_REPLAY_SECRET = settings.dlq_replay_secret
REPLAY_KEY = _REPLAY_SECRET.get_secret_value().encode() if _REPLAY_SECRET else None


@app.agent(topics.events, concurrency=settings.concurrent_conversations)
async def simulate(stream: Any) -> None:
    pipeline = parts.pipeline()
    async for event in stream.events():
        message = event.message
        source = Source(message.topic, message.partition, message.offset)
        mark = ReplayMark.read(message.headers, event.value, REPLAY_KEY)
        try:
            outcome = await pipeline.handle(event.value, source, event.key, mark)
        except asyncio.CancelledError:
            # Stopped mid-event (shutdown past its grace): Faust's stream acks the event in
            # its `finally` anyway, which would let the commit pass a simulation that never
            # ended. The ledger keeps it unfinished, so it is redelivered and resumes.
            give_back(message)
            raise
        if outcome == DEFERRED:  # handed back: unstarted at the slots' door, or no outcome
            give_back(message)


@app.timer(SLOTS_RESIZE_SECONDS)
async def resize_slots() -> None:
    """The slots' target also grows with the age of calls still in flight (a slow provider
    before its first answers), which no finished call reports."""
    parts.slots.recompute()


@app.timer(LAG_SAMPLE_SECONDS)
async def sample_lag_and_budgets() -> None:
    """kafka_consumer_lag from the fetch high watermark (Tansu's ListOffsets is wrong for
    multi-record batches, the fetch answer is not), and this worker's budgets."""
    consumer = app.consumer
    next_offset = getattr(consumer, "next_offset", lambda tp: None)
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
        position = next_offset(tp) or 0
        metrics.kafka_consumer_lag.labels(tp.topic, str(tp.partition)).set(
            max(0, highwater - position)
        )
    metrics.budget_rates(parts.limits)
