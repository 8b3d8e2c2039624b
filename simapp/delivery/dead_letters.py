"""Dead letters: the record format, the writer, reading them back, and the replay mark.

A dead letter is one record on DLQ_TOPIC per rejected or undeliverable event: `reason` (a
stable code, also a metrics label), `detail` for humans, `simulation_id`, `batch_id`, `source`
(topic/partition/offset), `timestamp`, and either `original` (the event bytes, UTF-8 or
base64, capped at ORIGINAL_LIMIT) or the undeliverable `summary` with its `callback_url`.

`faust -A simapp dlq replay` (simapp/delivery/replay.py) re-queues an `original` with a
`ReplayMark` in its headers: which dead letter it replays and the offset of the event that was
dead-lettered, so the worker takes it for a new attempt of that event and not for a duplicate
of its id (simapp/simulation/ledger.py). Events are untrusted and anyone who can produce one
can write the header, so the mark is only believed where believing it costs nothing: it lets a
simulation that never finished run (or resume) and never re-simulates a finished one, unless
it is forced, and a forced mark counts only with a valid HMAC under DLQ_REPLAY_SECRET over the
mark and the event's bytes (with the secret set, every mark needs it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from simapp.config import Settings
from simapp.kafka.reader import TopicReader, json_value
from simapp.kafka.records import fit
from simapp.observe import metrics

log = logging.getLogger(__name__)

ORIGINAL_LIMIT = 256 * 1024  # bytes of the original event kept in a dead letter
REASONS = (
    "empty",
    "not_json",
    "not_object",
    "invalid_event",
    "invalid_field",
    "too_large",
    "forbidden_callback",
    "unknown_model",
    "duplicate_id",
    "callback_failed",
    "invalid_result",
    "internal_error",
)

Send = Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]  # (key, value) -> the ack to await


@dataclass(frozen=True, slots=True)
class Source:
    """Where an event was read: the dead letter's `source` and the table row's origin."""

    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def encode_original(raw: bytes | None) -> dict[str, Any]:
    """The original event bytes for a dead letter: text when UTF-8, else base64; capped."""
    if raw is None:
        return {"encoding": "none", "value": None, "size": 0}
    size = len(raw)
    kept = raw[:ORIGINAL_LIMIT]
    try:
        value, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return {"encoding": encoding, "value": value, "size": size, "truncated": size > len(kept)}


def dead_letter_record(
    reason: str,
    detail: str,
    source: Source,
    simulation_id: str | None,
    *,
    original: bytes | None = None,
    summary: dict[str, Any] | None = None,
    callback_url: str | None = None,
    batch_id: str | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "reason": reason,
        "detail": detail,
        "simulation_id": simulation_id,
        "batch_id": batch_id,
        "source": source.as_dict(),
        "timestamp": datetime.now(UTC).isoformat(),
        "failed_at": time.time(),
    }
    if summary is not None:
        record["summary"] = summary
        record["callback_url"] = callback_url
    else:
        record["original"] = encode_original(original)
    return record


class DeadLetters:
    """Writes dead letters (keyed by simulation id, else by source) and counts them.

    `send(key, value)` hands the record's bytes to the producer and returns the broker's
    acknowledgement, which `write` awaits: an outcome is recorded only once it is durable.
    A record larger than `max_bytes` has its longest strings cut (simapp/kafka/records.py).
    """

    def __init__(self, send: Send, max_bytes: int = 900_000) -> None:
        self._send = send
        self.max_bytes = max_bytes

    async def write(
        self, reason: str, detail: str, source: Source, simulation_id: str | None, **extra: Any
    ) -> None:
        record = dead_letter_record(reason, detail, source, simulation_id, **extra)
        key = simulation_id or f"{source.topic}-{source.partition}-{source.offset}"
        await (await self._send(key.encode(), fit(record, self.max_bytes)))
        metrics.dead_letters.labels(reason).inc()


async def read_dead_letters(settings: Settings, idle: float = 2.0) -> list[dict[str, Any]]:
    """Every record of the DLQ topic, from the beginning (no consumer group, no commits)."""
    out: list[dict[str, Any]] = []
    async with TopicReader(settings) as reader:
        await reader.from_start(settings.dlq_topic)
        async for record in reader.records(idle=idle):
            item = json_value(record)
            if isinstance(item, dict):
                item["_dlq"] = {"partition": record.partition, "offset": record.offset}
                out.append(item)
    return out


def select(
    records: Iterable[dict], reason: str | None = None, simulation_id: str | None = None
) -> list[dict]:
    return [
        r
        for r in records
        if (reason is None or r.get("reason") == reason)
        and (simulation_id is None or r.get("simulation_id") == simulation_id)
    ]


def original_bytes(record: dict) -> bytes | None:
    """The dead-lettered event's bytes, or None when the record does not hold them whole."""
    original = record.get("original")
    if not isinstance(original, dict):
        return None
    value = original.get("value")
    if not isinstance(value, str) or original.get("truncated"):
        return None
    if original.get("encoding") == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            return None
    return value.encode("utf-8")


# -- the replay mark -------------------------------------------------------------------------

MARK_HEADER = "simapp-replay"
MARK_SIGNATURE_HEADER = "simapp-replay-signature"
MARK_MAX_BYTES = 1024


@dataclass(frozen=True, slots=True)
class ReplayMark:
    """What a re-queued event carries: the dead letter it replays (`attempt`, "topic:partition:
    offset" of the DLQ record: every copy of one replay has the same), the event that was
    dead-lettered (`source`), and whether `dlq replay --force` asked to re-simulate."""

    attempt: str
    source: Source
    force: bool = False

    def encode(self) -> bytes:
        return json.dumps(
            {"v": 1, "attempt": self.attempt, "source": self.source.as_dict(), "force": self.force},
            separators=(",", ":"),
        ).encode()

    def headers(self, value: bytes, key: bytes | None) -> list[tuple[str, bytes]]:
        """The Kafka headers of the re-queued event (signed when a key is given)."""
        mark = self.encode()
        out = [(MARK_HEADER, mark)]
        if key is not None:
            out.append((MARK_SIGNATURE_HEADER, mark_signature(key, mark, value).encode()))
        return out

    def replays(self, topic: str, partition: Any, offset: Any) -> bool:
        """Whether this replays the event read at topic[partition]@offset."""
        s = self.source
        return (s.topic, s.partition, s.offset) == (topic, partition, offset)

    @classmethod
    def read(cls, headers: Any, value: bytes | None, key: bytes | None) -> ReplayMark | None:
        """The mark of an event, or None: no mark, a malformed one, or (with DLQ_REPLAY_SECRET,
        `key`) one without a valid signature. Without a key a mark is read but never forced.
        Never raises: the headers are the producer's."""
        raw = _header(headers, MARK_HEADER)
        if raw is None:
            return None
        mark = _parse_mark(raw)
        if mark is None:
            log.warning("a replay mark that is not one was ignored: %r", raw[:200])
            return None
        if key is not None:
            signature = _header(headers, MARK_SIGNATURE_HEADER) or b""
            expected = mark_signature(key, raw, value or b"").encode()
            if not hmac.compare_digest(signature, expected):
                log.warning(
                    "replay mark of %s without a valid signature ignored (DLQ_REPLAY_SECRET)",
                    mark.attempt,
                )
                return None
        elif mark.force:
            log.warning(
                "forced replay mark of %s read as unforced: DLQ_REPLAY_SECRET is not set",
                mark.attempt,
            )
            mark = cls(mark.attempt, mark.source, force=False)
        return mark


def mark_signature(key: bytes, mark: bytes, value: bytes) -> str:
    """HMAC-SHA256 (hex) of the mark and the event's bytes: a mark cannot be moved to another
    event, nor changed."""
    return hmac.new(key, mark + b"\n" + hashlib.sha256(value).digest(), hashlib.sha256).hexdigest()


def _header(headers: Any, name: str) -> bytes | None:
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    try:
        for item in pairs:
            if isinstance(item, Sequence) and len(item) == 2 and item[0] == name:
                value = item[1]
                return value if isinstance(value, bytes) else None
    except TypeError:
        return None
    return None


def _parse_mark(raw: bytes) -> ReplayMark | None:
    if len(raw) > MARK_MAX_BYTES:
        return None
    try:
        data = json.loads(raw)
        source = data["source"]
        mark = ReplayMark(
            attempt=data["attempt"],
            source=Source(source["topic"], source["partition"], source["offset"]),
            force=data.get("force", False),
        )
    except (ValueError, TypeError, KeyError):
        return None
    ints = (mark.source.partition, mark.source.offset)
    if data.get("v") != 1 or not isinstance(mark.attempt, str) or not mark.attempt:
        return None
    if not isinstance(mark.source.topic, str) or not isinstance(mark.force, bool):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in ints):
        return None
    return mark
