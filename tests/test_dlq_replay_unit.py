"""`dlq replay`'s decisions, without a broker: what each dead letter gets (`plan`), the replay
mark and its signature, and how the worker's ledger takes a replayed event (a new attempt of
the event it names, never a re-run of a finished simulation unless forced and signed).

The real path (a worker, Tansu, the sink, `faust -A simapp dlq ...` as typed) is
tests/test_dlq_replay.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from simapp.delivery.dead_letters import (
    MARK_HEADER,
    MARK_SIGNATURE_HEADER,
    ReplayMark,
    Source,
    dead_letter_record,
)
from simapp.delivery.replay import (
    CANNOT,
    FILTERED,
    LEFT_ALONE,
    REDELIVER,
    REQUEUE,
    Selection,
    plan,
    replay_status,
)
from simapp.simulation.checkpoints import DONE, done_row, running_row
from simapp.simulation.conversation import ConversationState
from tests.test_pipeline_unit import SOURCE, Parts, event

KEY = b"k" * 32
RAW = json.dumps(event()).encode()


def letter(reason: str, **extra: Any) -> dict[str, Any]:
    if reason == "callback_failed":
        extra.setdefault("summary", {"simulation_id": "sim-1", "end_reason": "completed"})
        extra.setdefault("callback_url", "http://example.com/cb")
    else:
        extra.setdefault("original", RAW)
    return dead_letter_record(reason, "detail", SOURCE, "sim-1", **extra)


# -- plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "selection", "expected"),
    [
        (letter("callback_failed"), Selection(), REDELIVER),
        (letter("forbidden_callback"), Selection(), REQUEUE),
        (letter("invalid_field"), Selection(reason="invalid_field"), REQUEUE),
        # internal_error: re-queued into the same bug unless named
        (letter("internal_error"), Selection(), LEFT_ALONE),
        (letter("internal_error"), Selection(simulation_id="sim-1"), LEFT_ALONE),
        (letter("internal_error"), Selection(reason="internal_error"), REQUEUE),
        # duplicate_id: the id was simulated; only --force re-simulates
        (letter("duplicate_id"), Selection(), LEFT_ALONE),
        (letter("duplicate_id"), Selection(reason="duplicate_id"), LEFT_ALONE),
        (letter("duplicate_id"), Selection(force=True), REQUEUE),
        # filters keep a record for a later run
        (letter("callback_failed"), Selection(reason="forbidden_callback"), FILTERED),
        (letter("forbidden_callback"), Selection(simulation_id="other"), FILTERED),
        # nothing to replay, whatever the filter
        (letter("too_large", original=b"x" * (300 * 1024)), Selection(), CANNOT),
        (letter("invalid_result"), Selection(reason="invalid_result"), CANNOT),
        (letter("not_json", original=b"{nope"), Selection(), CANNOT),  # never an event
        (letter("not_object", original=b"[1]"), Selection(reason="not_object"), CANNOT),
        (letter("empty", original=None), Selection(), CANNOT),
        ({"reason": "callback_failed", "summary": {"simulation_id": "s"}}, Selection(), CANNOT),
        ("not a dead letter", Selection(), CANNOT),
    ],
)
def test_what_replay_does_with_each_dead_letter(
    record: Any, selection: Selection, expected: str
) -> None:
    assert plan(record, selection) == expected


def test_list_says_what_a_pending_record_needs() -> None:
    assert replay_status(letter("internal_error"), None) == {
        "status": "pending",
        "action": REQUEUE,
        "needs": "--reason internal_error",
    }
    assert replay_status(letter("duplicate_id"), None)["needs"] == "--force"
    assert replay_status(letter("invalid_result"), None) == {"status": "cannot"}
    logged = {"action": "redelivered", "replayed_at": "t", "requeued_to": None}
    assert replay_status(letter("callback_failed"), logged)["status"] == "replayed"


# -- the mark --------------------------------------------------------------------------------


def mark(offset: int = 17, force: bool = False, attempt: str = "dlq:0:5") -> ReplayMark:
    return ReplayMark(attempt, Source(SOURCE.topic, SOURCE.partition, offset), force)


def test_a_signed_mark_is_read_back() -> None:
    headers = mark(force=True).headers(RAW, KEY)
    assert ReplayMark.read(headers, RAW, KEY) == mark(force=True)
    assert ReplayMark.read(dict(headers), RAW, KEY) == mark(force=True)  # a mapping too


def test_with_a_secret_an_unsigned_forged_or_moved_mark_is_ignored() -> None:
    unsigned = mark(force=True).headers(RAW, None)
    assert ReplayMark.read(unsigned, RAW, KEY) is None
    forged = mark(force=True).headers(RAW, b"x" * 32)
    assert ReplayMark.read(forged, RAW, KEY) is None
    moved = mark(force=True).headers(RAW, KEY)  # a real signature on another event's bytes
    assert ReplayMark.read(moved, RAW + b" ", KEY) is None
    changed = [(MARK_HEADER, mark(offset=3, force=True).encode()), moved[1]]
    assert ReplayMark.read(changed, RAW, KEY) is None


def test_without_a_secret_a_mark_is_read_but_never_forced() -> None:
    assert ReplayMark.read(mark(force=True).headers(RAW, None), RAW, None) == mark()


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1]",
        b'{"v": 1}',
        b'{"v": 2, "attempt": "a", "source": {"topic": "t", "partition": 0, "offset": 1}}',
        b'{"v": 1, "attempt": "a", "source": {"topic": "t", "partition": -1, "offset": 1}}',
        b'{"v": 1, "attempt": "a", "source": {"topic": "t", "partition": 0, "offset": true}}',
        b'{"v": 1, "attempt": "a", "source": {"topic": "t", "partition": 0, "offset": 1},'
        b' "force": "yes"}',
        b'{"v": 1, "attempt": "", "source": {"topic": "t", "partition": 0, "offset": 1}}',
        b"{" + b" " * 2000 + b"}",
    ],
)
def test_a_malformed_mark_is_no_mark(value: bytes) -> None:
    assert ReplayMark.read([(MARK_HEADER, value)], RAW, None) is None


def test_headers_that_are_not_headers_are_no_mark() -> None:
    for headers in (None, [], [("x", b"1")], [(MARK_HEADER, "str")], 42, [(1, 2, 3)]):
        assert ReplayMark.read(headers, RAW, None) is None
    assert MARK_SIGNATURE_HEADER != MARK_HEADER


# -- the worker's ledger through the pipeline ---------------------------------------------

REPLAYED = Source(SOURCE.topic, SOURCE.partition, 40)  # where the replayed copy lands


def interrupted_row(parts: Parts) -> None:
    """The row an internal_error left: running at SOURCE, after one turn."""
    state = ConversationState(
        history=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    )
    state.add("assistant", "A1")
    state.iterations = 1
    state.add("user", "one more thing")
    parts.store.rows["sim-1"] = running_row(SOURCE.partition, SOURCE.offset, state.to_dict())


async def replayed(
    parts: Parts,
    m: ReplayMark | None,
    key: bytes | None = None,
    at: Source = REPLAYED,
    signed_with: bytes | None = None,
) -> str:
    """The copy of the event at `at` with the mark `m` (signed with `signed_with`, default the
    worker's `key`), as the agent hands it over."""
    headers = m.headers(RAW, signed_with or key) if m is not None else []
    read = ReplayMark.read(headers, RAW, key)
    return await parts.pipeline.handle(RAW, at, b"sim-1", read)


async def test_without_a_mark_the_copy_is_a_duplicate() -> None:
    parts = Parts()
    interrupted_row(parts)
    assert await replayed(parts, None) == "duplicate_id"


async def test_a_replayed_internal_error_resumes_from_its_row_as_a_new_attempt() -> None:
    parts = Parts()
    interrupted_row(parts)
    assert await replayed(parts, mark()) == "completed"
    row = parts.store.rows["sim-1"]
    assert (row["status"], row["offset"], row["replay"]) == (DONE, 40, "dlq:0:5")
    assert parts.dead() == []
    # resumed after its first turn: the history kept it
    history = parts.results.values()[0]["summary"]["conversation_history"]
    assert [m["content"] for m in history[2:4]] == ["A1", "one more thing"]


async def test_a_second_copy_of_the_same_replay_is_not_run_again() -> None:
    parts = Parts()
    interrupted_row(parts)
    assert await replayed(parts, mark()) == "completed"
    calls = len(parts.llm.calls)
    assert await replayed(parts, mark(), at=Source(SOURCE.topic, 2, 41)) == "skipped_done"
    # with the secret, a copy of a forced replay is the same attempt too: not re-simulated
    forced = mark(force=True, attempt="dlq:0:6")
    assert await replayed(parts, forced, KEY, Source(SOURCE.topic, 2, 42)) == "completed"
    calls = len(parts.llm.calls)
    assert await replayed(parts, forced, KEY, Source(SOURCE.topic, 2, 43)) == "skipped_done"
    assert len(parts.llm.calls) == calls


async def test_a_replay_of_a_finished_simulation_is_skipped_not_re_run() -> None:
    parts = Parts()
    parts.store.rows["sim-1"] = done_row(SOURCE.partition, SOURCE.offset, "completed")
    assert await replayed(parts, mark()) == "skipped_done"
    assert parts.llm.calls == [] and parts.results.sent == []


async def test_a_forced_signed_replay_re_simulates_a_finished_id() -> None:
    parts = Parts()
    parts.store.rows["sim-1"] = done_row(SOURCE.partition, 3, "completed")
    assert await replayed(parts, mark(offset=9, force=True), KEY) == "completed"
    assert parts.llm.calls and parts.store.rows["sim-1"]["offset"] == 40


async def test_hostile_marks_never_re_simulate_a_finished_id() -> None:
    """A producer can write any header. Without the secret a forced mark is not forced; with
    it, a mark not signed with it is no mark; a mark naming another event is a duplicate."""
    parts = Parts()
    parts.store.rows["sim-1"] = done_row(SOURCE.partition, SOURCE.offset, "completed")
    # no secret: "force" is ignored; it names the row's own event: skipped, not re-run
    assert await replayed(parts, mark(force=True)) == "skipped_done"
    # no secret: a mark naming another offset is a duplicate like any reused id
    assert await replayed(parts, mark(offset=99), at=Source(SOURCE.topic, 2, 41)) == (
        "duplicate_id"
    )
    # with the secret, forged and unsigned forced marks are no marks: duplicates
    forged = mark(offset=SOURCE.offset, force=True)
    at = Source(SOURCE.topic, 2, 42)
    assert await replayed(parts, forged, KEY, at, signed_with=b"x" * 32) == "duplicate_id"
    assert ReplayMark.read([(MARK_HEADER, forged.encode())], RAW, KEY) is None  # unsigned
    assert parts.llm.calls == [] and parts.results.sent == []
    assert [d["reason"] for d in parts.dead()] == ["duplicate_id", "duplicate_id"]


async def test_a_replayed_rejected_event_with_no_row_runs() -> None:
    parts = Parts()
    assert await replayed(parts, mark()) == "completed"
    assert parts.store.rows["sim-1"]["replay"] == "dlq:0:5"
