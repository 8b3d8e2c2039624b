"""Where the worker's parts are made and connected to the app, once.

The agents take their parts from `parts`. Rebalances set this worker's part of the group's
budgets: nothing while partitions move, then whole requests per 1 s window from the whole
assignment, which Faust's assignor gives every member (simapp/limits/group.py).
"""

from __future__ import annotations

from typing import Any

from simapp.tables.progress import batch_stops
from simapp.tables.simulations import simulations

from simapp.worker.application import app, settings, topics
from simapp.worker.parts import WorkerParts

parts = WorkerParts(settings, topics, simulations, batch_stops)
app.flow_listeners.append(parts.on_flow)  # the slots' door and the outbox follow the flow


def give_back(message: Any) -> None:
    """Tell the committer an event is not done, whatever Faust's ack says: it is fetched
    again (simapp/kafka/committer.py `abandon`)."""
    abandon = getattr(app.consumer, "abandon", None)
    if abandon is not None:
        abandon(message)


@app.on_partitions_revoked.connect
async def _on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
    parts.on_revoked()


@app.on_partitions_assigned.connect
async def _on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
    parts.on_assigned(assigned, app.router.external_topics_metadata(), str(app.conf.canonical_url))
