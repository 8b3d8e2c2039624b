"""The gap rule without a clock (issue 19, point 6): an offset is passed only when a fetch
answer says it is not a record; a missing record is waited for and sought again, never passed.

Tansu has no transactions, no DeleteRecords and no compaction, so a real non-record offset
cannot be made on it. These tests drive the ledger with what a fetch reports
(simapp/kafka/committer.py `PartitionLedger`), the committer's seek-back decisions with a
stand-in consumer, and the FetchWitness on a real aiokafka `Fetcher` whose broker is a fake
serving record batches built with aiokafka's own builder: transactional records, commit
markers (control batches), a log start above a seek (OffsetOutOfRange).
"""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace
from typing import Any

from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.structs import TopicPartition
from faust.types import TP

from simapp.kafka.committer import PartitionLedger, SafeCommitConsumer
from simapp.kafka.witness import FetchWitness

TOPIC = "simulation-events"
FTP = TP(TOPIC, 0)


class Msg:
    """A Faust message as the ledger sees it."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.tp = FTP
        self.acked = False


def ledger_from(committed: int) -> PartitionLedger:
    ledger = PartitionLedger(FTP)
    ledger.reset(committed)
    return ledger


def run(ledger: PartitionLedger, offsets: list[int]) -> None:
    """Fetched, taken by an actor and acked."""
    for offset in offsets:
        assert ledger.admit(offset)
        message = Msg(offset)
        ledger.take(message)
        message.acked = True


# ----- the ledger ---------------------------------------------------------------------------
def test_a_marker_between_records_is_passed_on_the_fetch_answer_without_a_seek() -> None:
    # records 0-2 of a transaction, its commit marker at 3, records 4-5: one fetch answer
    # from 0 hands out 0,1,2,4,5 and moves the position to 6, so 3 is not a record
    ledger = ledger_from(0)
    ledger.skip(3, 4)
    run(ledger, [0, 1, 2, 4, 5])
    assert ledger.settle() == 6
    assert ledger.gap() is None and ledger.wanted() is None


def test_a_marker_at_the_end_of_the_log_is_passed_too() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2])
    ledger.skip(3, 4)  # the answer's last batch is the marker: the position went to 4
    assert ledger.settle() == 4


def test_without_the_fetch_answer_a_missing_offset_is_never_passed() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2, 4, 5])  # 3 was fetched and lost: no answer says it is no record
    assert ledger.settle() == 3
    assert ledger.wanted() == 3
    ledger.seeking(3)
    ledger.sought(epoch=1)
    for _ in range(10_000):  # however long: answers fetched before the seek do not count
        ledger.hear(epoch=0, end=6)
        assert ledger.settle() == 3
        assert ledger.gap() == 3 and ledger.wanted() is None


def test_a_slow_record_is_waited_for_and_admitted_when_it_arrives() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2, 4, 5])
    ledger.settle()
    ledger.seeking(3)
    ledger.sought(epoch=1)
    assert ledger.wanted() is None  # waiting for the answer to the seek, with no deadline
    run(ledger, [3])  # the re-fetched record reaches getmany, however late
    ledger.hear(epoch=1, end=6)
    assert ledger.settle() == 6
    assert ledger.seek is None and ledger.gap() is None


def test_a_seek_answered_from_a_higher_offset_passes_exactly_the_offsets_skipped() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2, 5, 6])
    assert ledger.settle() == 3
    ledger.seeking(3)
    ledger.sought(epoch=1)
    # the fetch from 3 hands out its first record at 4: 3 is not a record; 4 is one
    ledger.skip(3, 4)
    assert ledger.admit(4)
    ledger.hear(epoch=1, end=7)
    assert ledger.settle() == 4  # 4 is queued: the commit holds there, not past it
    message = Msg(4)
    ledger.take(message)
    message.acked = True
    assert ledger.settle() == 7


def test_records_deleted_below_the_log_start_are_passed() -> None:
    # a fetch from 3 was answered OffsetOutOfRange and aiokafka reset the position to the log
    # start, 10: the witness reports 3..9 as skipped
    ledger = ledger_from(3)
    ledger.skip(3, 10)
    run(ledger, [10, 11])
    assert ledger.settle() == 12


def test_a_record_lost_again_is_sought_again_once_the_answer_was_handed_out() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2, 4, 5])
    ledger.settle()
    ledger.seeking(3)
    ledger.sought(epoch=1)
    # the answer came (epoch 1, reaching past 3) but Faust dropped 3 before getmany gave it
    ledger.hear(epoch=1, end=6)
    assert ledger.wanted() == 3  # so seek again: one seek per answer, never given up
    ledger.seeking(3)
    assert ledger.seeks == 2


def test_an_answer_heard_before_the_seek_call_returned_counts() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2, 4, 5])
    ledger.settle()
    ledger.seeking(3)
    ledger.hear(epoch=2, end=6)  # the drain loop handed the answer out during the seek call
    assert ledger.seek == 3  # not known to be an answer until the seek count is known
    ledger.sought(epoch=2)
    assert ledger.seek is None and ledger.wanted() == 3


def test_an_answer_that_has_not_reached_the_offset_yet_is_waited_for() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2, 4, 5])
    ledger.settle()
    ledger.seeking(3)
    ledger.sought(epoch=1)
    ledger.hear(epoch=1, end=3)  # a later seek (count 1) went below 3: not an answer yet
    assert ledger.seek == 3 and ledger.wanted() is None


def test_a_failed_seek_is_made_again() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2, 4, 5])
    ledger.settle()
    ledger.seeking(3)
    ledger.sought(None)
    assert ledger.wanted() == 3


def test_an_abandoned_event_is_a_gap_fetched_again() -> None:
    # the conversation slots' door hands an event back unstarted (agents/simulate.py abandon)
    ledger = ledger_from(0)
    run(ledger, [0])
    assert ledger.admit(1)
    message = Msg(1)
    ledger.take(message)
    ledger.abandon(1)
    message.acked = True  # Faust acks it anyway
    run(ledger, [2])
    assert ledger.settle() == 1
    assert ledger.wanted() == 1
    ledger.seeking(1)
    ledger.sought(epoch=1)
    assert ledger.admit(1)  # fetched again; the others are dropped as already had
    assert not ledger.admit(2)
    ledger.hear(epoch=1, end=3)
    message = Msg(1)
    ledger.take(message)
    message.acked = True
    assert ledger.settle() == 3


def test_records_cleared_from_the_queues_are_a_gap() -> None:
    ledger = ledger_from(0)
    for offset in range(4):
        assert ledger.admit(offset)
    ledger.queued.clear()  # flow control emptied the queues (on_queues_cleared)
    assert ledger.settle() == 0
    assert ledger.wanted() == 0


def test_a_reset_supersedes_the_seek_and_keeps_what_fetches_said_above_the_commit() -> None:
    ledger = ledger_from(0)
    ledger.skip(3, 4)
    ledger.skip(7, 9)
    run(ledger, [0, 1, 2, 5])
    ledger.settle()
    ledger.seeking(4)
    ledger.reset(8)
    assert ledger.seek is None
    assert ledger.skipped == {8: 9}
    run(ledger, [9])
    assert ledger.settle() == 10


def test_overlapping_skips_move_the_floor_past_both() -> None:
    # two answers over a hole that compaction widened in between: [3, 6) then [4, 9)
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2])
    ledger.skip(3, 6)
    ledger.skip(4, 9)
    run(ledger, [9])
    assert ledger.settle() == 10


# ----- the committer's seek-back decisions --------------------------------------------------
class FakeThread:
    def __init__(self) -> None:
        self.seeks: list[dict[TP, int]] = []
        self.epoch = 0

    async def seek_back(self, offsets: dict[TP, int]) -> dict[TP, int | None]:
        self.seeks.append(dict(offsets))
        self.epoch += 1
        return dict.fromkeys(offsets, self.epoch)


def consumer_with(ledger: PartitionLedger) -> Any:
    return SimpleNamespace(
        app=SimpleNamespace(rebalancing=False),
        flow_active=True,
        _ledgers={FTP: ledger},
        _thread=FakeThread(),
    )


async def test_the_committer_seeks_once_per_answer_and_never_passes_the_gap() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 1, 2, 4, 5])
    consumer = consumer_with(ledger)
    redeliver = SafeCommitConsumer.redeliver_gaps
    for _ in range(50):  # commits and fetch calls with no answer to the seek
        await redeliver(consumer)
    assert consumer._thread.seeks == [{FTP: 3}]
    assert ledger.settle() == 3
    ledger.hear(epoch=1, end=6)  # answered without the record: Faust lost it again
    await redeliver(consumer)
    assert consumer._thread.seeks == [{FTP: 3}, {FTP: 3}]
    run(ledger, [3])
    ledger.hear(epoch=2, end=6)
    await redeliver(consumer)
    assert len(consumer._thread.seeks) == 2
    assert ledger.settle() == 6


async def test_the_committer_does_not_seek_while_the_flow_is_stopped() -> None:
    ledger = ledger_from(0)
    run(ledger, [0, 2])
    consumer = consumer_with(ledger)
    consumer.flow_active = False
    await SafeCommitConsumer.redeliver_gaps(consumer)
    assert consumer._thread.seeks == []


# ----- the witness on a real aiokafka Fetcher -----------------------------------------------
ATP = TopicPartition(TOPIC, 0)
COMMIT_MARKER = struct.pack(">hh", 0, 1), struct.pack(">hi", 0, 0)


class _ControlBatchBuilder(_DefaultRecordBatchBuilderPy):
    def _get_attributes(self, include_compression_type: bool = True) -> int:
        return super()._get_attributes(include_compression_type) | self.CONTROL_MASK


def batch(base: int, count: int, *, control: bool = False) -> tuple[int, int, bytes]:
    builder_class = _ControlBatchBuilder if control else _DefaultRecordBatchBuilderPy
    builder = builder_class(2, 0, True, 7, 0, -1 if control else base, 1 << 20)
    for i in range(count):
        key, value = COMMIT_MARKER if control else (b"k%d" % (base + i), b"v%d" % (base + i))
        builder.append(i, timestamp=1, key=key, value=value, headers=[])
    data = builder.build()
    struct.pack_into(">q", data, 0, base)
    return base, base + count - 1, bytes(data)


class FakeBroker:
    """Answers Fetch and ListOffsets for one partition from a list of record batches."""

    def __init__(self, batches: list[tuple[int, int, bytes]], *, log_start: int = 0) -> None:
        self.batches = batches
        self.log_start = log_start
        self.end = batches[-1][1] + 1
        self.per_answer = 2  # batches per fetch answer: markers fall on answer boundaries too
        self.cluster = SimpleNamespace(
            leader_for_partition=lambda tp: 0, broker_metadata=lambda node: object()
        )
        self._loop = asyncio.get_running_loop()
        self._metadata_max_age_ms = 300_000

    def force_metadata_update(self) -> asyncio.Future:
        future = self._loop.create_future()
        future.set_result(True)
        return future

    async def send(self, node_id: int, request: Any) -> Any:
        if isinstance(request, OffsetRequest):
            (topic, [(partition, _)]) = request._topics[0]
            return SimpleNamespace(
                API_VERSION=1, topics=[(topic, [(partition, 0, -1, self.log_start)])]
            )
        assert isinstance(request, FetchRequest)
        (topic, [(partition, offset, _)]) = request.topics[0]
        if offset < self.log_start or offset > self.end:
            return SimpleNamespace(
                API_VERSION=4, topics=[(topic, [(partition, 1, self.end, -1, None, b"")])]
            )
        found = [data for _, last, data in self.batches if last >= offset][: self.per_answer]
        if not found:
            await asyncio.sleep(0.01)  # a broker waits fetch_max_wait for data
        answer = (partition, 0, self.end, self.end, [], b"".join(found))
        return SimpleNamespace(API_VERSION=4, topics=[(topic, [answer])])


async def fetcher_on(broker: FakeBroker, start: int) -> tuple[Fetcher, FetchWitness, Any]:
    subscriptions = SubscriptionState()
    subscriptions.assign_from_user({ATP})
    fetcher = Fetcher(broker, subscriptions, auto_offset_reset="earliest", fetch_max_wait_ms=10)
    witness = FetchWitness(fetcher)
    fetcher.seek_to(ATP, start)
    return fetcher, witness, subscriptions._assigned_state(ATP)


async def read_to_end(fetcher: Fetcher, state: Any, end: int) -> list[int]:
    offsets: list[int] = []
    async with asyncio.timeout(10):
        while not (state.has_valid_position and state.position >= end):
            records = await fetcher.fetched_records({ATP}, timeout=0.2)
            offsets += [r.offset for r in records.get(ATP, [])]
    return offsets


def skipped(news: list[Any]) -> list[tuple[int, int]]:
    return [pair for item in news for pair in item.skipped]


async def test_the_witness_reports_commit_markers_as_skipped_offsets() -> None:
    # records 0-2, marker 3, records 4-5, marker 6, record 7, marker 8
    broker = FakeBroker(
        [batch(0, 3), batch(3, 1, control=True), batch(4, 2), batch(6, 1, control=True),
         batch(7, 1), batch(8, 1, control=True)]
    )  # fmt: skip
    fetcher, witness, state = await fetcher_on(broker, 0)
    try:
        assert await read_to_end(fetcher, state, broker.end) == [0, 1, 2, 4, 5, 7]
        news = witness.take()
        assert skipped(news) == [(3, 4), (6, 7), (8, 9)]
        assert news[0].start == 0 and news[-1].end == 9
        assert all(item.epoch == 1 for item in news)
        for first, end in skipped(news):  # what the ledger then commits past
            assert not {first, end - 1} & {0, 1, 2, 4, 5, 7}
    finally:
        await fetcher.close()


async def test_a_fetch_from_a_marker_hands_out_its_first_record_higher_up() -> None:
    broker = FakeBroker([batch(0, 3), batch(3, 1, control=True), batch(4, 2)])
    fetcher, witness, state = await fetcher_on(broker, 0)
    try:
        await read_to_end(fetcher, state, broker.end)
        witness.take()
        fetcher.seek_to(ATP, 3)  # the committer's seek back to the marker
        assert witness.epoch(ATP) == 2
        assert await read_to_end(fetcher, state, broker.end) == [4, 5]
        news = witness.take()
        assert news[0].epoch == 2 and news[0].start == 3
        assert skipped(news) == [(3, 4)]
    finally:
        await fetcher.close()


async def test_a_fetch_from_a_record_hands_out_that_record_and_skips_nothing() -> None:
    broker = FakeBroker([batch(0, 3), batch(3, 1, control=True), batch(4, 2)])
    fetcher, witness, state = await fetcher_on(broker, 4)
    try:
        assert await read_to_end(fetcher, state, broker.end) == [4, 5]
        assert skipped(witness.take()) == []
    finally:
        await fetcher.close()


async def test_an_answer_of_markers_only_is_news_without_records() -> None:
    broker = FakeBroker([batch(0, 2), batch(2, 1, control=True), batch(3, 1, control=True)])
    broker.per_answer = 1
    fetcher, witness, state = await fetcher_on(broker, 2)
    try:
        assert await read_to_end(fetcher, state, broker.end) == []
        assert skipped(witness.take()) == [(2, 3), (3, 4)]
    finally:
        await fetcher.close()


async def test_records_deleted_below_the_log_start_are_reported_after_the_reset() -> None:
    broker = FakeBroker([batch(5, 3)], log_start=5)
    fetcher, witness, state = await fetcher_on(broker, 2)  # answered OffsetOutOfRange
    try:
        assert await read_to_end(fetcher, state, broker.end) == [5, 6, 7]
        assert skipped(witness.take()) == [(2, 5)]
    finally:
        await fetcher.close()


async def test_a_seek_forward_is_not_taken_for_skipped_offsets() -> None:
    broker = FakeBroker([batch(0, 6)])
    fetcher, witness, state = await fetcher_on(broker, 0)
    try:
        fetcher.seek_to(ATP, 4)  # before anything was handed out: 0-3 are records
        assert await read_to_end(fetcher, state, broker.end) == [4, 5]
        assert skipped(witness.take()) == []
    finally:
        await fetcher.close()
