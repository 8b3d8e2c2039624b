"""What one worker does with one simulation event, from raw bytes to a delivered summary.

Kept out of the agent so the agent stays a thin Faust loop: decode -> (dead-letter | run the
conversation -> POST the summary -> record the result) and never raise, so one bad event cannot
stop the stream. Heavy components (LiteLLM import, HTTP session) are built on first use inside
the worker's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from simapp import metrics
from simapp.callbacks import CallbackSender
from simapp.config import Settings
from simapp.conversation import (
    END_LLM_ERROR,
    END_LLM_UNAVAILABLE,
    ConversationEngine,
    ConversationState,
)
from simapp.logs import log_outcome
from simapp.schemas import Rejection, SimulationEvent, Summary
from simapp.urlpolicy import CallbackPolicy

log = logging.getLogger(__name__)

FAILED_END_REASONS = frozenset({END_LLM_ERROR, END_LLM_UNAVAILABLE})
DLQ_ORIGINAL_LIMIT = 256 * 1024  # bytes of the original event kept in a dead letter
FINISHED_MEMORY = 20_000  # finished runs a worker remembers (~280 bytes each, ~6 MB)


def load_engine_class(path: str) -> type[ConversationEngine]:
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, ConversationEngine)):
        raise TypeError(f"ENGINE_CLASS {path} is not a ConversationEngine subclass")
    return cls


def encode_original(raw: bytes | None) -> dict[str, Any]:
    """The original event bytes for a dead letter: text when UTF-8, else base64; capped."""
    if raw is None:
        return {"encoding": "none", "value": None, "size": 0}
    size = len(raw)
    kept = raw[:DLQ_ORIGINAL_LIMIT]
    try:
        value, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return {"encoding": encoding, "value": value, "size": size, "truncated": size > len(kept)}


class Runtime:
    """Per-worker components and the event handling path."""

    def __init__(self, settings: Settings, app: Any, topics: Any) -> None:
        from simapp.schemas import EventDecoder

        self.settings = settings
        self.app = app
        self.topics = topics
        self.decoder = EventDecoder(settings)
        self.policy = CallbackPolicy(settings.callback_allowed_hosts)
        self._started = False
        self._start_lock = asyncio.Lock()
        # simulation id -> ({partition, offset}, future done when that run ends)
        self.running: dict[str, tuple[dict, asyncio.Future]] = {}
        # simulation id -> ((partition, offset), outcome) of runs finished here (newest last)
        self.finished: OrderedDict[str, tuple[tuple[int, int], str]] = OrderedDict()
        self.budgets: Any = None
        self.breaker: Any = None
        self.llm: Any = None
        self.engine: ConversationEngine | None = None
        self.sender: CallbackSender | None = None
        self.simulations: Any = None  # the simulations table (set by tables/simulations.py)
        # checkpoint-topic offsets applied to the table, and partitions known caught up
        self.checkpoints_applied: dict[int, int] = {}
        self._caught_up: set[int] = set()  # non-empty once caught up since the last assignment

    # ----- start-up ---------------------------------------------------------------------
    async def ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            self._build()
            self._started = True

    def _build(self) -> None:
        from simapp.breaker import AsyncCircuitBreaker
        from simapp.llm_client import LLMClient, is_breaker_failure

        s = self.settings
        llm_metrics = metrics.LLMMetrics()
        if self.budgets is None:
            self.budgets = self.new_budgets()
        backend = s.llm_backend_url or "provider-default"
        self.breaker = AsyncCircuitBreaker(
            backend,
            fail_max=s.breaker_fail_max,
            reset_timeout=s.breaker_reset_timeout,
            wait_when_open=True,
            exclude=lambda exc: not is_breaker_failure(exc),
        )
        self.breaker.add_listener(lambda old, new: llm_metrics.breaker_state(backend, new))
        llm_metrics.breaker_state(backend, "closed")
        self.llm = LLMClient(s, self.budgets, self.breaker, llm_metrics)
        engine_cls = load_engine_class(s.engine_class)
        self.engine = engine_cls(
            self.llm,
            max_iterations_cap=s.max_iterations,
            timeout=s.conversation_timeout,
            user_model=s.user_simulator_model,
        )
        # Lives as long as the worker: closing it at shutdown while conversations past the
        # grace period can still finish would turn our own shutdown into callback failures.
        self.sender = CallbackSender(
            timeout=s.callback_timeout,
            attempts=s.callback_retry_attempts,
            deadline=s.callback_deadline,
            policy=self.policy,
        )

    def new_budgets(self) -> Any:
        from simapp.ratelimit import RateBudgets

        s = self.settings
        rps = s.llm_global_rate_limit_rps or s.llm_rate_limit_rps
        return RateBudgets(
            rps,
            per_model_rps=s.llm_model_rate_limits or None,
            tpm=s.llm_tpm_limit,
            share=1.0,
            safety_margin=s.llm_rate_safety_margin,
        )

    # ----- rebalance: share of a global budget ------------------------------------------
    def on_assignment(self, assigned_event_partitions: int) -> None:
        """With a global budget, this worker's share is its part of the event partitions."""
        self._caught_up.clear()
        if self.budgets is None:
            self.budgets = self.new_budgets()
        if self.settings.llm_global_rate_limit_rps:
            share = assigned_event_partitions / self.settings.kafka_partitions
            self.budgets.set_share(share)
            log.info(
                "rate budget share %.3f (%d/%d partitions) of global %.1f rps",
                share,
                assigned_event_partitions,
                self.settings.kafka_partitions,
                self.settings.llm_global_rate_limit_rps,
            )

    async def checkpoints_caught_up(self, limit: float = 5.0) -> None:
        """Wait, once per assignment, until the checkpoint agent has applied everything already
        in the checkpoint partitions we own, so a redelivered event sees whether its simulation
        was finished or where it stopped, instead of a stale table row."""
        if self._caught_up or self.simulations is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        consumer = self.app.consumer
        topic = self.settings.checkpoint_topic
        pending = {tp for tp in consumer.assignment() if tp.topic == topic}
        while pending and loop.time() < deadline:
            for tp in list(pending):
                try:
                    highwater = consumer.highwater(tp)
                except Exception:  # not fetched yet
                    highwater = None
                if highwater is not None and highwater >= 0:
                    if self.checkpoints_applied.get(tp.partition, -1) + 1 >= highwater:
                        pending.discard(tp)
            if pending:
                await asyncio.sleep(0.05)
        if pending:
            log.warning("checkpoint partitions %s not caught up after %.0fs", pending, limit)
        self._caught_up.add(1)

    def on_revoke(self) -> None:
        """During a rebalance hold our share at zero until the new assignment is known."""
        if self.budgets is not None and self.settings.llm_global_rate_limit_rps:
            self.budgets.set_share(0.0)

    # ----- the path of one event --------------------------------------------------------
    async def handle(
        self, raw: bytes | None, topic: str, partition: int, offset: int, key: bytes | None = None
    ) -> str:
        """Process one event to its end; returns the outcome. Never raises (except cancel)."""
        metrics.kafka_messages_consumed.inc()
        source = {"topic": topic, "partition": partition, "offset": offset}
        decoded = self.decoder.decode(raw)
        if isinstance(decoded, Rejection):
            await self.reject(decoded, raw, source)
            return "rejected"
        if key != decoded.id.encode():
            # Repartition: the simulations table is keyed by simulation id, so the event must
            # live on the partition of its id. Re-send it keyed by id; this copy is done.
            await self.topics.events.send(key=decoded.id.encode(), value=raw)
            log_outcome(decoded.id, "rekeyed", partition=partition, offset=offset)
            return "rekeyed"
        try:
            await self.ensure_started()
            return await self.simulate(decoded, source)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our bug: do not lose the event, dead-letter it with the reason
            log.exception("simulation %s crashed", decoded.id)
            await self.dead_letter(
                "internal_error",
                f"{type(exc).__name__}: {exc}"[:500],
                source,
                decoded.id,
                original=raw,
                batch_id=decoded.batch_id,
            )
            metrics.conversations_failed.labels("internal_error").inc()
            return "internal_error"

    async def reject(self, rejection: Rejection, raw: bytes | None, source: dict) -> None:
        metrics.conversations_failed.labels(rejection.reason).inc()
        log_outcome(
            rejection.simulation_id,
            "rejected",
            reason=rejection.reason,
            detail=rejection.detail,
            partition=source["partition"],
            offset=source["offset"],
        )
        await self.dead_letter(
            rejection.reason,
            rejection.detail,
            source,
            rejection.simulation_id,
            original=raw,
            batch_id=rejection.batch_id,
        )
        if rejection.batch_id and rejection.simulation_id:
            await self.progress(
                rejection.batch_id, "failed", rejection.simulation_id, reason=rejection.reason
            )

    async def progress(
        self,
        batch_id: str,
        kind: str,
        simulation_id: str,
        *,
        reason: str | None = None,
        batch_size: int | None = None,
        duration_ms: int | None = None,
    ) -> None:
        """Tell the progress agent (owner of the batch's row) what happened; keyed by batch."""
        value = {
            "batch_id": batch_id,
            "kind": kind,
            "simulation_id": simulation_id,
            "reason": reason,
            "batch_size": batch_size,
            "duration_ms": duration_ms,
            "at": time.time(),
        }
        await self.topics.progress.send(key=batch_id.encode(), value=json.dumps(value).encode())

    async def duplicate(self, event: SimulationEvent, source: dict, first: dict) -> str:
        """The same simulation id arrived again at another offset: report, do not simulate."""
        where = f"first seen at partition {first.get('partition')} offset {first.get('offset')}"
        metrics.conversations_failed.labels("duplicate_id").inc()
        log_outcome(
            event.id,
            "rejected",
            reason="duplicate_id",
            detail=where,
            partition=source["partition"],
            offset=source["offset"],
        )
        await self.dead_letter(
            "duplicate_id",
            f"simulation id already used ({where})",
            source,
            event.id,
            original=event.model_dump_json().encode(),
            batch_id=event.batch_id,
        )
        return "duplicate_id"

    async def simulate(self, event: SimulationEvent, source: dict) -> str:
        same_offset = {"partition": source["partition"], "offset": source["offset"]}
        running = self.running.get(event.id)
        if running is not None:
            origin, future = running
            if origin != same_offset:
                return await self.duplicate(event, source, origin)
            # A redelivery (rebalance) of an event still running here: wait, do not re-run.
            await asyncio.shield(future)
            log_outcome(event.id, "skipped_running", reason="redelivered while running here")
            return "skipped_running"
        finished = self.finished.get(event.id)
        if finished is not None and finished[0] == (source["partition"], source["offset"]):
            # Finished here and redelivered (a rebalance seeks back to the last commit): the
            # table may not show "done" yet, the checkpoint agent applies it asynchronously.
            log_outcome(event.id, "skipped_done", previous=finished[1], where="this worker")
            return "skipped_done"
        await self.checkpoints_caught_up()
        row = self.simulations.get(event.id) if self.simulations is not None else None
        state: ConversationState | None = None
        if row is not None:
            if row.get("partition") != source["partition"] or row.get("offset") != source["offset"]:
                return await self.duplicate(event, source, row)
            if row.get("status") == "done":
                log_outcome(event.id, "skipped_done", previous=row.get("outcome"))
                return "skipped_done"
            if row.get("state"):
                state = ConversationState.from_dict(row["state"])
                log_outcome(
                    event.id,
                    "resumed",
                    iterations=state.iterations,
                    llm_calls=state.usage.llm_calls,
                )
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.running[event.id] = (same_offset, done)
        metrics.conversations_active.inc()
        await self.progress(event.batch_id, "consumed", event.id, batch_size=event.batch_size)
        try:
            assert self.engine is not None
            summary = await self.engine.run(event, state, self.checkpointer(event, source, state))
            outcome = await self.finish(event, summary, source)
            await self.checkpoint(event.id, source, "done", outcome=outcome)
            self.remember_finished(event.id, (source["partition"], source["offset"]), outcome)
            return outcome
        finally:
            metrics.conversations_active.dec()
            self.running.pop(event.id, None)
            done.set_result(None)

    def remember_finished(self, simulation_id: str, where: tuple[int, int], outcome: str) -> None:
        """Keep the newest FINISHED_MEMORY finished runs: a redelivery after a seek back comes
        from the events since the last commit (seconds of work), far fewer than that."""
        self.finished[simulation_id] = (where, outcome)
        self.finished.move_to_end(simulation_id)
        while len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)

    def checkpointer(
        self, event: SimulationEvent, source: dict, resumed: ConversationState | None
    ) -> Any:
        """A per-conversation callback that checkpoints after every turn (CHECKPOINT_TURNS)."""
        if not self.settings.checkpoint_turns:
            return None
        base_ms = resumed.elapsed_ms if resumed is not None else 0
        started = time.monotonic()

        async def checkpoint(state: ConversationState) -> None:
            data = state.to_dict()
            data["elapsed_ms"] = base_ms + int((time.monotonic() - started) * 1000)
            await self.checkpoint(event.id, source, "running", state=data)

        return checkpoint

    async def checkpoint(
        self,
        simulation_id: str,
        source: dict,
        status: str,
        *,
        state: dict | None = None,
        outcome: str | None = None,
    ) -> None:
        sent = await self.topics.checkpoints.send(
            key=simulation_id.encode(),
            value={
                "id": simulation_id,
                "status": status,
                "partition": source["partition"],
                "offset": source["offset"],
                "state": state,
                "outcome": outcome,
            },
        )
        if status == "done":
            # Wait for the broker's ack: once the event is acked, only this record tells a
            # redelivery (after a crash) that the summary already went out.
            await sent

    async def finish(self, event: SimulationEvent, summary: Summary, source: dict) -> str:
        payload = summary.model_dump(mode="json", exclude_none=True)
        metrics.conversation_duration_seconds.observe(summary.duration_ms / 1000)
        metrics.iterations_per_conversation.observe(summary.total_iterations)
        assert self.sender is not None
        delivery = await self.sender.deliver(event.callback_url, event.id, payload)
        metrics.callback_attempts.inc(delivery.attempts)
        await self.topics.results.send(
            key=event.id.encode(),
            value={**payload, "delivered": delivery.ok, "callback_attempts": delivery.attempts},
        )
        if not delivery.ok:
            metrics.callback_failures.inc()
            metrics.conversations_failed.labels("callback_failed").inc()
            await self.dead_letter(
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
            await self.progress(
                event.batch_id,
                "failed",
                event.id,
                reason="callback_failed",
                batch_size=event.batch_size,
                duration_ms=summary.duration_ms,
            )
            return "callback_failed"
        metrics.callback_deliveries.inc()
        failed = summary.end_reason in FAILED_END_REASONS
        if failed:
            metrics.conversations_failed.labels(summary.end_reason).inc()
        else:
            metrics.conversations_completed.labels(summary.end_reason).inc()
        await self.progress(
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
        )
        return summary.end_reason

    async def dead_letter(
        self,
        reason: str,
        detail: str,
        source: dict,
        simulation_id: str | None,
        *,
        original: bytes | None = None,
        summary: dict | None = None,
        callback_url: str | None = None,
        batch_id: str | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "reason": reason,
            "detail": detail,
            "simulation_id": simulation_id,
            "batch_id": batch_id,
            "source": source,
            "timestamp": datetime.now(UTC).isoformat(),
            "failed_at": time.time(),
        }
        if summary is not None:
            record["summary"] = summary
            record["callback_url"] = callback_url
        else:
            record["original"] = encode_original(original)
        metrics.dead_letters.labels(reason).inc()
        key = simulation_id or f"{source['topic']}-{source['partition']}-{source['offset']}"
        await self.topics.dlq.send(key=key.encode(), value=record)
