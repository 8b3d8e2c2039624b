"""One event's path, from raw bytes to a durable summary or a dead letter.

decode -> (dead letter | re-key | claim in the ledger -> wait for a conversation slot -> run
or resume the conversation, checkpointing every turn -> the summary durable on the results
topic -> the "done" row durable). Only then does the agent ack the event: the summary's
delivery is the outbox's (simapp/delivery/outbox.py, from the results topic), so a slow or
absent receiver holds no conversation slot. Every send an outcome depends on is awaited until
the broker acknowledged it. Nothing raises out of `handle`: an exception anywhere becomes an
`internal_error` dead letter, and when even that cannot be written the event is handed back
(DEFERRED) instead of being committed without an outcome. Every part is handed in, so the path
is unit-tested with fakes (tests/test_pipeline_unit.py) and wired once for the worker
(agents/wiring.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from simapp.delivery.dead_letters import DeadLetters, ReplayMark, Source
from simapp.limits.concurrency import ConversationSlots
from simapp.observe import metrics
from simapp.observe.logs import log_outcome
from simapp.observe.progress import ProgressReporter
from simapp.simulation.checkpoints import SimulationStore, done_row, running_row
from simapp.simulation.conversation import (
    END_BUDGET_EXHAUSTED,
    END_CONTEXT_WINDOW,
    END_LLM_ERROR,
    END_LLM_UNAVAILABLE,
    END_SIZE_LIMIT,
    END_USER_ERROR,
    Checkpoint,
    ConversationEngine,
    ConversationState,
)
from simapp.simulation.ledger import DUPLICATE, RESUME, SKIP_DONE, SKIP_RUNNING, Claim, RunLedger
from simapp.simulation.schemas import EventDecoder, Rejection, SimulationEvent, Summary

log = logging.getLogger(__name__)

FAILED_END_REASONS = frozenset(
    {
        END_LLM_ERROR,
        END_LLM_UNAVAILABLE,
        END_CONTEXT_WINDOW,
        END_USER_ERROR,
        END_SIZE_LIMIT,
        END_BUDGET_EXHAUSTED,
    }
)

Send = Callable[[bytes, Any], Awaitable[Any]]  # (key, value) -> durable on its topic
# The worker stopped taking events (rebalance, shutdown) before the conversation began, or an
# outcome could not be recorded: the event goes back, and the agent tells the committer it is
# not done.
DEFERRED = "deferred"


def result_record(
    event: SimulationEvent, summary: dict[str, Any], models: dict[str, str]
) -> dict[str, Any]:
    """The results topic's record: the summary as POSTed, and what its delivery, the
    estimate and the batch report need beside it (`facts`: who played, against what)."""
    endpoint = event.assistant.endpoint if event.assistant else None
    return {
        "summary": summary,
        "failed": summary["end_reason"] in FAILED_END_REASONS,  # counted as failed in progress
        "callback_url": event.callback_url,
        "batch_callback_url": event.batch_callback_url,  # the batch report's (first one wins)
        "batch_id": event.batch_id,
        "batch_size": event.batch_size,
        "max_iterations": event.max_iterations,  # for estimates (commands/estimate.py)
        "summarized_at": time.time(),  # the outbox's CALLBACK_MAX_WAIT counts from here
        "facts": {
            "persona": event.persona.name,
            "scenario_id": event.scenario,
            "endpoint": endpoint,
            "models": models,  # role -> model (an endpoint's assistant: its model name)
        },
    }


class Pipeline:
    """What a worker does with every simulation event (one instance per worker)."""

    def __init__(
        self,
        *,
        decoder: EventDecoder,
        ledger: RunLedger,
        store: SimulationStore,
        engine: ConversationEngine,
        dead_letters: DeadLetters,
        progress: ProgressReporter,
        send_result: Send,
        send_event: Send,
        checkpoint_turns: bool = True,
        slots: ConversationSlots | None = None,
        stopped: Callable[[str], bool] | None = None,
    ) -> None:
        self.decoder = decoder
        self.ledger = ledger
        self.store = store
        self.engine = engine
        self.dead_letters = dead_letters
        self.progress = progress
        self.send_result = send_result
        self.send_event = send_event
        self.checkpoint_turns = checkpoint_turns
        self.slots = slots
        self.stopped = stopped  # batch id -> its spend cap was reached (the global table)

    async def handle(
        self,
        raw: bytes | None,
        source: Source,
        key: bytes | None,
        mark: ReplayMark | None = None,
    ) -> str:
        """Process one event to its outcome; returns it. Never raises (except cancel).
        `mark`: the event is a `dlq replay` (its mark, already checked)."""
        metrics.kafka_messages_consumed.inc()
        try:
            return await self._handle(raw, source, key, mark)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our bug: do not lose the event, dead-letter it with the reason
            return await self.crashed(exc, raw, source)

    async def _handle(
        self, raw: bytes | None, source: Source, key: bytes | None, mark: ReplayMark | None
    ) -> str:
        decoded = self.decoder.decode(raw)
        if isinstance(decoded, Rejection):
            await self.reject(decoded, raw, source)
            return "rejected"
        if key != decoded.id.encode():
            # The simulations table is keyed by simulation id: the event must live on the
            # partition of its id. Re-send it keyed by id; this copy is done.
            await self.send_event(decoded.id.encode(), raw)
            log_outcome(decoded.id, "rekeyed", partition=source.partition, offset=source.offset)
            return "rekeyed"
        return await self.simulate(decoded, source, mark)

    async def crashed(self, exc: Exception, raw: bytes | None, source: Source) -> str:
        """An `internal_error` dead letter for the event; DEFERRED when it cannot be written
        (the event is then not committed, and comes back)."""
        decoded = self.decoder.decode(raw)
        sim_id = getattr(decoded, "id", None) or getattr(decoded, "simulation_id", None)
        batch_id = decoded.batch_id
        log.error("simulation %s crashed", sim_id, exc_info=exc)
        detail = f"{type(exc).__name__}: {exc}"[:500]
        try:
            await self.dead_letters.write(
                "internal_error", detail, source, sim_id, original=raw, batch_id=batch_id
            )
            if batch_id and sim_id:
                await self.progress.report(batch_id, "failed", sim_id, reason="internal_error")
        except Exception:
            log.exception(
                "the internal_error dead letter of %s could not be written; the event is not "
                "committed and comes back",
                sim_id,
            )
            return DEFERRED
        metrics.conversations_failed.labels("internal_error").inc()
        log_outcome(sim_id, "dead_lettered", reason="internal_error", detail=detail)
        return "internal_error"

    async def reject(self, rejection: Rejection, raw: bytes | None, source: Source) -> None:
        await self.dead_letters.write(
            rejection.reason,
            rejection.detail,
            source,
            rejection.simulation_id,
            original=raw,
            batch_id=rejection.batch_id,
        )
        if rejection.batch_id and rejection.simulation_id:
            await self.progress.report(
                rejection.batch_id, "failed", rejection.simulation_id, reason=rejection.reason
            )
        metrics.conversations_failed.labels(rejection.reason).inc()
        log_outcome(
            rejection.simulation_id,
            "rejected",
            reason=rejection.reason,
            detail=rejection.detail,
            partition=source.partition,
            offset=source.offset,
        )

    async def simulate(
        self, event: SimulationEvent, source: Source, mark: ReplayMark | None = None
    ) -> str:
        claim = await self.ledger.claim(event.id, source, mark)
        if claim.kind == DUPLICATE:
            return await self.duplicate(event, source, claim)
        attempt = mark.attempt if mark is not None else None
        if mark is not None:
            log.info(
                "simulation %s is the replay %s%s: %s",
                event.id, attempt, " (forced)" if mark.force else "", claim.kind,
            )  # fmt: skip
        if claim.kind == SKIP_RUNNING:
            log_outcome(event.id, "skipped_running", reason="redelivered while running here")
            return "skipped_running"
        if claim.kind == SKIP_DONE:
            log_outcome(event.id, "skipped_done", previous=claim.previous)
            return "skipped_done"
        if claim.kind == RESUME:
            assert claim.state is not None
            log_outcome(
                event.id,
                "resumed",
                iterations=claim.state.iterations,
                llm_calls=claim.state.usage.llm_calls,
            )
        self.ledger.start(event.id, source, attempt)  # from here a redelivery waits for this run
        outcome: str | None = None
        try:
            to_go = event.max_iterations - (claim.state.iterations if claim.state else 0)
            if self.slots is not None and not await self.slots.enter(priority=to_go):
                log_outcome(event.id, DEFERRED, reason="the worker stopped taking events")
                return DEFERRED
            metrics.conversations_active.inc()
            try:
                consumed, summary = await self.converse(event, source, claim, attempt)
            finally:
                metrics.conversations_active.dec()
            outcome = await self.summarized(event, summary, source, attempt)
            await consumed  # the "consumed" progress message is durable too
            return outcome
        finally:
            self.ledger.end(event.id, outcome)

    async def converse(
        self, event: SimulationEvent, source: Source, claim: Claim, attempt: str | None = None
    ) -> tuple[Awaitable[Any], Summary]:
        """The conversation's LLM work, in its slot (the slot is free again when it ends);
        the "consumed" progress message goes out first (its ack is awaited later)."""
        try:
            consumed = await self.progress.report_soon(
                event.batch_id, "consumed", event.id, batch_size=event.batch_size
            )
            checkpoint = self.checkpointer(event, source, claim.state, attempt)
            if event.max_cost_usd is None:
                return consumed, await self.engine.run(event, claim.state, checkpoint)
            checkpoint, flush = self.spender(event, checkpoint, claim.state)
            stop = None if self.stopped is None else functools.partial(self.stopped, event.batch_id)
            summary = await self.engine.run(event, claim.state, checkpoint, stop)
            await flush(summary.usage.cost_usd)
            return consumed, summary
        finally:
            if self.slots is not None:
                self.slots.leave()

    def spender(
        self,
        event: SimulationEvent,
        checkpoint: Checkpoint | None,
        resumed: ConversationState | None,
    ) -> tuple[Checkpoint, Callable[[float | None], Awaitable[None]]]:
        """For a batch with a spend cap (max_cost_usd): at every checkpoint (after each LLM
        call), the conversation's cost since its last report goes to the batch's owner (a
        "spend" progress message) before the row is written, so the batch's cost to date lags
        its calls by the calls in flight; `flush(cost)` reports what the judge added. A crash
        between a report and its row reports that call twice (the batch stops early, never
        late)."""
        reported = [resumed.spend_reported if resumed is not None else 0.0]

        async def flush(cost: float | None) -> None:
            cost = cost or 0.0
            if cost > reported[0]:
                await self.progress.report(
                    event.batch_id,
                    "spend",
                    event.id,
                    cost_usd=cost - reported[0],
                    max_cost_usd=event.max_cost_usd,
                )
                reported[0] = cost

        async def spend_then_checkpoint(state: ConversationState) -> None:
            await flush(state.usage.cost_usd)
            state.spend_reported = reported[0]
            if checkpoint is not None:
                await checkpoint(state)

        return spend_then_checkpoint, flush

    def models(self, event: SimulationEvent) -> dict[str, str]:
        """The model of each role of this event, as the engine resolves them."""
        engine = self.engine
        models = event.models(engine.user_model, engine.judge_model)
        endpoint = event.assistant.endpoint if event.assistant else None
        if endpoint and not (event.assistant and event.assistant.model):
            models["assistant"] = engine.endpoint_models.get(endpoint, models["assistant"])
        return models

    async def summarized(
        self,
        event: SimulationEvent,
        summary: Summary,
        source: Source,
        attempt: str | None = None,
    ) -> str:
        """The summary durable on the results topic, then the "done" row: from here the
        outbox delivers it, and a redelivered event is skipped."""
        payload = summary.model_dump(mode="json", exclude_none=True)
        metrics.conversation_duration_seconds.observe(summary.duration_ms / 1000)
        metrics.iterations_per_conversation.observe(summary.total_iterations)
        await self.send_result(event.id.encode(), result_record(event, payload, self.models(event)))
        # Durable before the event is acked: after a crash, only this row tells the
        # redelivered event that its summary is already on the results topic.
        await self.store.put(
            event.id,
            done_row(source.partition, source.offset, summary.end_reason, attempt),
            source.partition,
        )
        log.debug("simulation %s summarized: %s", event.id, summary.end_reason)
        return summary.end_reason

    def checkpointer(
        self,
        event: SimulationEvent,
        source: Source,
        resumed: ConversationState | None,
        attempt: str | None = None,
    ) -> Callable[[ConversationState], Awaitable[None]] | None:
        """Writes the conversation's row after every turn (CHECKPOINT_TURNS); a turn's row
        waits until the previous turn's row is durable. So a crash re-bills at most the call
        in flight and the turn before it, however far Faust's producer lags on a busy worker,
        and the wait is rarely felt: the previous row had a whole LLM call to become durable
        (the three designs measured: docs/reliability.md, "What a crash re-bills")."""
        if not self.checkpoint_turns:
            return None
        base_ms = resumed.elapsed_ms if resumed is not None else 0
        started = time.monotonic()
        previous: list[Awaitable[Any]] = []  # the last row written, not yet known durable

        async def checkpoint(state: ConversationState) -> None:
            if previous:
                await previous.pop()
            data = state.to_dict()
            data["elapsed_ms"] = base_ms + int((time.monotonic() - started) * 1000)
            row = running_row(source.partition, source.offset, data, attempt)
            previous.append(self.store.put(event.id, row, source.partition))

        return checkpoint

    async def duplicate(self, event: SimulationEvent, source: Source, claim: Claim) -> str:
        """The same simulation id arrived again at another offset: report, do not simulate."""
        first = claim.first or {}
        where = f"first seen at partition {first.get('partition')} offset {first.get('offset')}"
        metrics.conversations_failed.labels("duplicate_id").inc()
        log_outcome(
            event.id,
            "rejected",
            reason="duplicate_id",
            detail=where,
            partition=source.partition,
            offset=source.offset,
        )
        await self.dead_letters.write(
            "duplicate_id",
            f"simulation id already used ({where})",
            source,
            event.id,
            original=event.model_dump_json().encode(),
            batch_id=event.batch_id,
        )
        return "duplicate_id"
