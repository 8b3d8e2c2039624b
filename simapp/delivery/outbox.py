"""Summaries on their way to their receivers: the results topic is the outbox.

A summary is durable on the results topic, and its simulation's row says done, before its
event is committed (simapp/simulation/pipeline.py). The deliver agent (agents/deliver.py)
hands each record of the results topic here, and acks it only once its outcome is durable:
delivered (and counted), or dead-lettered. So a slow or absent receiver holds no conversation
slot, and a crash redelivers the summary from the results topic.

Per receiver (scheme, host and port of the callback URL): a circuit breaker, so that after
CALLBACK_BREAKER_FAIL_MAX consecutive failures its summaries wait for it (one probe every
CALLBACK_BREAKER_RESET seconds, and when a probe gets through, all resume), and a leaky bucket
(aiolimiter) pacing its POSTs at CALLBACK_HOST_RPS, so the resume after an outage is paced
too, not a retry storm. A summary waits out its receiver for CALLBACK_MAX_WAIT from the moment
it became durable; then, or at once for an answer that retrying cannot change (a 4xx, a
refused redirect), it becomes a `callback_failed` dead letter that `dlq replay` re-sends.
Every attempt POSTs the same bytes with the same Idempotency-Key.

A simulation's final progress message carries the compact facts of its record (persona,
models, usage, the judge's verdicts; simapp/observe/report.py) for the batch report. A *batch
record* (`"kind": "batch"`, written by the progress agent when a batch with a
batch_callback_url finished, keyed by batch id) is delivered the same way, with the batch id
as Idempotency-Key; it sends no progress message, and a repeat of a batch this process already
delivered is dropped (the progress agent can write it twice when a worker dies in the few
milliseconds between the record's ack and its report row's "sent" mark).

Memory: the outbox holds at most CALLBACK_PENDING_BYTES of summaries; past it the deliver
agent reads no more records until some are settled. When Faust stops the flow of events (a
rebalance, a shutdown), summaries not being POSTed at that moment are handed back unsettled:
the committer keeps their offsets, and their partition's next owner delivers them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiolimiter import AsyncLimiter

from simapp.delivery.callbacks import Attempt, CallbackSender, encode_summary, retry_delay
from simapp.delivery.dead_letters import DeadLetters, Source
from simapp.limits.breaker import AsyncCircuitBreaker, BreakerOpen
from simapp.observe import metrics
from simapp.observe.logs import log_outcome
from simapp.observe.progress import ProgressReporter
from simapp.observe.report import simulation_facts

log = logging.getLogger(__name__)

MAX_RECEIVERS = 1_000  # receivers whose breaker and pace are kept (idle ones are forgotten)
BATCHES_REMEMBERED = 10_000  # batch ids whose report this process delivered (repeats dropped)
WAITING_SHOWN = 20  # receivers listed in `waiting()` (the most summaries first)

Settle = Callable[[bool], None]  # True: the outcome is durable; False: hand the record back


class ReceiverFailed(Exception):
    """A POST the receiver did not take (for its breaker)."""


@dataclass(eq=False, slots=True)
class Job:
    """One summary being delivered."""

    simulation_id: str  # the batch id for a batch record (its Idempotency-Key)
    url: str
    body: bytes
    record: dict[str, Any]
    source: Source
    receiver: str
    size: int
    deadline: float  # time.time() after which it is a dead letter
    settle: Settle
    attempts: int = 0
    failed_once: bool = False
    posting: bool = False
    task: asyncio.Task[None] | None = None


class Receiver:
    """A callback receiver's breaker and pace, and its summaries in the outbox."""

    __slots__ = ("breaker", "failing", "name", "pace", "pending")

    def __init__(self, name: str, rps: float, fail_max: int, reset: float) -> None:
        self.name = name
        self.breaker = AsyncCircuitBreaker(
            f"callback:{name}", fail_max=fail_max, reset_timeout=reset
        )
        self.pace = AsyncLimiter(rps, 1.0)
        self.pending = 0  # summaries in the outbox for this receiver
        self.failing = 0  # of them, those that failed at least once

    @property
    def waiting(self) -> int:
        """Summaries that wait for this receiver (all, while its breaker is not closed)."""
        return self.pending if self.breaker.state != "closed" else self.failing


def receiver_of(url: str) -> str:
    """scheme://host:port of a callback URL: what one breaker and one pace are for."""
    parts = urlsplit(url)
    scheme = (parts.scheme or "http").lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = 0
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


class Outbox:
    """Delivers the results topic's summaries; one per worker, used from its event loop."""

    def __init__(
        self,
        sender: CallbackSender,
        dead_letters: DeadLetters,
        progress: ProgressReporter,
        *,
        max_wait: float,
        host_rps: float,
        fail_max: int,
        reset: float,
        pending_bytes: int,
    ) -> None:
        self.sender = sender
        self.dead_letters = dead_letters
        self.progress = progress
        self.max_wait = max_wait
        self.host_rps = host_rps
        self.fail_max = fail_max
        self.reset = reset
        self.pending_bytes = pending_bytes
        self.held = 0  # bytes of the summaries in the outbox
        self.jobs: set[Job] = set()
        self._receivers: OrderedDict[str, Receiver] = OrderedDict()
        self._batches_delivered: OrderedDict[str, None] = OrderedDict()
        self._room = asyncio.Event()
        self._open = True

    # -- taking records ------------------------------------------------------------------

    async def put(self, value: bytes | None, source: Source, settle: Settle) -> None:
        """Start delivering one results record (it is settled later, from its own task);
        waits while the outbox holds CALLBACK_PENDING_BYTES."""
        record = parse_record(value)
        if record is None:
            await self._invalid(value, source, settle)
            return
        if record.get("delivered") is not None:  # written by a version that delivered first
            settle(True)
            return
        if is_batch(record) and record["batch"] in self._batches_delivered:
            log.info("batch report of %s already delivered by this worker", record["batch"])
            settle(True)
            return
        size = len(value or b"")
        while self._open and self.jobs and self.held + size > self.pending_bytes:
            self._room.clear()
            await self._room.wait()
        if not self._open:
            settle(False)
            return
        summary = record["summary"]
        now = time.time()
        started = min(float(record.get("summarized_at") or now), now)
        key = record["batch"] if is_batch(record) else summary["simulation_id"]
        job = Job(
            simulation_id=str(key),
            url=record["callback_url"],
            body=encode_summary(summary),
            record=record,
            source=source,
            receiver=receiver_of(record["callback_url"]),
            size=size,
            deadline=started + self.max_wait,
            settle=settle,
        )
        self.held += size
        self.jobs.add(job)
        self.receiver(job.receiver).pending += 1
        job.task = asyncio.create_task(self._run(job), name=f"deliver {job.simulation_id}")

    async def _invalid(self, value: bytes | None, source: Source, settle: Settle) -> None:
        """A record that is not a summary (something else wrote to the results topic)."""
        log.error(
            "results record at %s[%s]@%s is not a summary; dead-lettered",
            source.topic, source.partition, source.offset,
        )  # fmt: skip
        try:
            await self.dead_letters.write(
                "invalid_result",
                "a record on the results topic that is not a simapp summary",
                source,
                None,
                original=value,
            )
        except Exception:
            log.exception("could not dead-letter the record; it comes back")
            settle(False)
            return
        settle(True)

    # -- one summary ---------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        ok = False
        try:
            delivered, error = await self._deliver(job)
            if delivered:
                await self._delivered(job)
            else:
                await self._dead(job, error)
            ok = True
        except asyncio.CancelledError:
            pass  # the flow stopped: handed back (settled False)
        except Exception:
            log.exception("delivery of %s failed; it comes back", job.simulation_id)
        finally:
            self._forget(job)
            job.settle(ok)

    async def _deliver(self, job: Job) -> tuple[bool, str]:
        """(True, "") once the receiver took it; (False, why) when it never will, or not
        within CALLBACK_MAX_WAIT."""
        receiver = self.receiver(job.receiver)
        error = "not attempted"
        while True:
            remaining = job.deadline - time.time()
            if remaining <= 0:
                return False, f"{error}; not taken within CALLBACK_MAX_WAIT={self.max_wait:g}s"
            try:
                async with asyncio.timeout(remaining):
                    await receiver.breaker.ready()
                    await receiver.pace.acquire()
            except TimeoutError:
                continue
            try:
                ticket = receiver.breaker.admit()
            except BreakerOpen:
                continue
            result = await self._post(job, ticket, receiver)
            if result.ok:
                return True, ""
            error = result.error or "refused"
            if result.final:
                return False, error
            if not job.failed_once:
                job.failed_once = True
                receiver.failing += 1
            # The breaker paces a receiver that keeps failing (one probe per reset interval):
            # a summary's own backoff stays below it, unless the receiver asked for longer.
            delay = retry_delay(result, job.attempts)
            if result.retry_after is None:
                delay = min(delay, self.reset)
            await asyncio.sleep(min(delay, max(0.0, job.deadline - time.time())))

    async def _post(self, job: Job, ticket: Any, receiver: Receiver) -> Attempt:
        job.posting = True
        try:
            result = await self.sender.attempt(job.url, job.simulation_id, job.body)
        except BaseException as exc:
            receiver.breaker.record(ticket, exc)
            raise
        finally:
            job.posting = False
        job.attempts += 1
        metrics.callback_attempts.inc()
        taken = result.ok or result.final  # a final answer is the receiver answering
        receiver.breaker.record(ticket, None if taken else ReceiverFailed(result.error))
        return result

    async def _delivered(self, job: Job) -> None:
        record, summary = job.record, job.record["summary"]
        if is_batch(record):
            self._batch_done(job.simulation_id)
            metrics.callback_deliveries.inc()
            log.info("batch report of %s delivered (%d attempts)", job.simulation_id, job.attempts)
            return
        failed = bool(record.get("failed"))
        end_reason = str(summary.get("end_reason"))
        await self.progress.report(
            str(record.get("batch_id") or summary.get("batch_id") or "default"),
            "failed" if failed else "completed",
            job.simulation_id,
            reason=end_reason,
            batch_size=record.get("batch_size"),
            duration_ms=summary.get("duration_ms"),
            facts=simulation_facts(record, job.source.partition, job.source.offset, dead=False),
        )
        metrics.callback_deliveries.inc()
        counter = metrics.conversations_failed if failed else metrics.conversations_completed
        counter.labels(end_reason).inc()
        evaluation = summary.get("evaluation") or {}
        log_outcome(
            job.simulation_id,
            "delivered",
            end_reason=end_reason,
            iterations=summary.get("total_iterations"),
            duration_ms=summary.get("duration_ms"),
            llm_calls=(summary.get("usage") or {}).get("llm_calls"),
            attempts=job.attempts,
            error=summary.get("error"),
            judged=evaluation.get("passed"),
        )

    async def _dead(self, job: Job, error: str) -> None:
        record, summary = job.record, job.record["summary"]
        if is_batch(record):
            await self.dead_letters.write(
                "callback_failed",
                f"batch report: {error}",
                job.source,
                None,
                summary=summary,
                callback_url=job.url,
                batch_id=job.simulation_id,
            )
            self._batch_done(job.simulation_id)
            metrics.callback_failures.inc()
            log.warning("batch report of %s dead-lettered: %s", job.simulation_id, error)
            return
        batch_id = str(record.get("batch_id") or summary.get("batch_id") or "default")
        await self.dead_letters.write(
            "callback_failed",
            error,
            job.source,
            job.simulation_id,
            summary=summary,
            callback_url=job.url,
            batch_id=batch_id,
        )
        await self.progress.report(
            batch_id,
            "failed",
            job.simulation_id,
            reason="callback_failed",
            batch_size=record.get("batch_size"),
            duration_ms=summary.get("duration_ms"),
            facts=simulation_facts(record, job.source.partition, job.source.offset, dead=True),
        )
        metrics.callback_failures.inc()
        metrics.conversations_failed.labels("callback_failed").inc()
        log_outcome(
            job.simulation_id,
            "dead_lettered",
            reason="callback_failed",
            error=error,
            attempts=job.attempts,
        )

    def _batch_done(self, batch_id: str) -> None:
        self._batches_delivered[batch_id] = None
        while len(self._batches_delivered) > BATCHES_REMEMBERED:
            self._batches_delivered.popitem(last=False)

    def _forget(self, job: Job) -> None:
        if job not in self.jobs:
            return
        self.jobs.discard(job)
        self.held -= job.size
        receiver = self._receivers.get(job.receiver)
        if receiver is not None:
            receiver.pending -= 1
            if job.failed_once:
                receiver.failing -= 1
        self._room.set()

    # -- receivers -----------------------------------------------------------------------

    def receiver(self, name: str) -> Receiver:
        receiver = self._receivers.get(name)
        if receiver is None:
            receiver = Receiver(name, self.host_rps, self.fail_max, self.reset)
            self._receivers[name] = receiver
            self._trim()
        self._receivers.move_to_end(name)
        return receiver

    def _trim(self) -> None:
        """Forget the least recently used receivers that have nothing in the outbox."""
        if len(self._receivers) <= MAX_RECEIVERS:
            return
        for name in list(self._receivers):
            if len(self._receivers) <= MAX_RECEIVERS:
                break
            if self._receivers[name].pending == 0:
                del self._receivers[name]

    def waiting(self) -> dict[str, int]:
        """Summaries waiting for their receiver, by receiver (the most first, at most
        WAITING_SHOWN; the rest summed under "other")."""
        counts = sorted(
            ((r.waiting, name) for name, r in self._receivers.items() if r.waiting),
            reverse=True,
        )
        shown = {name: n for n, name in counts[:WAITING_SHOWN]}
        rest = sum(n for n, _ in counts[WAITING_SHOWN:])
        if rest:
            shown["other"] = rest
        return shown

    # -- the flow of events --------------------------------------------------------------

    def on_flow(self, active: bool) -> None:
        """Faust stopped (False) or resumed (True) the flow: hand back what is not being
        POSTed right now, so revoked partitions are free at once."""
        self._open = active
        self._room.set()
        if active:
            return
        for job in list(self.jobs):
            if not job.posting and job.task is not None:
                job.task.cancel()


def is_batch(record: dict[str, Any]) -> bool:
    """A batch record (the report of a finished batch for its batch_callback_url)."""
    return record.get("kind") == "batch"


def parse_record(value: bytes | None) -> dict[str, Any] | None:
    """A results record: {"summary": {...simulation_id...}, "callback_url": str, ...}, or a
    batch record {"kind": "batch", "batch": id, "summary": {...}, "callback_url": str}; a
    record written before the outbox (the summary's fields at the top, "delivered" set) is
    returned as it is. None for anything else."""
    try:
        record = json.loads(value or b"")
    except (TypeError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("delivered") is not None:
        return record
    summary = record.get("summary")
    if is_batch(record):
        if not (isinstance(record.get("batch"), str) and isinstance(summary, dict)):
            return None
    elif not (isinstance(summary, dict) and isinstance(summary.get("simulation_id"), str)):
        return None
    if not isinstance(record.get("callback_url"), str):
        return None
    return record
