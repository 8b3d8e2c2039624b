"""The simulations table: status and last checkpoint of every simulation, by simulation id.

Co-partitioned with the simulation topic (both keyed by simulation id, same partition count),
so the worker that owns an event also owns its row and can read it locally. Written only by
the concurrency-1 checkpoint agent (agents/checkpoints.py), per ARCHITECTURE.md.

Row: {"status": "running" | "done", "partition": int, "offset": int, "state": dict | None,
      "outcome": str | None, "updated": float}
"""

from __future__ import annotations

from simapp.application import app, runtime, settings

simulations = app.Table(
    "simulations",
    default=None,
    partitions=settings.kafka_partitions,
    help="Simulation status and per-turn checkpoints, by simulation id",
)
runtime.simulations = simulations
