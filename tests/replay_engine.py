"""A conversation engine with a bug, for tests/test_dlq_replay.py: ENGINE_CLASS=
tests.replay_engine:BuggyEngine with SIMAPP_TEST_BUG_AFTER=N raises after N assistant turns,
so the event becomes an internal_error dead letter with a row (its checkpoints) behind it.
A worker started without the variable (the bug fixed) runs it to the end."""

from __future__ import annotations

import os

from simapp.simulation.conversation import ConversationEngine, ConversationState
from simapp.simulation.schemas import SimulationEvent


class BuggyEngine(ConversationEngine):
    async def assistant_turn(self, event: SimulationEvent, state: ConversationState) -> None:
        after = os.environ.get("SIMAPP_TEST_BUG_AFTER")
        if after and state.iterations >= int(after):
            raise RuntimeError(f"injected bug after {after} turns")
        await super().assistant_turn(event, state)
