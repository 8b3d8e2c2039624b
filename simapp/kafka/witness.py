"""What the consumer's own fetch answers say about offsets that are not records.

aiokafka's fetcher reads a partition from its position and, each time it hands records out,
moves the position past everything it read, including what it does not hand out: control
records (the commit and abort markers of a transactional producer), records of aborted
transactions under read_committed, offsets compacted away (aiokafka 0.14,
`aiokafka/consumer/fetcher.py`: `PartitionRecords._unpack_records` sets `next_fetch_offset`
past them, `FetchResult.getall` moves the position there). So when one hand-out moves the
position from `start` to `end` and gives records r1 < ... < rk, every other offset in
`[start, end)` is not a record: the broker's answer to a Fetch from `start` says so.

A Fetch from an offset below the log start (records deleted by retention or DeleteRecords) is
answered OffsetOutOfRange; with `auto_offset_reset=earliest` (simapp's setting) aiokafka moves
the position to the log start, with no seek and no hand-out. A position found further on than
the last seek or hand-out left it therefore says the same of the offsets in between. Anything
else that moves a position (a seek, a reset asked for, a fetch error) is watched and never
read as a skip.

FetchWitness sits on the fetcher of the aiokafka consumer inside Faust's consumer thread and
writes that down as `FetchNews`, one per hand-out, with the partition's seek count at that
moment (its epoch): every seek and reset request adds one, so the committer can tell the
answer to its own seek back from records fetched before it. A fetch answer that gives no
record (only markers) is news too. Nothing is decided here; simapp/kafka/committer.py's
ledger reads the news.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer.fetcher import FetchResult, OffsetResetStrategy
from aiokafka.structs import TopicPartition


@dataclass(frozen=True, slots=True)
class FetchNews:
    """One hand-out of fetched records for a partition: what it read and what it skipped."""

    tp: TopicPartition
    epoch: int  # the partition's seek count when the records were handed out
    start: int  # the position the hand-out read from
    end: int  # the position after it
    skipped: tuple[tuple[int, int], ...]  # [first, end) ranges that are not records


class FetchAnswer(dict):
    """Faust's record map for one fetch call, with the news of the hand-outs behind it."""

    def __init__(self, records: Any, news: Iterable[FetchNews] = ()) -> None:
        super().__init__(records or {})
        self.news: tuple[FetchNews, ...] = tuple(news)


class _WatchedBuffer(OrderedDict):
    """The fetcher's buffer of fetch answers (`Fetcher._records`); what is put in is watched."""

    def __init__(self, witness: FetchWitness) -> None:
        super().__init__()
        self._witness = witness

    def __setitem__(self, tp: Any, value: Any) -> None:
        self._witness.buffered(tp, value)
        super().__setitem__(tp, value)


class FetchWitness:
    """Installed on an aiokafka `Fetcher`; runs in the loop that runs the fetcher."""

    def __init__(self, fetcher: Any) -> None:
        self._fetcher = fetcher
        self._epochs: dict[TopicPartition, int] = {}
        # where the last seek or hand-out left each partition, and the partition state then
        self._expected: dict[TopicPartition, tuple[Any, int]] = {}
        self._news: list[FetchNews] = []
        self._resets_to_earliest = fetcher._default_reset_strategy == OffsetResetStrategy.EARLIEST
        buffer = _WatchedBuffer(self)
        for tp, value in fetcher._records.items():
            buffer[tp] = value
        fetcher._records = buffer
        self._seek_to = fetcher.seek_to
        self._request_offset_reset = fetcher.request_offset_reset
        fetcher.seek_to = self.seek_to
        fetcher.request_offset_reset = self.request_offset_reset

    # ----- what the consumer reads --------------------------------------------------------
    def epoch(self, tp: TopicPartition) -> int:
        """The partition's seek count: answers with an epoch at least this came after it."""
        return self._epochs.get(tp, 0)

    def take(self) -> list[FetchNews]:
        """The news since the last take, oldest first."""
        news, self._news = self._news, []
        return news

    # ----- the fetcher's calls ------------------------------------------------------------
    def seek_to(self, tp: TopicPartition, offset: int) -> None:
        self._seek_to(tp, offset)
        self._epochs[tp] = self._epochs.get(tp, 0) + 1
        state = self._fetcher._subscriptions._assigned_state(tp)
        self._expected[tp] = (state, offset)

    def request_offset_reset(self, tps: Iterable[TopicPartition], strategy: Any) -> Any:
        tps = list(tps)
        for tp in tps:
            self._epochs[tp] = self._epochs.get(tp, 0) + 1
            self._expected.pop(tp, None)
        return self._request_offset_reset(tps, strategy)

    def buffered(self, tp: TopicPartition, value: Any) -> None:
        if type(value) is FetchResult:
            value.getall = functools.partial(self._getall, value)
            value.getone = functools.partial(self._getone, value)
        else:  # a fetch error (e.g. a record larger than the fetch size, which aiokafka skips)
            self._expected.pop(tp, None)

    def _getone(self, result: FetchResult) -> Any:
        self._expected.pop(result._topic_partition, None)  # not followed: never read as a skip
        return FetchResult.getone(result)

    def _getall(self, result: FetchResult, max_records: int | None = None) -> list[Any]:
        tp = result._topic_partition
        if not result.check_assignment(tp) or not result.has_more():
            return []
        state = result._assignment.state_value(tp)
        start = state.position  # == the answer's next_fetch_offset (check_assignment)
        records = FetchResult.getall(result, max_records)
        self._handed_out(tp, state, start, state.position, records)
        return records

    def _handed_out(
        self, tp: TopicPartition, state: Any, start: int, end: int, records: list[Any]
    ) -> None:
        skipped: list[tuple[int, int]] = []
        expected = self._expected.get(tp)
        if (
            self._resets_to_earliest
            and expected is not None
            and expected[0] is state
            and expected[1] < start
        ):  # reset past records deleted below the log start (OffsetOutOfRange)
            skipped.append((expected[1], start))
        at = start
        for record in records:
            if record.offset > at:
                skipped.append((at, record.offset))
            at = record.offset + 1
        if end > at:
            skipped.append((at, end))
        self._expected[tp] = (state, end)
        if records or skipped:
            self._news.append(FetchNews(tp, self.epoch(tp), start, end, tuple(skipped)))
