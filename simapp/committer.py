"""A Faust consumer that never commits past an event that is still in flight.

faust-streaming's `Consumer._new_offset` commits the end of the first run of consecutive acked
offsets. With agent concurrency > 1 the head event of a partition can still be running while
later ones are acked; the head-gap guard only works when something (and not offset 0) was
committed before (faust-streaming issue #606, PR #707 open). A crash then loses the head event.

Our rule is simpler and sound: per partition we track every message an agent actor took and
has not finished. The commit offset is the smallest such offset; with none in flight it is the
highest processed offset + 1. Actors take messages in offset order per partition, so every
offset below the smallest in-flight one was processed or was never a record (control batches,
compaction), and a redelivery starts exactly at the oldest unfinished event. Messages a stream
skipped during a rebalance (faust acks those too) never count as processed.

Also fixed here: faust clears the acked offsets of revoked partitions *before* its
commit-on-revoke runs (faust-streaming issue #502), so every rebalance re-processed everything
since the last timed commit. We commit what is finished before handing partitions over.
Shutdown waits for in-flight events at most SHUTDOWN_GRACE_SECONDS, then commits what is safe
and lets the rest be redelivered (they resume from their checkpoints) instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from weakref import WeakSet

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from simapp import metrics

log = logging.getLogger(__name__)


class _TrackingSet(WeakSet):
    """Faust's set of unacked messages, also telling us when a stream picks a message up.

    Faust streams (Python and Cython) add a message to `consumer._unacked_messages` at the
    moment an agent actor takes it from the channel: that is exactly "in flight" for us.
    """

    def __init__(self, on_add: Callable[[Message], None]) -> None:
        super().__init__()
        self._on_add = on_add

    def add(self, item: Message) -> None:
        super().add(item)
        self._on_add(item)


class SafeCommitConsumer(faust_aiokafka.Consumer):
    """aiokafka-driver Consumer with the in-flight-aware commit rule."""

    shutdown_grace: float = 30.0  # set from SHUTDOWN_GRACE_SECONDS by the app
    revoke_grace: float = 5.0  # must stay below the broker's rebalance timeout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # offsets handed to streams and not yet acked, per partition (dict keeps it cheap)
        # messages an agent actor took and that were not finished at the last look, by offset
        self._inflight: dict[TP, dict[int, Message]] = defaultdict(dict)
        self._max_done: dict[TP, int] = {}  # highest processed-and-acked offset
        self._grace: float | None = None
        self._unacked_messages = _TrackingSet(self._record_inflight)

    # ----- bookkeeping ------------------------------------------------------------------
    def _record_inflight(self, message: Message) -> None:
        if not message.acked:
            self._inflight[message.tp][message.offset] = message

    def _settle(self, tp: TP) -> None:
        """Move finished messages out of the in-flight set. Faust's Cython stream acks inline
        (it never calls Consumer.ack), so we look at `message.acked` instead of hooking ack."""
        inflight = self._inflight.get(tp)
        if not inflight:
            return
        done = [offset for offset, message in inflight.items() if message.acked]
        for offset in done:
            del inflight[offset]
        if done:
            self._max_done[tp] = max(self._max_done.get(tp, -1), max(done))

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        self._settle(tp)
        inflight = self._inflight.get(tp)
        done = self._max_done.get(tp)
        # Only offsets an agent really processed count: faust also acks messages its streams
        # skip during a rebalance (stale generation), which must be fetched again, not committed.
        candidates = []
        if inflight:
            candidates.append(min(inflight))
        if done is not None:
            candidates.append(done + 1)
        if not candidates:
            return None
        new = min(candidates)
        keep = [o for o in acked if o >= new]  # forget acked offsets below the commit point
        acked[:] = keep
        self._acked_index[tp].intersection_update(keep)
        committed = self._committed_offset[tp]
        if committed is not None and new <= committed:
            return None
        return new

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
        # Commit finished work while faust still has the acked offsets (issue #502).
        try:
            await self.commit(revoked)
        except Exception as exc:  # a failed commit means redelivery, never loss
            log.warning("commit before revoke failed: %r", exc)
        self._grace = self.revoke_grace
        try:
            await super().on_partitions_revoked(revoked)
        finally:
            self._grace = None
        # Buffered messages were cleared by faust; the new owner (or we, after the seek to the
        # committed offset) will fetch them again. Forget what is no longer ours.
        for tp in revoked:
            self._inflight.pop(tp, None)
            self._max_done.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # After a rebalance faust seeks every assigned partition to its committed offset and
        # re-fetches from there: offsets buffered before are delivered (and tracked) again.
        for tp in list(self._inflight):
            if tp not in assigned:
                self._inflight.pop(tp, None)
                self._max_done.pop(tp, None)
        await super().on_partitions_assigned(assigned, generation_id)

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
