"""A Faust consumer whose commit can never pass an offset that was not processed.

faust-streaming commits the end of the first run of consecutive acked offsets, which passes an
event still in flight when agent concurrency > 1 (faust-streaming #606). And Faust can lose
records it fetched without a word: recovery's `flow_control.resume()` clears the agent queues
right after `perform_seek`, the drain loop drops records below a stale read offset after a
revoke, a stream skips records of an old generation (docs/reliability.md has the traces).

So per source partition (a topic an agent acks) we keep a ledger and commit only what it
proves finished: from the position the last seek set (the committed offset), every offset is
fetched and queued for an actor, taken by an actor and in flight, done (acked), or skipped:
not a record, on the broker's word. The commit is the first offset that is neither done nor
skipped.

Skipped: aiokafka's fetcher moves a partition's position past what it reads and does not hand
out (transaction markers, aborted or compacted records), and past records deleted below the
log start (simapp/kafka/witness.py, which watches the fetcher in Faust's consumer thread). So
when a fetch answer from offset `start` hands out its first record at a higher offset, every
offset in between is not a record, and so is every offset between two records of one answer.
Those offsets, and only those, are passed; never after a time.

A gap is an offset in none of the states while later ones were fetched: Faust lost it before
any actor took it (or the actor handed it back, `abandon`). The commit holds below it, it is
logged at WARNING and counted (`kafka_offset_gaps_total`), and the partition is seeked back to
it. Then the ledger waits, however long, for the answer to that seek: the first fetch answer
for the partition made after the seek (by its seek count) that reaches past the offset. When
that answer has been handed through `getmany`, the offset is either back (queued), skipped (not
a record), or was lost again, and only then is the partition seeked back again: one seek per
fetch answer at most, never a seek in a loop, never a give-up. A record that is merely slow
(the drain loop blocked on a full stream buffer) is waited for. The ledger drops the re-fetched
records it already has; Faust's own read offsets are switched off, the ledger does their
de-duplication.

Also here: commit before partitions are revoked (Faust clears the acked offsets first,
faust-streaming #502), and a shutdown or revoke waits for in-flight events at most its grace
(SHUTDOWN_GRACE_SECONDS; a fraction of the rebalance timeout), then leaves them unacked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any
from weakref import WeakSet

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from simapp.kafka.witness import FetchAnswer, FetchNews, FetchWitness
from simapp.observe import metrics

log = logging.getLogger(__name__)


class PartitionLedger:
    """Where every offset of one source partition stands, from the commit floor on."""

    __slots__ = (
        "tp", "base", "queued", "inflight", "done", "skipped", "fetched_to",
        "seek", "seek_epoch", "heard", "seeks", "reported",
    )  # fmt: skip

    def __init__(self, tp: TP) -> None:
        self.tp = tp
        self.base: int | None = None  # every offset below it finished or is not a record
        self.queued: set[int] = set()  # fetched, not yet taken by an actor
        self.inflight: dict[int, Message] = {}  # taken by an actor, not finished
        self.done: set[int] = set()  # finished, at or above base
        self.skipped: dict[int, int] = {}  # first -> end of offsets a fetch said are no records
        self.fetched_to = 0  # highest offset fetched + 1
        self.seek: int | None = None  # a seek back to this offset waits for its fetch answer
        self.seek_epoch: int | None = None  # the partition's seek count once that seek was made
        self.heard: tuple[int, int] = (-1, -1)  # seek count and end of the newest answer
        self.seeks = 0  # seeks back to the current base
        self.reported: int | None = None  # the missing offset last logged

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
        """An actor stopped working on it (cancelled, or handed back unstarted): Faust acks such
        a message anyway (its stream's `finally`), so it leaves the ledger unfinished and is
        fetched again."""
        self.inflight.pop(offset, None)

    def skip(self, first: int, end: int) -> None:
        """A fetch answer read over [first, end) without a record there: not records."""
        if self.base is not None:
            first = max(first, self.base)
        if end > first:
            self.skipped[first] = max(end, self.skipped.get(first, end))

    def settle(self) -> int | None:
        """Move finished messages to done and the floor over done and skipped offsets; the
        commit offset."""
        if self.base is None:
            return None
        for offset in [o for o, m in self.inflight.items() if m.acked]:
            del self.inflight[offset]
            if offset >= self.base:
                self.done.add(offset)
        start = self.base
        while True:
            if self.base in self.done:
                self.done.discard(self.base)
                self.base += 1
            elif self.base in self.skipped:
                self.base = max(self.base + 1, self.skipped.pop(self.base))
            elif not self._skip_under_base():
                break
        if self.base != start:
            if self.seek is not None and self.base > self.seek:
                self.seek = self.seek_epoch = None
            self.seeks = 0
        return self.base

    def _skip_under_base(self) -> bool:
        """Rare: a skipped range that starts below the floor; move the floor past it when it
        holds the floor. False when nothing moved."""
        if not self.skipped or self.base in self.queued or self.base in self.inflight:
            return False
        assert self.base is not None
        moved = False
        for first in [f for f in self.skipped if f < self.base]:
            end = self.skipped.pop(first)
            if end > self.base:
                self.base = end
                moved = True
        return moved

    def reset(self, committed: int | None) -> None:
        """After a seek to the committed offset: what was queued is gone (Faust clears the
        queues next); what is in flight goes on; any seek back is superseded. Without a commit
        the floor stays where the first fetched record put it."""
        self.queued.clear()
        if committed is not None and committed >= 0:
            self.base = committed
            self.done = {o for o in self.done if o >= committed}
            skipped, self.skipped = self.skipped, {}
            for first, end in skipped.items():
                self.skip(first, end)
        self.seek = self.seek_epoch = None
        self.seeks = 0

    def gap(self) -> int | None:
        """The floor's offset if it was fetched and lost (in no state, later ones fetched)."""
        base = self.base
        if base is None or base >= self.fetched_to:
            return None
        if base in self.queued or base in self.inflight or base in self.done:
            return None
        if base in self.skipped:
            return None
        return base

    def wanted(self) -> int | None:
        """The gap to seek back to: none while a seek back waits for its answer."""
        return self.gap() if self.seek is None else None

    # ----- a seek back and its answer ---------------------------------------------------
    def seeking(self, offset: int) -> None:
        self.seek, self.seek_epoch = offset, None
        self.seeks += 1

    def sought(self, epoch: int | None) -> None:
        """The seek back was made (the partition's seek count after it), or failed (None)."""
        if self.seek is None:
            return
        if epoch is None:
            self.seek = None  # sought again at the next chance
            return
        self.seek_epoch = epoch
        self._answered()

    def hear(self, epoch: int, end: int) -> bool:
        """A fetch answer for the partition (its seek count, the position after it) has been
        handed through getmany: every record it brought was admitted by now. True when it
        answered the seek back."""
        self.heard = (epoch, end)
        return self._answered()

    def _answered(self) -> bool:
        if self.seek is None or self.seek_epoch is None:
            return False
        epoch, end = self.heard
        if epoch >= self.seek_epoch and end > self.seek:
            self.seek = self.seek_epoch = None  # back, skipped, or lost again: see gap()
            return True
        return False


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


class WitnessedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a FetchWitness on its aiokafka fetcher: each fetch call's
    record map comes back as a FetchAnswer carrying the news of the hand-outs behind it."""

    witness: FetchWitness | None = None

    async def on_start(self) -> None:
        await super().on_start()
        self.witness = FetchWitness(self._ensure_consumer()._fetcher)

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109 - Faust's signature
        max_records: int | None = None,
    ) -> Any:
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        return FetchAnswer(records, self.witness.take() if self.witness is not None else ())

    async def seek_back(self, offsets: Mapping[TP, int]) -> dict[TP, int | None]:
        """Seek each partition to its offset; the partition's seek count after the seek (None
        where it failed, e.g. a partition no longer assigned)."""
        return await self.call_thread(self._seek_back, offsets)

    async def _seek_back(self, offsets: Mapping[TP, int]) -> dict[TP, int | None]:
        consumer = self._ensure_consumer()
        epochs: dict[TP, int | None] = {}
        for tp, offset in offsets.items():
            try:
                consumer.seek(tp, offset)
            except Exception as exc:  # noqa: BLE001 - sought again at the next chance
                log.warning("seek back to %s of %s failed: %r", offset, tp, exc)
                epochs[tp] = None
                continue
            epochs[tp] = self.witness.epoch(tp) if self.witness is not None else 0
        return epochs


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
        self._news: list[FetchNews] = []  # of the record map getmany is handing out

    def _new_consumer_thread(self) -> WitnessedConsumerThread:
        return WitnessedConsumerThread(self, loop=self.loop, beacon=self.beacon)

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

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109 - Faust's signature
        """One fetch call's records; what its answers skipped is written down at once."""
        records = await super()._getmany(active_partitions, timeout)
        news = getattr(records, "news", ())
        for item in news:
            ledger = self._ledger(TP(item.tp.topic, item.tp.partition))
            if ledger is not None:
                for first, end in item.skipped:
                    ledger.skip(first, end)
        self._news.extend(news)
        return records

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 - Faust's signature
        try:
            async for tp, message in super().getmany(timeout):
                ledger = self._ledger(tp)
                if ledger is None or ledger.admit(message.offset):
                    yield tp, message
        finally:  # the record map is handed out (or dropped): its answers are heard
            news, self._news = self._news, []
            answered = False
            for item in news:
                ledger = self._ledgers.get(TP(item.tp.topic, item.tp.partition))
                if ledger is not None and ledger.hear(item.epoch, item.end):
                    answered = True
        if answered:  # a seek back was answered: seek again where the offset is still missing
            await self.redeliver_gaps()

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
        await self.redeliver_gaps()
        return await super().commit(topics, start_new_transaction=start_new_transaction)

    async def redeliver_gaps(self) -> None:
        """Seek each partition back to an offset that was fetched and lost, unless a seek back
        to it still waits for its fetch answer (no time limit: see the module docstring)."""
        if self.app.rebalancing or not self.flow_active:
            return
        seeks: dict[TP, int] = {}
        for tp, ledger in self._ledgers.items():
            ledger.settle()
            offset = ledger.wanted()
            if offset is None:
                continue
            if ledger.reported != offset:
                ledger.reported = offset
                metrics.kafka_offset_gaps.labels(tp.topic).inc()
                log.warning(
                    "offset gap: %s[%s] offset %s was fetched but never processed; holding "
                    "the commit below it and fetching it again",
                    tp.topic, tp.partition, offset,
                )  # fmt: skip
            else:
                log.info(
                    "offset %s of %s[%s]: the fetch from it answered and it is still missing "
                    "(lost again before an actor took it); seeking back again (seek %d)",
                    offset, tp.topic, tp.partition, ledger.seeks + 1,
                )  # fmt: skip
            ledger.seeking(offset)
            seeks[tp] = offset
        if not seeks:
            return
        try:
            epochs = await self._thread.seek_back(seeks)
        except Exception as exc:  # sought again at the next commit or fetch answer
            log.warning("seek back to %s failed: %r", seeks, exc)
            epochs = {}
        for tp, offset in seeks.items():
            ledger = self._ledgers.get(tp)
            if ledger is not None and ledger.seek == offset and ledger.seek_epoch is None:
                ledger.sought(epochs.get(tp))

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
