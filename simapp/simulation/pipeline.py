"""One event's path, from raw bytes to a delivered summary or a dead letter.

decode -> (dead letter | re-key | claim in the ledger -> run or resume the conversation,
checkpointing every turn -> POST the summary -> record it: results topic, progress, the
"done" row) and never raise, so one bad event cannot stop the stream. Every part is handed in,
so the path is unit-tested with fakes (tests/test_pipeline_unit.py) and wired once for the
worker (agents/wiring.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from simapp.delivery.callbacks import CallbackSender, Delivery
from simapp.delivery.dead_letters import DeadLetters, Source
from simapp.limits.concurrency import ConversationSlots
from simapp.observe import metrics
from simapp.observe.logs import log_outcome
from simapp.observe.progress import ProgressReporter
from simapp.simulation.checkpoints import SimulationStore, done_row, running_row
from simapp.simulation.conversation import (
    END_CONTEXT_WINDOW,
    END_LLM_ERROR,
    END_LLM_UNAVAILABLE,
    END_USER_ERROR,
    ConversationEngine,
    ConversationState,
)
from simapp.simulation.ledger import DUPLICATE, RESUME, SKIP_DONE, SKIP_RUNNING, Claim, RunLedger
from simapp.simulation.schemas import EventDecoder, Rejection, SimulationEvent, Summary

log = logging.getLogger(__name__)

FAILED_END_REASONS = frozenset(
    {END_LLM_ERROR, END_LLM_UNAVAILABLE, END_CONTEXT_WINDOW, END_USER_ERROR}
)

Send = Callable[[bytes, Any], Awaitable[Any]]  # (key, value) -> sent to a topic
# The worker stopped taking events (rebalance, shutdown) before the conversation began: the
# event goes back unstarted and the agent tells the committer it is not done.
DEFERRED = "deferred"


class Pipeline:
    """What a worker does with every simulation event (one instance per worker)."""

    def __init__(
        self,
        *,
        decoder: EventDecoder,
        ledger: RunLedger,
        store: SimulationStore,
        engine: ConversationEngine,
        sender: CallbackSender,
        dead_letters: DeadLetters,
        progress: ProgressReporter,
        send_result: Send,
        send_event: Send,
        checkpoint_turns: bool = True,
        slots: ConversationSlots | None = None,
    ) -> None:
        self.decoder = decoder
        self.ledger = ledger
        self.store = store
        self.engine = engine
        self.sender = sender
        self.dead_letters = dead_letters
        self.progress = progress
        self.send_result = send_result
        self.send_event = send_event
        self.checkpoint_turns = checkpoint_turns
        self.slots = slots

    async def handle(self, raw: bytes | None, source: Source, key: bytes | None) -> str:
        """Process one event to its end; returns the outcome. Never raises (except cancel)."""
        metrics.kafka_messages_consumed.inc()
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
        try:
            return await self.simulate(decoded, source)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our bug: do not lose the event, dead-letter it with the reason
            log.exception("simulation %s crashed", decoded.id)
            detail = f"{type(exc).__name__}: {exc}"[:500]
            await self.dead_letters.write(
                "internal_error",
                detail,
                source,
                decoded.id,
                original=raw,
                batch_id=decoded.batch_id,
            )
            metrics.conversations_failed.labels("internal_error").inc()
            await self.progress.report(
                decoded.batch_id, "failed", decoded.id, reason="internal_error"
            )
            return "internal_error"

    async def reject(self, rejection: Rejection, raw: bytes | None, source: Source) -> None:
        metrics.conversations_failed.labels(rejection.reason).inc()
        log_outcome(
            rejection.simulation_id,
            "rejected",
            reason=rejection.reason,
            detail=rejection.detail,
            partition=source.partition,
            offset=source.offset,
        )
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

    async def simulate(self, event: SimulationEvent, source: Source) -> str:
        claim = await self.ledger.claim(event.id, source)
        if claim.kind == DUPLICATE:
            return await self.duplicate(event, source, claim)
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
        self.ledger.start(event.id, source)  # from here a redelivery waits for this run
        outcome: str | None = None
        try:
            if self.slots is not None and not await self.slots.enter():
                log_outcome(event.id, DEFERRED, reason="the worker stopped taking events")
                return DEFERRED
            metrics.conversations_active.inc()
            try:
                summary = await self.converse(event, source, claim)
                outcome = await self.finish(event, summary, source)
                # Durable before the event is acked: after a crash, only this row tells the
                # redelivered event that its summary already went out.
                await self.store.put(
                    event.id, done_row(source.partition, source.offset, outcome), source.partition
                )
            finally:
                metrics.conversations_active.dec()
            return outcome
        finally:
            self.ledger.end(event.id, outcome)

    async def converse(self, event: SimulationEvent, source: Source, claim: Claim) -> Summary:
        """The conversation's LLM work, in its slot (the slot is free again when it ends)."""
        try:
            await self.progress.report(
                event.batch_id, "consumed", event.id, batch_size=event.batch_size
            )
            return await self.engine.run(
                event, claim.state, self.checkpointer(event, source, claim.state)
            )
        finally:
            if self.slots is not None:
                self.slots.leave()

    def checkpointer(
        self, event: SimulationEvent, source: Source, resumed: ConversationState | None
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
            row = running_row(source.partition, source.offset, data)
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

    async def finish(self, event: SimulationEvent, summary: Summary, source: Source) -> str:
        """Deliver the summary, keep the durable record, report progress; the outcome."""
        payload = summary.model_dump(mode="json", exclude_none=True)
        metrics.conversation_duration_seconds.observe(summary.duration_ms / 1000)
        metrics.iterations_per_conversation.observe(summary.total_iterations)
        delivery = await self.sender.deliver(event.callback_url, event.id, payload)
        metrics.callback_attempts.inc(delivery.attempts)
        await self.send_result(
            event.id.encode(),
            {
                **payload,
                "delivered": delivery.ok,
                "callback_attempts": delivery.attempts,
                "max_iterations": event.max_iterations,  # for estimates (commands/estimate.py)
            },
        )
        if not delivery.ok:
            return await self.undeliverable(event, summary, payload, delivery, source)
        metrics.callback_deliveries.inc()
        failed = summary.end_reason in FAILED_END_REASONS
        counter = metrics.conversations_failed if failed else metrics.conversations_completed
        counter.labels(summary.end_reason).inc()
        await self.progress.report(
            event.batch_id,
            "failed" if failed else "completed",
            event.id,
            reason=summary.end_reason,
            batch_size=event.batch_size,
            duration_ms=summary.duration_ms,
        )
        log_outcome(
            event.id,
            "delivered",
            end_reason=summary.end_reason,
            iterations=summary.total_iterations,
            duration_ms=summary.duration_ms,
            llm_calls=summary.usage.llm_calls,
            attempts=delivery.attempts,
            error=summary.error,
            judged=None if summary.evaluation is None else summary.evaluation.passed,
        )
        return summary.end_reason

    async def undeliverable(
        self,
        event: SimulationEvent,
        summary: Summary,
        payload: dict[str, Any],
        delivery: Delivery,
        source: Source,
    ) -> str:
        metrics.callback_failures.inc()
        metrics.conversations_failed.labels("callback_failed").inc()
        await self.dead_letters.write(
            "callback_failed",
            delivery.error or "undeliverable",
            source,
            event.id,
            summary=payload,
            callback_url=event.callback_url,
            batch_id=event.batch_id,
        )
        log_outcome(
            event.id,
            "dead_lettered",
            reason="callback_failed",
            error=delivery.error,
            attempts=delivery.attempts,
        )
        await self.progress.report(
            event.batch_id,
            "failed",
            event.id,
            reason="callback_failed",
            batch_size=event.batch_size,
            duration_ms=summary.duration_ms,
        )
        return "callback_failed"
