"""The simulations table: where every simulation stands, by simulation id.

Co-partitioned with the simulation topic (both keyed by simulation id, same partition count),
so the worker that owns an event owns its row and reads it locally. Written by the simulate
agent's actor that owns the simulation (simapp/simulation/checkpoints.py says why that is
safe, and gives the row format).
"""

from __future__ import annotations

from simapp.worker.application import app, settings, table_options

simulations = app.Table(
    "simulations",
    default=None,
    partitions=settings.kafka_partitions,
    options=table_options(settings),
    value_type=bytes,  # raw: compact JSON bytes, made by simapp.simulation.checkpoints
    help="Simulation status and per-turn checkpoints, by simulation id",
)
