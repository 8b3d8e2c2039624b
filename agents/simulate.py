"""The simulate agent: consumes simulation events with CONCURRENT_CONVERSATIONS actors.

A thin Faust loop: every event goes to `Runtime.handle`, which never raises. The event is
acked when the body returns, i.e. after its summary was delivered or dead-lettered; the
committer never commits past an event that is still running (simapp/committer.py).
"""

from __future__ import annotations

from typing import Any

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
