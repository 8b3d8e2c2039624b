"""Where the worker's parts are made and connected to the app, once.

The agents take their parts from `parts`. Rebalances set this worker's share of the group's
budgets: owned / total simulation partitions, and 0 while partitions move.
"""

from __future__ import annotations

from typing import Any

from simapp.tables.simulations import simulations

from simapp.worker.application import app, settings, topics
from simapp.worker.parts import WorkerParts

parts = WorkerParts(settings, topics, simulations)
app.flow_listeners.append(parts.slots.on_flow)  # the slots' door closes with the flow


@app.on_partitions_revoked.connect
async def _on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
    parts.on_revoked()


@app.on_partitions_assigned.connect
async def _on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
    parts.on_assigned(assigned)
