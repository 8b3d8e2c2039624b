"""The checkpoint agent: the only writer of the simulations table (concurrency 1).

The simulate agent sends a message keyed by simulation id after every turn ("running", with
the conversation state) and when the simulation ends ("done"); this agent applies them. The
table's changelog makes the checkpoints survive a crash and follow the partition to its next
owner, where an interrupted conversation resumes from its last turn.
"""

from __future__ import annotations

import time
from typing import Any

from simapp.application import app, runtime, topics
from tables.simulations import simulations


@app.agent(topics.checkpoints)
async def apply_checkpoints(stream: Any) -> None:
    async for event in stream.events():
        value, message = event.value, event.message
        runtime.checkpoints_applied[message.partition] = message.offset
        sim_id = value.get("id") if isinstance(value, dict) else None
        if not isinstance(sim_id, str):
            continue
        current = simulations.get(sim_id)
        if (
            current is not None
            and current.get("status") == "done"
            and value.get("status") != "done"
        ):
            continue  # a late checkpoint of a finished simulation
        simulations[sim_id] = {
            "status": value.get("status", "running"),
            "partition": value.get("partition"),
            "offset": value.get("offset"),
            "state": value.get("state") if value.get("status") != "done" else None,
            "outcome": value.get("outcome"),
            "updated": time.time(),
        }
