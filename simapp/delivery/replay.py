"""`faust -A simapp dlq list|replay`: each dead letter replayed once, and remembered.

What replay does with a dead letter (`plan`):
- a `callback_failed` summary is POSTed again to its callback URL (the same bytes,
  Idempotency-Key and webhook-id; simapp/delivery/callbacks.py); nothing is simulated again;
- an event (`original`) is re-queued to the simulation topic with a `ReplayMark`
  (simapp/delivery/dead_letters.py): the worker takes it for a new attempt of the event that was
  dead-lettered, not for a duplicate of its own id; with `--force` the mark is forced (signed
  with DLQ_REPLAY_SECRET) and the worker re-simulates the id even if its row says done;
- left alone unless named: `internal_error` (re-queueing it would run it into the same bug
  again) only with `--reason internal_error`, `duplicate_id` only with `--force`;
- never: `invalid_result`, `not_json` and `not_object` (those bytes can never become an
  event), an original too large to have been kept whole, a record holding neither: there is
  nothing to replay.
A run replays the dead letters that were there when it began reading a partition (the end of
its first fetch answer): a re-queued event that fails again becomes a new dead letter, for the
next run, so a run never chases its own tail.

What it remembers, and where:
- The replay log (DLQ_REPLAY_TOPIC, one partition, compacted): one record per dead letter
  replayed, keyed by its DLQ topic, partition and offset, written once its replay succeeded
  (the receiver took the POST, or the broker acknowledged the re-queued event). A run skips
  every dead letter on it, and `dlq list` shows them as replayed. It is the memory because it
  lasts: compaction keeps every key (they are unique) and deletes nothing by age, whatever the
  DLQ's retention; Kafka forgets an idle group's offsets after offsets.retention.minutes (7
  days by default), and Tansu keeps no offset-commit metadata (docs/architecture.md), so the
  set of replayed offsets could not ride on the commits.
- The consumer group (DLQ_REPLAY_GROUP, default `<KAFKA_CONSUMER_GROUP>-dlq-replay`), which
  reads the DLQ and commits, per partition, the first dead letter this run did not replay
  (skipped by `--reason`/`--id`, left alone, or still undeliverable), else the end of what it
  read. A record a filter skipped therefore stays above the commit and is read, and can be
  replayed, by a later run; what was replayed above it is skipped through the log. The group
  splits the partitions between two runs started at once instead of both replaying them, and
  its lag in Kafka's tools is the dead letters not replayed yet.
Delivery is at least once: a crash after a replay and before its log record replays it again,
with the same Idempotency-Key (a POST) or the same mark (an event: the worker sees the second
copy as the same attempt and skips or resumes it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from simapp.config import Settings
from simapp.delivery.callbacks import CallbackSender
from simapp.delivery.dead_letters import ReplayMark, Source, original_bytes
from simapp.kafka import clients
from simapp.kafka.admin import ensure_topics
from simapp.kafka.reader import TopicReader, json_value

log = logging.getLogger(__name__)

REDELIVER = "redeliver"  # POST the summary again
REQUEUE = "requeue"  # produce the event again, marked
FILTERED = "filtered"  # not selected by --reason / --id: stays for a later run
LEFT_ALONE = (
    "left_alone"  # internal_error without --reason internal_error, duplicate_id without --force
)
CANNOT = "cannot"  # nothing to replay

# a results record that is no summary, and bytes that will never decode: nothing to replay
NEVER = frozenset({"invalid_result", "not_json", "not_object"})
LOG_CONFIG = {"cleanup.policy": "compact"}
JOIN_TIMEOUT = 60.0  # seconds to wait for the group's assignment
IDLE_END = 10.0  # seconds without a record after which a partition with no known end is done
BATCH = 100  # dead letters read per round (re-queues are produced and committed per round)


@dataclass(frozen=True, slots=True)
class Selection:
    """What a replay was asked for."""

    reason: str | None = None
    simulation_id: str | None = None
    force: bool = False


def plan(record: Any, selection: Selection) -> str:
    """What replay does with one dead letter (REDELIVER, REQUEUE, FILTERED, LEFT_ALONE or
    CANNOT)."""
    if not isinstance(record, dict) or record.get("reason") in NEVER:
        return CANNOT
    reason = record.get("reason")
    summary, url = record.get("summary"), record.get("callback_url")
    if isinstance(summary, dict) and isinstance(summary.get("simulation_id"), str):
        if not isinstance(url, str):
            return CANNOT
        kind = REDELIVER
    elif original_bytes(record) is not None:
        kind = REQUEUE
    else:
        return CANNOT
    if selection.reason is not None and reason != selection.reason:
        return FILTERED
    if (
        selection.simulation_id is not None
        and record.get("simulation_id") != selection.simulation_id
    ):
        return FILTERED
    if reason == "internal_error" and selection.reason != "internal_error":
        return LEFT_ALONE
    if reason == "duplicate_id" and not selection.force:
        return LEFT_ALONE
    return kind


def log_key(dlq_topic: str, partition: int, offset: int) -> str:
    """A dead letter's key on the replay log, and the attempt of its replay mark."""
    return f"{dlq_topic}:{partition}:{offset}"


async def read_replay_log(settings: Settings, idle: float = 2.0) -> dict[tuple[int, int], dict]:
    """The dead letters of DLQ_TOPIC replayed so far: (partition, offset) -> log record."""
    out: dict[tuple[int, int], dict] = {}
    async with TopicReader(settings) as reader:
        await reader.from_start(settings.replay_topic)
        async for record in reader.records(idle=idle):
            item = json_value(record)
            if not isinstance(item, dict) or item.get("dlq_topic") != settings.dlq_topic:
                continue
            partition, offset = item.get("partition"), item.get("offset")
            if isinstance(partition, int) and isinstance(offset, int):
                out[(partition, offset)] = item
    return out


async def list_dead_letters(
    settings: Settings, selection: Selection = Selection(), idle: float = 2.0
) -> list[dict[str, Any]]:
    """Every dead letter (from the start, no group), each with `_dlq` (partition, offset) and
    `_replay`: {"status": "replayed" (with the log's action and time), "pending" (with what
    replay would do, or what it needs) or "cannot"}."""
    replayed = await read_replay_log(settings, idle)
    out: list[dict[str, Any]] = []
    async with TopicReader(settings) as reader:
        await reader.from_start(settings.dlq_topic)
        async for record in reader.records(idle=idle):
            item = json_value(record)
            if not isinstance(item, dict):
                continue
            if selection.reason is not None and item.get("reason") != selection.reason:
                continue
            if (
                selection.simulation_id is not None
                and item.get("simulation_id") != selection.simulation_id
            ):
                continue
            item["_dlq"] = {"partition": record.partition, "offset": record.offset}
            item["_replay"] = replay_status(item, replayed.get((record.partition, record.offset)))
            out.append(item)
    return out


def replay_status(item: dict[str, Any], logged: dict[str, Any] | None) -> dict[str, Any]:
    if logged is not None:
        return {
            "status": "replayed",
            "action": logged.get("action"),
            "at": logged.get("replayed_at"),
            "requeued_to": logged.get("requeued_to"),
        }
    kind = plan(item, Selection(reason=item.get("reason"), force=True))
    if kind == CANNOT:
        return {"status": "cannot"}
    needs = {"internal_error": "--reason internal_error", "duplicate_id": "--force"}
    status: dict[str, Any] = {"status": "pending", "action": kind}
    if item.get("reason") in needs:
        status["needs"] = needs[item["reason"]]
    return status


@dataclass(slots=True)
class _Walk:
    """One DLQ partition in this run: where the commit may go."""

    held: int | None = None  # the first dead letter read and not replayed: the commit stays here
    next: int | None = None  # past the last record read
    committed: int | None = None
    stop: int | None = None  # the partition's end when this run first read it

    def hold(self, offset: int) -> None:
        if self.held is None:
            self.held = offset

    @property
    def commit_at(self) -> int | None:
        return self.held if self.held is not None else self.next


@dataclass(slots=True)
class _Requeue:
    tp: TopicPartition
    offset: int
    item: dict[str, Any]
    value: bytes
    mark: ReplayMark
    ack: Any = None


@dataclass
class Report:
    counts: Counter[str] = field(default_factory=Counter)
    left_alone: Counter[str] = field(default_factory=Counter)  # by reason

    @property
    def failed(self) -> int:
        return self.counts["still_undeliverable"]


class Replay:
    """One `dlq replay` run (or `--dry-run`: the same walk, nothing replayed or remembered)."""

    def __init__(self, settings: Settings, selection: Selection, dry_run: bool = False) -> None:
        if selection.force and settings.dlq_replay_secret is None:
            raise ValueError(
                "--force needs DLQ_REPLAY_SECRET (the workers' too): a forced replay mark is "
                "believed only with its signature"
            )
        self.settings = settings
        self.selection = selection
        self.dry_run = dry_run
        secret = settings.dlq_replay_secret
        self.mark_key = secret.get_secret_value().encode() if secret is not None else None
        self.report = Report()
        self.replayed: dict[tuple[int, int], dict] = {}
        self.walks: dict[TopicPartition, _Walk] = {}
        self.pending: list[_Requeue] = []
        self._assigned = asyncio.Event()
        self._assignments = 0
        self._consumer: Any = None
        self._producer: Any = None
        self._sender: CallbackSender | None = None

    async def run(self) -> Report:
        s = self.settings
        await ensure_topics(s, [s.kafka_topic, s.dlq_topic])
        await ensure_topics(s, [s.replay_topic], partitions=1, configs=LOG_CONFIG)
        self.replayed = await read_replay_log(s)
        self._consumer = await self._start_consumer()
        try:
            if not self.dry_run:
                self._producer = clients.producer(
                    s, acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024
                )
                await clients.start(self._producer, s)
                self._sender = CallbackSender.from_settings(s)
            await self._walk()
        finally:
            await self._close()
        return self.report

    async def _start_consumer(self) -> Any:
        s = self.settings
        consumer = clients.consumer(
            s,
            group_id=s.replay_group,
            auto_offset_reset="earliest",
            session_timeout_ms=6_000,  # Tansu's JoinGroup waits half of it
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=3_600_000,  # a round of re-POSTs may take minutes
        )
        if not self.dry_run:
            consumer.subscribe([s.dlq_topic], listener=_Listener(self))
        await clients.start(consumer, s)
        if self.dry_run:  # read from the group's commits without joining it
            tps = [
                TopicPartition(s.dlq_topic, p)
                for p in consumer.partitions_for_topic(s.dlq_topic) or ()
            ]
            consumer.assign(tps)
            for tp in tps:
                committed = await consumer.committed(tp)
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
                self.walks[tp] = _Walk(committed=committed)
            self._assigned.set()
        return consumer

    async def _walk(self) -> None:
        consumer = self._consumer
        try:
            async with asyncio.timeout(JOIN_TIMEOUT):
                while not self._assigned.is_set():
                    await consumer.getmany(timeout_ms=200)
        except TimeoutError:
            raise RuntimeError(
                f"no assignment from group {self.settings.replay_group} within {JOIN_TIMEOUT:g} s"
            ) from None
        loop = asyncio.get_running_loop()
        last_record = loop.time()
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=BATCH)
            for tp, records in batch.items():
                for record in records:
                    await self._take(tp, record)
                    last_record = loop.time()
            await self._flush()
            if await self._at_end() or (not batch and loop.time() - last_record > IDLE_END):
                return

    async def _at_end(self) -> bool:
        for tp in self._consumer.assignment():
            walk = self.walks.get(tp)
            end = walk.stop if walk is not None and walk.stop is not None else None
            end = end if end is not None else self._consumer.highwater(tp)
            if end is None or await self._consumer.position(tp) < end:
                return False
        return True

    async def _take(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        walk = self.walks.get(tp)
        if walk is None:  # revoked meanwhile
            return
        if walk.stop is None:
            walk.stop = self._consumer.highwater(tp)  # set by the fetch answer this came in
        if walk.stop is not None and record.offset >= walk.stop:
            return  # dead-lettered during this run (perhaps a replay of ours): the next run's
        walk.next = record.offset + 1
        counts = self.report.counts
        if (tp.partition, record.offset) in self.replayed:
            counts["already_replayed"] += 1
            return
        item = json_value(record)
        kind = plan(item, self.selection)
        if kind == CANNOT:
            counts["cannot_replay"] += 1
        elif kind == FILTERED:
            walk.hold(record.offset)
            counts["filtered_out"] += 1
        elif kind == LEFT_ALONE:
            walk.hold(record.offset)
            counts["left_alone"] += 1
            self.report.left_alone[str(item.get("reason"))] += 1
        elif self.dry_run:
            counts[f"would_{kind}"] += 1
        elif kind == REDELIVER:
            await self._redeliver(tp, record.offset, item, walk)
        else:
            self._queue(tp, record.offset, item)

    async def _redeliver(
        self, tp: TopicPartition, offset: int, item: dict[str, Any], walk: _Walk
    ) -> None:
        assert self._sender is not None
        summary = item["summary"]
        result = await self._sender.deliver(item["callback_url"], summary["simulation_id"], summary)
        if not result.ok:
            walk.hold(offset)
            self.report.counts["still_undeliverable"] += 1
            log.warning(
                "%s still undeliverable after %d attempts: %s",
                summary["simulation_id"], result.attempts, result.error,
            )  # fmt: skip
            return
        await self._remember([(tp, offset, item, "redelivered", None)])
        self.report.counts["redelivered"] += 1

    def _queue(self, tp: TopicPartition, offset: int, item: dict[str, Any]) -> None:
        value = original_bytes(item)
        assert value is not None  # plan() said REQUEUE
        source = item.get("source")
        try:
            origin = Source(str(source["topic"]), int(source["partition"]), int(source["offset"]))
        except (TypeError, KeyError, ValueError):
            origin = Source("", 0, 0)  # matches no event: a plain new attempt
        mark = ReplayMark(
            log_key(self.settings.dlq_topic, tp.partition, offset), origin, self.selection.force
        )
        self.pending.append(_Requeue(tp, offset, item, value, mark))

    async def _flush(self) -> None:
        """Produce the queued events (acknowledged), then their log records, then commit."""
        if self.pending:
            pending, self.pending = self.pending, []
            s = self.settings
            for requeue in pending:
                key = requeue.item.get("simulation_id")
                requeue.ack = await self._producer.send(
                    s.kafka_topic,
                    value=requeue.value,
                    key=key.encode() if isinstance(key, str) else None,
                    headers=requeue.mark.headers(requeue.value, self.mark_key),
                )
            metas = await asyncio.gather(*(r.ack for r in pending))
            action = "requeued_forced" if self.selection.force else "requeued"
            await self._remember(
                [
                    (
                        r.tp,
                        r.offset,
                        r.item,
                        action,
                        {"topic": m.topic, "partition": m.partition, "offset": m.offset},
                    )
                    for r, m in zip(pending, metas, strict=True)
                ]
            )
            self.report.counts["requeued"] += len(pending)
        await self._commit()

    async def _remember(self, done: list[tuple[TopicPartition, int, dict, str, Any]]) -> None:
        """The replay log's records, acknowledged."""
        s = self.settings
        acks = []
        now = datetime.now(UTC).isoformat()
        for tp, offset, item, action, requeued_to in done:
            entry = {
                "dlq_topic": s.dlq_topic,
                "partition": tp.partition,
                "offset": offset,
                "simulation_id": item.get("simulation_id"),
                "reason": item.get("reason"),
                "action": action,
                "requeued_to": requeued_to,
                "replayed_at": now,
            }
            key = log_key(s.dlq_topic, tp.partition, offset).encode()
            value = json.dumps(entry, separators=(",", ":")).encode()
            acks.append(await self._producer.send(s.replay_topic, value=value, key=key))
            self.replayed[(tp.partition, offset)] = entry
        await asyncio.gather(*acks)

    async def _commit(self) -> None:
        if self.dry_run:
            return
        offsets = {
            tp: walk.commit_at
            for tp, walk in self.walks.items()
            if walk.commit_at is not None and walk.commit_at != walk.committed
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance: the log keeps what was replayed
            log.warning(
                "commit of %s failed (%s); the replay log keeps what was replayed", offsets, exc
            )
            return
        for tp, offset in offsets.items():
            self.walks[tp].committed = offset

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        self._assignments += 1
        if self._assignments > 1:  # another run may have replayed meanwhile
            self.replayed.update(await read_replay_log(self.settings))
        for tp in assigned:
            self.walks.setdefault(tp, _Walk())
        self._assigned.set()

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        if self.pending:
            await self._flush()
        else:
            await self._commit()
        for tp in revoked:
            self.walks.pop(tp, None)

    async def _close(self) -> None:
        for closing in (self._sender, self._producer, self._consumer):
            if closing is None:
                continue
            try:
                await (closing.close() if isinstance(closing, CallbackSender) else closing.stop())
            except Exception:  # noqa: BLE001 - closing after an error: the error is the one to see
                log.debug("closing %r failed", closing, exc_info=True)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, run: Replay) -> None:
        self.run = run

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.run.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.run.assigned(assigned)


async def replay(settings: Settings, selection: Selection, dry_run: bool = False) -> Report:
    """Replay the dead letters `selection` asks for that were not replayed yet."""
    return await Replay(settings, selection, dry_run).run()
