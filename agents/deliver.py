"""The deliver agent: the results topic's summaries to their receivers (concurrency 1).

Each record is handed to the worker's outbox (simapp/delivery/outbox.py), which delivers it
from its own task; the stream does not ack (`noack`): the outbox settles a record when its
outcome is durable (delivered and counted, or dead-lettered), or hands it back when the flow
of events stops, and the committer never commits past a record that is not settled.
"""

from __future__ import annotations

from typing import Any

from simapp.agents.wiring import give_back, parts

from simapp.delivery.dead_letters import Source
from simapp.worker.application import app, topics


@app.agent(topics.results, concurrency=1)
async def deliver(stream: Any) -> None:
    outbox = parts.outbox()
    async for event in stream.noack().events():
        message = event.message
        source = Source(message.topic, message.partition, message.offset)
        await outbox.put(event.value, source, settler(event))


def settler(event: Any) -> Any:
    """settle(True): the record's outcome is durable; settle(False): fetch it again."""

    def settle(ok: bool) -> None:
        if not ok:
            give_back(event.message)
        event.ack()

    return settle
