"""A Faust consumer whose commit can never pass an offset that was not processed.

faust-streaming commits the end of the first run of consecutive acked offsets, which passes an
event still in flight when agent concurrency > 1 (faust-streaming #606). And Faust can lose
records it fetched without a word: recovery's `flow_control.resume()` clears the agent queues
right after `perform_seek`, the drain loop drops records below a stale read offset after a
revoke, a stream skips records of an old generation (docs/reliability.md has the traces).

So per source partition (a topic an agent acks) we keep a ledger and commit only what it
proves finished: from the position the last seek set (the committed offset), every offset is
in exactly one state until it is finished: fetched and queued for an actor, taken by an actor
and in flight, or done (acked). The commit is the first offset that is not done. An offset
that is in none of the states while later ones were fetched is a gap: it was fetched and lost
before any actor took it. The commit holds below it, it is logged at WARNING and counted
(`kafka_offset_gaps_total`), and the partition is seeked back to it, so it is fetched again;
the ledger drops the re-fetched records it already has. An offset that stays missing after
MAX_REDELIVERIES seeks is not a record (a transaction marker, a compacted key) and is passed.
Faust's own read offsets are switched off: the ledger does their de-duplication.

Also here: commit before partitions are revoked (Faust clears the acked offsets first,
faust-streaming #502), and a shutdown or revoke waits for in-flight events at most its grace
(SHUTDOWN_GRACE_SECONDS; a fraction of the rebalance timeout), then leaves them unacked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from weakref import WeakSet

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from simapp.observe import metrics

log = logging.getLogger(__name__)

REDELIVERY_WAIT = 3.0  # seconds a seek back gets to bring the missing offset before the next
MAX_REDELIVERIES = 3  # seeks after which a missing offset is taken for a non-record


class PartitionLedger:
    """Where every offset of one source partition stands, from the commit floor on."""

    __slots__ = ("tp", "base", "queued", "inflight", "done", "fetched_to", "seeked_at", "seeks")

    def __init__(self, tp: TP) -> None:
        self.tp = tp
        self.base: int | None = None  # every offset below it finished (or is not a record)
        self.queued: set[int] = set()  # fetched, not yet taken by an actor
        self.inflight: dict[int, Message] = {}  # taken by an actor, not finished
        self.done: set[int] = set()  # finished, at or above base
        self.fetched_to = 0  # highest offset fetched + 1
        self.seeked_at: float | None = None  # loop time of the last seek back to base
        self.seeks = 0  # seeks back to the current base

    def admit(self, offset: int) -> bool:
        """A fetched record: True if it is new, False for one the ledger already has."""
        if self.base is None:
            self.base = offset  # nothing committed: fetching starts at the log's start
        if offset < self.base or offset in self.done or offset in self.inflight:
            return False
        self.fetched_to = max(self.fetched_to, offset + 1)
        if offset in self.queued:
            return False
        self.queued.add(offset)
        return True

    def take(self, message: Message) -> None:
        self.queued.discard(message.offset)
        if not message.acked:
            self.inflight[message.offset] = message
        elif self.base is not None and message.offset >= self.base:
            self.done.add(message.offset)

    def abandon(self, offset: int) -> None:
        """An actor stopped working on it (cancelled): Faust acks such a message anyway (its
        stream's `finally`), so it leaves the ledger unfinished and is fetched again."""
        self.inflight.pop(offset, None)

    def settle(self) -> int | None:
        """Move finished messages to done and the floor over them; the commit offset."""
        if self.base is None:
            return None
        for offset in [o for o, m in self.inflight.items() if m.acked]:
            del self.inflight[offset]
            if offset >= self.base:
                self.done.add(offset)
        moved = False
        while self.base in self.done:
            self.done.discard(self.base)
            self.base += 1
            moved = True
        if moved:
            self.seeks, self.seeked_at = 0, None
        return self.base

    def reset(self, committed: int | None) -> None:
        """After a seek to the committed offset: what was queued is gone (Faust clears the
        queues next); what is in flight goes on. Without a commit the floor stays where the
        first fetched record put it."""
        self.queued.clear()
        if committed is not None and committed >= 0:
            self.base = committed
            self.done = {o for o in self.done if o >= committed}
        self.seeks, self.seeked_at = 0, None

    def gap(self) -> int | None:
        """The floor's offset if it was fetched and lost (neither queued, in flight nor done)."""
        base = self.base
        if base is None or base >= self.fetched_to:
            return None
        if base in self.queued or base in self.inflight or base in self.done:
            return None
        return base


class _TrackingSet(WeakSet):
    """Faust's set of unacked messages, also telling us when a stream takes a message.

    Faust streams (Python and Cython) add a message to `consumer._unacked_messages` at the
    moment an agent actor takes it from its channel: that is "in flight" for us.
    """

    def __init__(self, on_add: Callable[[Message], None]) -> None:
        super().__init__()
        self._on_add = on_add

    def add(self, item: Message) -> None:
        super().add(item)
        self._on_add(item)


class _NoReadOffsets(dict):
    """Faust's per-partition read offsets, switched off: reads say "none", writes are
    dropped. The drain loop then hands every fetched record on, and the ledgers drop the
    ones they already have (a stale read offset silently dropped records before)."""

    def __getitem__(self, key: Any) -> None:
        return None

    def __setitem__(self, key: Any, value: Any) -> None:
        return None

    def __delitem__(self, key: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def pop(self, key: Any, default: Any = None) -> Any:
        return default


class SafeCommitConsumer(faust_aiokafka.Consumer):
    """aiokafka-driver Consumer with the ledger commit rule."""

    shutdown_grace: float = 30.0  # set from SHUTDOWN_GRACE_SECONDS by the app
    revoke_grace: float = 5.0  # must stay below the broker's rebalance timeout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ledgers: dict[TP, PartitionLedger] = {}
        self._grace: float | None = None
        self._read_offset = _NoReadOffsets()
        self._unacked_messages = _TrackingSet(self._on_take)

    # ----- the ledgers ------------------------------------------------------------------
    def _tracked(self, tp: TP) -> bool:
        return self.app.topics.acks_enabled_for(tp.topic)

    def _ledger(self, tp: TP) -> PartitionLedger | None:
        ledger = self._ledgers.get(tp)
        if ledger is None and self._tracked(tp):
            ledger = self._ledgers[tp] = PartitionLedger(tp)
        return ledger

    def _on_take(self, message: Message) -> None:
        ledger = self._ledger(message.tp)
        if ledger is not None:
            ledger.take(message)

    def abandon(self, message: Message) -> None:
        """The agent gave up on a message it took (its actor was cancelled mid-event): never
        count it done, whatever its ack says; it is redelivered (resuming its checkpoint)."""
        ledger = self._ledgers.get(message.tp)
        if ledger is not None:
            ledger.abandon(message.offset)

    def next_offset(self, tp: TP) -> int | None:
        """The offset after the last one fetched (for the consumer lag metric)."""
        ledger = self._ledgers.get(tp)
        return ledger.fetched_to if ledger is not None else None

    def on_queues_cleared(self) -> None:
        """Faust emptied the stream queues (flow control): what they held is lost."""
        for ledger in self._ledgers.values():
            ledger.queued.clear()

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 - Faust's signature
        async for tp, message in super().getmany(timeout):
            ledger = self._ledger(tp)
            if ledger is None or ledger.admit(message.offset):
                yield tp, message

    async def highwaters(self, *partitions: TP) -> Any:
        """End offsets for table recovery, checked against the broker's Fetch answer."""
        from simapp.kafka.recovery import verified_highwaters

        listed = await super().highwaters(*partitions)
        return await verified_highwaters(self.app.simapp_settings, listed)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets; each ledger restarts its floor there.

        aiokafka seeks only to a committed offset > 0: with none (None, or -1 from Tansu) or 0,
        a partition this worker had before keeps its fetch position, past the records its
        queues lost. Those partitions are seeked to their earliest offset, the floor of a
        partition nobody committed."""
        committed = await self.seek_to_committed()
        floors = {tp: o for tp, o in committed.items() if o is not None and o > 0}
        self._committed_offset.update(floors)
        unset = [tp for tp in committed if tp not in floors and self._tracked(tp)]
        if unset:
            earliest = await self.earliest_offsets(*unset)
            floors.update({tp: max(0, earliest.get(tp) or 0) for tp in unset})
            await self.seek_wait({tp: floors[tp] for tp in unset})
        for tp, offset in floors.items():
            ledger = self._ledger(tp)
            if ledger is not None:
                ledger.reset(offset)

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        ledger = self._ledgers.get(tp)
        new = ledger.settle() if ledger is not None else None
        if new is None:
            return None
        acked[:] = [o for o in acked if o >= new]  # Faust's list: forget what is committed
        self._acked_index[tp].intersection_update(acked)
        committed = self._committed_offset[tp]
        if committed is not None and new <= committed:
            return None
        return new

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if not self.app.rebalancing and self.flow_active:
            await self.redeliver_gaps()
        return await super().commit(topics, start_new_transaction=start_new_transaction)

    async def redeliver_gaps(self) -> None:
        """Seek each partition back to an offset that was fetched and lost."""
        loop = asyncio.get_running_loop()
        seeks: dict[TP, int] = {}
        for tp, ledger in self._ledgers.items():
            ledger.settle()
            offset = ledger.gap()
            if offset is None:
                continue
            now = loop.time()
            if ledger.seeked_at is not None and now - ledger.seeked_at < REDELIVERY_WAIT:
                continue
            if ledger.seeks >= MAX_REDELIVERIES:
                log.warning(
                    "offset %s of %s[%s] still missing after %d seeks back: not a record "
                    "(a transaction marker or a compacted key); committing past it",
                    offset, tp.topic, tp.partition, ledger.seeks,
                )  # fmt: skip
                assert ledger.base is not None
                ledger.base += 1
                ledger.seeks, ledger.seeked_at = 0, None
                continue
            if ledger.seeks == 0:
                metrics.kafka_offset_gaps.labels(tp.topic).inc()
                log.warning(
                    "offset gap: %s[%s] offset %s was fetched but never processed; holding "
                    "the commit below it and fetching it again",
                    tp.topic, tp.partition, offset,
                )  # fmt: skip
            ledger.seeks += 1
            ledger.seeked_at = now
            seeks[tp] = offset
        if seeks:
            try:
                await self.seek_wait(seeks)
            except Exception as exc:  # a failed seek is retried at the next commit
                log.warning("seek back to %s failed: %r", seeks, exc)

    async def _commit(self, offsets: Any) -> bool:
        try:
            ok = await super()._commit(offsets)
        except Exception:
            metrics.kafka_commits_failed.inc()
            raise
        (metrics.kafka_commits_succeeded if ok else metrics.kafka_commits_failed).inc()
        return ok

    # ----- rebalance and shutdown -------------------------------------------------------
    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Commit finished work while the ledgers still know it (faust-streaming #502).
        try:
            await self.commit(revoked)
        except Exception as exc:  # a failed commit means redelivery, never loss
            log.warning("commit before revoke failed: %r", exc)
        self._grace = self.revoke_grace
        try:
            await super().on_partitions_revoked(revoked)
        finally:
            self._grace = None
        self._forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._forget(tp for tp in list(self._ledgers) if tp not in assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    def _forget(self, tps: Iterable[TP]) -> None:
        for tp in list(tps):
            self._ledgers.pop(tp, None)

    async def wait_empty(self) -> None:
        """Wait for in-flight events, at most the grace period, then commit what is safe."""
        loop = asyncio.get_running_loop()
        grace = self._grace if self._grace is not None else self.shutdown_grace
        deadline = loop.time() + grace
        while not self.should_stop and self._unacked_messages and loop.time() < deadline:
            await self.commit()
            if not self._unacked_messages:
                break
            await self._wait_for_ack(timeout=1)
            self._clean_unacked_messages()
        if self._unacked_messages:
            log.warning(
                "grace period over: %d events still in flight are left unacked and will be "
                "redelivered",
                len(self._unacked_messages),
            )
        await self.commit_and_end_transactions()


class SafeCommitTransport(faust_aiokafka.Transport):
    """aiokafka transport whose consumer is SafeCommitConsumer."""

    Consumer = SafeCommitConsumer
