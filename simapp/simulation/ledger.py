"""The ledger of runs: before a simulation runs, claim its id.

A claim answers what to do with an event: run it, resume it from its last checkpoint, skip
it (already finished, or still running here and redelivered by a rebalance), or refuse it as
a duplicate (the same id first seen at another offset). It looks in this worker's memory
first (runs in flight, and the newest FINISHED_MEMORY finished ones: a redelivery after a seek
back comes from the events since the last commit, before the table row may say "done"), then
in the simulations table.

A replayed event (`dlq replay`) lands at a new offset with a ReplayMark
(simapp/delivery/dead_letters.py): it is a new attempt of the event the mark names, not a
duplicate, when the row is that event's (or an earlier copy of the same replay's): it runs,
resumes from the row's state, or is skipped when the row says done. A forced mark (signed)
re-simulates the id whatever its row says. A mark that names another event is a duplicate like
any other; so a forged mark can at most run a simulation that never finished, never re-run a
finished one. Rows of a replayed run keep the mark's `attempt` ("replay"), so a second copy of
the same replay is recognised.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from simapp.delivery.dead_letters import ReplayMark, Source
from simapp.simulation.checkpoints import DONE, SimulationStore
from simapp.simulation.conversation import ConversationState

FINISHED_MEMORY = 20_000  # finished runs remembered (~280 bytes each, ~6 MB)

RUN = "run"
RESUME = "resume"
SKIP_DONE = "skip_done"
SKIP_RUNNING = "skip_running"
DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Claim:
    kind: str  # RUN, RESUME, SKIP_DONE, SKIP_RUNNING or DUPLICATE
    state: ConversationState | None = None  # RESUME: where it stopped
    first: dict[str, Any] | None = None  # DUPLICATE: partition/offset first seen
    previous: str | None = None  # SKIP_DONE: its outcome


class RunLedger:
    """Per worker; every method runs on the event loop between awaits (no locks needed)."""

    def __init__(self, store: SimulationStore, memory: int = FINISHED_MEMORY) -> None:
        self.store = store
        self.memory = memory
        # simulation id -> (where its event was read, the replay attempt it is or None, future
        # done when that run ends)
        self._running: dict[str, tuple[tuple[int, int], str | None, asyncio.Future[None]]] = {}
        # simulation id -> (where, outcome) of runs finished here, newest last
        self._finished: OrderedDict[str, tuple[tuple[int, int], str]] = OrderedDict()

    async def claim(
        self, simulation_id: str, source: Source, mark: ReplayMark | None = None
    ) -> Claim:
        where = (source.partition, source.offset)
        running = self._running.get(simulation_id)
        if running is not None:
            origin, attempt, done = running
            same = origin == where or (
                mark is not None
                and (mark.attempt == attempt or mark.replays(source.topic, *origin))
            )
            if not same and not (mark is not None and mark.force):
                return Claim(DUPLICATE, first=_where(origin))
            await asyncio.shield(done)  # a redelivery while it runs here: wait, do not re-run
            if same:
                return Claim(SKIP_RUNNING)
            # forced: that run is over; the row decides below
        finished = self._finished.get(simulation_id)
        if finished is not None and finished[0] == where:
            return Claim(SKIP_DONE, previous=finished[1])
        row = self.store.get(simulation_id)
        if row is None:
            return Claim(RUN)
        if (row.get("partition"), row.get("offset")) != where:
            if mark is None:
                return Claim(DUPLICATE, first=row)
            same_attempt = mark.attempt == row.get("replay")
            if mark.force and not same_attempt:
                return Claim(RUN)  # re-simulated from the start, whatever the row says
            if not (
                same_attempt or mark.replays(source.topic, row.get("partition"), row.get("offset"))
            ):
                return Claim(DUPLICATE, first=row)
            # a new attempt of the row's event: as for a redelivery of it
        if row.get("status") == DONE:
            return Claim(SKIP_DONE, previous=row.get("outcome"))
        if row.get("state"):
            return Claim(RESUME, state=ConversationState.from_dict(row["state"]))
        return Claim(RUN)

    def start(self, simulation_id: str, source: Source, attempt: str | None = None) -> None:
        """The claim became a run (RUN or RESUME; `attempt`: the replay it is): redeliveries
        now wait for it."""
        future = asyncio.get_running_loop().create_future()
        self._running[simulation_id] = ((source.partition, source.offset), attempt, future)

    def end(self, simulation_id: str, outcome: str | None) -> None:
        """The run is over: finished with `outcome`, or None when it was interrupted."""
        where, _attempt, future = self._running.pop(simulation_id)
        if outcome is not None:
            self._finished[simulation_id] = (where, outcome)
            self._finished.move_to_end(simulation_id)
            while len(self._finished) > self.memory:
                self._finished.popitem(last=False)
        future.set_result(None)


def _where(origin: tuple[int, int]) -> dict[str, int]:
    return {"partition": origin[0], "offset": origin[1]}
