"""Reading a topic outside any consumer group: from its start, or its last records.

Used by the dead-letter tools, the estimate (the newest results), table recovery's end
offsets and the tests. Nothing is committed. The end of a partition is the high watermark of
the broker's Fetch answer, not ListOffsets (Tansu answers that wrong for multi-record batches,
docs/architecture.md); a partition whose fetch never answers ends after `idle` seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from simapp.config import Settings
from simapp.kafka import clients

FETCH_ROUNDS = 5  # fetch answers awaited for a partition's end before trusting ListOffsets


class TopicReader:
    """A group-less consumer over whole partitions; `async with` starts and stops it."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        options.setdefault("auto_offset_reset", "earliest")
        self._settings = settings
        self._consumer = clients.consumer(settings, **options)
        self._start: dict[TopicPartition, int] = {}

    async def __aenter__(self) -> TopicReader:
        await clients.start(self._consumer, self._settings)
        # aiokafka 0.14's group-less coordinator task must have run once, or stop() raises
        # the CancelledError of cancelling it (a reader that read nothing)
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._consumer.stop()

    def partitions(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions ([] when the broker does not know the topic)."""
        found = self._consumer.partitions_for_topic(topic) or set()
        return [TopicPartition(topic, p) for p in sorted(found)]

    async def from_start(self, topic: str) -> TopicReader:
        """Read every partition of `topic` from its first record."""
        tps = self.partitions(topic)
        if tps:
            self._consumer.assign(tps)
            await self._consumer.seek_to_beginning(*tps)
        return self

    async def from_last(self, topic: str, per_partition: int) -> TopicReader:
        """Read the newest `per_partition` records of each partition."""
        tps = self.partitions(topic)
        ends = await self.end_offsets(tps)
        for tp in tps:
            self._consumer.seek(tp, max(0, ends[tp] - per_partition))
        return self

    async def end_offsets(
        self, tps: list[TopicPartition], rounds: int = FETCH_ROUNDS
    ) -> dict[TopicPartition, int]:
        """Each partition's end from a Fetch answer (its high watermark, or the last record
        seen), ListOffsets' answer being only a floor; the partitions stay assigned and are
        left at their end. A partition whose fetch does not answer in `rounds` keeps the
        listed end."""
        if not tps:
            return {}
        listed = await self._consumer.end_offsets(tps)
        self._consumer.assign(sorted(set(self._consumer.assignment()) | set(tps)))
        for tp in tps:
            self._consumer.seek(tp, max(0, listed[tp] - 1))
        ends = dict(listed)
        pending = set(tps)
        for _ in range(rounds):
            batch = await self._consumer.getmany(*pending, timeout_ms=1000)
            for tp in list(pending):
                seen = max((r.offset + 1 for r in batch.get(tp, [])), default=0)
                highwater = self._consumer.highwater(tp)
                if highwater is None and not seen:
                    continue
                ends[tp] = max(listed[tp], seen, highwater or 0)
                pending.discard(tp)
            if not pending:
                break
        for tp in tps:
            self._consumer.seek(tp, ends[tp])
        return ends

    def from_offsets(self, offsets: Mapping[TopicPartition, int]) -> TopicReader:
        """Read the given partitions from the given offsets."""
        if offsets:
            self._consumer.assign(list(offsets))
        for tp, offset in offsets.items():
            self._consumer.seek(tp, offset)
        return self

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end as the last Fetch answer gave it (None before one)."""
        return self._consumer.highwater(tp)

    async def records(
        self,
        *,
        to_end: bool = True,
        limit: int | None = None,
        idle: float = 2.0,
    ) -> AsyncIterator[ConsumerRecord]:
        """The records, in fetch order, until every partition is read to its end (`to_end`;
        a partition whose fetch never answers ends after `idle` seconds without a record) or
        `limit` records. Bound the time with `asyncio.timeout` around the loop. Nothing when
        no partition is assigned (an unknown topic)."""
        if not self._consumer.assignment():
            return
        loop = asyncio.get_running_loop()
        last_record = loop.time()
        count = 0
        while True:
            if to_end and (loop.time() - last_record >= idle or await self._at_end()):
                return
            batch = await self._consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    yield record
                    count += 1
                    last_record = loop.time()
                    if limit is not None and count >= limit:
                        return

    async def _at_end(self) -> bool:
        tps = self._consumer.assignment()
        for tp in tps:
            highwater = self._consumer.highwater(tp)
            if highwater is None or await self._consumer.position(tp) < highwater:
                return False
        return True


def json_value(record: ConsumerRecord) -> Any:
    """A record's value as JSON, or None when it is not JSON."""
    try:
        return json.loads(record.value)
    except (TypeError, ValueError):
        return None
