"""The event path (simapp.simulation.pipeline.Pipeline) built from its parts, with fakes at the
edges: a dict for the simulations table, lists for the topics, a scripted LLM.

The real path (Tansu, HTTP, a worker process) is tests/test_pipeline.py; this one pins the
decisions: what is dead-lettered and why, re-keying, the ledger's run/resume/skip/duplicate,
which records, progress messages and rows each outcome writes and that each is durable before
`handle` returns, and that nothing raises. The summary's delivery is the outbox's
(tests/test_outbox.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from simapp.config import load_settings
from simapp.delivery.dead_letters import DeadLetters, Source
from simapp.observe.progress import ProgressReporter
from simapp.simulation.checkpoints import DONE, RUNNING, running_row
from simapp.simulation.conversation import (
    STOP_MARKER,
    Completion,
    ConversationEngine,
    ConversationState,
)
from simapp.simulation.ledger import RunLedger
from simapp.simulation.pipeline import Pipeline
from simapp.simulation.schemas import EventDecoder

SOURCE = Source("events", 2, 17)


def event(**overrides: Any) -> dict[str, Any]:
    data = {
        "id": "sim-1",
        "persona": {"name": "Tess", "description": "tester", "traits": ["curious"]},
        "intent": "Help me test",
        "max_iterations": 3,
        "callback_url": "http://example.com/cb",
        "model": "gpt-4",
        "batch_id": "b1",
        "batch_size": 2,
    }
    data.update(overrides)
    return data


class DictStore:
    """The simulations table as a dict; `put` resolves at once (as a broker ack would)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.puts: list[tuple[str, str, int]] = []

    def get(self, simulation_id: str) -> dict | None:
        return self.rows.get(simulation_id)

    def put(self, simulation_id: str, row: dict, partition: int) -> asyncio.Future:
        self.rows[simulation_id] = row
        self.puts.append((simulation_id, row["status"], partition))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class ScriptedLLM:
    """The assistant answers 'A<n>'; the simulated user goes on once, then says goodbye."""

    def __init__(self, gate: asyncio.Event | None = None, fail: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.gate = gate
        self.fail = fail

    async def complete(self, model: str, messages: list[dict], **options: Any) -> Completion:
        self.calls.append(options.get("role", "assistant"))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if "Stop marker:" in messages[0]["content"]:
            users = sum(1 for m in messages if m["role"] == "assistant")  # swapped view
            return Completion("one more thing" if users < 2 else f"bye {STOP_MARKER}", 3, 2)
        return Completion(f"A{len(self.calls)}", 5, 1)


class Topic:
    """A topic: `send` hands a record over and returns its ack, acked at once unless `hold`;
    `durable_send` waits for the ack (as the worker's results and event sends do)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.hold = False
        self.acks: list[asyncio.Future] = []
        self.fail = fail

    async def send(self, key: bytes, value: Any) -> asyncio.Future:
        if self.fail is not None:
            raise self.fail
        self.sent.append((key, value))
        ack = asyncio.get_running_loop().create_future()
        if not self.hold:
            ack.set_result(None)
        self.acks.append(ack)
        return ack

    async def durable_send(self, key: bytes, value: Any) -> None:
        await (await self.send(key, value))

    def values(self) -> list[Any]:
        return [json.loads(v) if isinstance(v, bytes) else v for _, v in self.sent]


class Parts:
    def __init__(
        self, llm: ScriptedLLM | None = None, max_history_bytes: int | None = None
    ) -> None:
        settings = load_settings(_env_file=None, callback_allowed_hosts="example.com")
        self.store = DictStore()
        self.llm = llm or ScriptedLLM()
        self.dlq, self.progress, self.results, self.events = Topic(), Topic(), Topic(), Topic()
        engine = ConversationEngine(
            self.llm, max_iterations_cap=10, timeout=5, max_history_bytes=max_history_bytes
        )
        self.pipeline = Pipeline(
            decoder=EventDecoder(settings),
            ledger=RunLedger(self.store),
            store=self.store,
            engine=engine,
            dead_letters=DeadLetters(self.dlq.send),
            progress=ProgressReporter(self.progress.send),
            send_result=self.results.durable_send,
            send_event=self.events.durable_send,
        )

    async def handle(self, data: Any, key: bytes | None = b"sim-1", source: Source = SOURCE) -> str:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        return await self.pipeline.handle(raw, source, key)

    def progress_kinds(self) -> list[tuple[str, str | None]]:
        return [(m["kind"], m["reason"]) for m in (json.loads(v) for _, v in self.progress.sent)]

    def dead(self) -> list[dict]:
        return self.dlq.values()


async def test_a_good_event_is_simulated_and_its_summary_recorded() -> None:
    parts = Parts()
    assert await parts.handle(event()) == "completed"
    ((key, record),) = parts.results.sent
    assert key == b"sim-1"
    assert record["summary"]["simulation_id"] == "sim-1"
    assert record["summary"]["end_reason"] == "completed"
    assert record["callback_url"] == "http://example.com/cb"
    assert (record["failed"], record["batch_id"], record["batch_size"]) == (False, "b1", 2)
    # the outbox reports the outcome once it is delivered; here only the start
    assert parts.progress_kinds() == [("consumed", None)]
    assert parts.store.rows["sim-1"]["status"] == DONE
    assert parts.store.rows["sim-1"]["outcome"] == "completed"
    # a running row per LLM call, then the done row, all on the event's partition
    statuses = [status for _, status, _ in parts.store.puts]
    assert statuses == [RUNNING] * len(parts.llm.calls) + [DONE]
    assert {partition for _, _, partition in parts.store.puts} == {SOURCE.partition}
    assert parts.dead() == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json {", "not_json"),
        (json.dumps([1, 2]).encode(), "not_object"),
        (json.dumps(event(max_iterations="three")).encode(), "invalid_field"),
        (json.dumps(event(callback_url="http://169.254.169.254/x")).encode(), "forbidden_callback"),
    ],
)
async def test_bad_input_is_dead_lettered_with_its_reason(raw: bytes, reason: str) -> None:
    parts = Parts()
    assert await parts.handle(raw) == "rejected"
    (record,) = parts.dead()
    assert record["reason"] == reason
    assert record["source"] == {"topic": "events", "partition": 2, "offset": 17}
    assert record["original"]["size"] == len(raw)
    assert parts.results.sent == [] and parts.llm.calls == []
    if reason in ("invalid_field", "forbidden_callback"):  # id and batch known: counted failed
        assert parts.progress_kinds() == [("failed", reason)]


async def test_an_event_keyed_otherwise_is_rekeyed_not_simulated() -> None:
    parts = Parts()
    assert await parts.handle(event(), key=b"something-else") == "rekeyed"
    assert [key for key, _ in parts.events.sent] == [b"sim-1"]
    assert parts.llm.calls == [] and parts.store.rows == {}


async def test_a_redelivered_finished_event_is_skipped_without_an_llm_call() -> None:
    parts = Parts()
    await parts.handle(event())
    calls = len(parts.llm.calls)
    assert await parts.handle(event()) == "skipped_done"  # this worker remembers it
    fresh = Parts()  # another worker: only the table row says it is done
    fresh.store.rows = dict(parts.store.rows)
    assert await fresh.handle(event()) == "skipped_done"
    assert len(parts.llm.calls) == calls and fresh.llm.calls == []
    assert len(parts.results.sent) == 1 and fresh.results.sent == []


async def test_an_interrupted_run_resumes_from_its_last_checkpoint() -> None:
    first = Parts()
    await first.handle(event())
    full_calls = len(first.llm.calls)
    # the state after the first assistant turn, as its checkpoint row holds it
    state = ConversationState(
        history=[
            {"role": "system", "content": "You are a helpful, concise assistant."},
            {"role": "user", "content": "Help me test"},
            {"role": "assistant", "content": "A1"},
        ],
        iterations=1,
    )
    state.usage.llm_calls = 1
    resumed = Parts()
    resumed.store.rows["sim-1"] = running_row(SOURCE.partition, SOURCE.offset, state.to_dict())
    assert await resumed.handle(event()) == "completed"
    assert len(resumed.llm.calls) == full_calls - 1  # the finished turn is not billed again
    ((_, record),) = resumed.results.sent
    payload = record["summary"]
    assert payload["usage"]["llm_calls"] == full_calls
    assert payload["conversation_history"][2]["content"] == "A1"


async def test_the_same_id_at_another_offset_is_a_duplicate() -> None:
    parts = Parts()
    await parts.handle(event())
    later = Source("events", 2, 99)
    assert await parts.handle(event(), source=later) == "duplicate_id"
    (record,) = parts.dead()
    assert record["reason"] == "duplicate_id"
    assert "offset 17" in record["detail"]
    assert len(parts.results.sent) == 1


async def test_a_redelivery_while_running_waits_and_is_not_rerun() -> None:
    gate = asyncio.Event()
    parts = Parts(llm=ScriptedLLM(gate=gate))
    first = asyncio.create_task(parts.handle(event()))
    await asyncio.sleep(0.01)
    again = asyncio.create_task(parts.handle(event()))
    await asyncio.sleep(0.01)
    assert not again.done()  # waits for the run in flight
    gate.set()
    assert await first == "completed"
    assert await again == "skipped_running"
    assert len(parts.results.sent) == 1


async def test_a_crash_in_our_code_is_dead_lettered_not_raised() -> None:
    parts = Parts(llm=ScriptedLLM(fail=ZeroDivisionError("bug")))
    assert await parts.handle(event()) == "internal_error"
    (record,) = parts.dead()
    assert record["reason"] == "internal_error" and "ZeroDivisionError" in record["detail"]
    assert parts.progress_kinds()[-1] == ("failed", "internal_error")
    assert "sim-1" not in parts.store.rows or parts.store.rows["sim-1"]["status"] != DONE
    assert await parts.handle(event()) == "internal_error"  # not remembered as finished


async def test_an_event_whose_dead_letter_cannot_be_written_comes_back() -> None:
    """No outcome, no commit: the event is handed back (DEFERRED) instead of being acked."""
    parts = Parts(llm=ScriptedLLM(fail=ZeroDivisionError("bug")))
    parts.dlq.fail = ConnectionError("broker gone")
    assert await parts.handle(event()) == "deferred"
    assert await parts.handle(b"not json {") == "deferred"  # a rejection too
    parts.dlq.fail = None
    assert await parts.handle(event()) == "internal_error"  # and when it comes back: recorded


async def test_a_rekey_that_cannot_be_sent_is_dead_lettered_with_the_event() -> None:
    parts = Parts()
    parts.events.fail = ConnectionError("broker gone")
    assert await parts.handle(event(), key=b"other") == "internal_error"
    (record,) = parts.dead()
    assert record["reason"] == "internal_error" and "broker gone" in record["detail"]
    assert json.loads(record["original"]["value"])["id"] == "sim-1"  # replayable


@pytest.mark.parametrize("topic", ["results", "progress", "dlq"])
async def test_nothing_returns_before_its_records_are_acked(topic: str) -> None:
    """handle() returns (and the agent acks the event) only once what records its outcome
    is durable: the summary and the "consumed" message, or the dead letter."""
    parts = Parts()
    getattr(parts, topic).hold = True
    data = event() if topic != "dlq" else event(max_iterations="three")
    task = asyncio.create_task(parts.handle(data))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if getattr(parts, topic).acks:
            break
    await asyncio.sleep(0.05)
    assert getattr(parts, topic).acks and not task.done()
    for ack in getattr(parts, topic).acks:
        ack.set_result(None)
    assert await asyncio.wait_for(task, 2) in ("completed", "rejected")


async def test_a_huge_reply_ends_the_conversation_with_size_limit() -> None:
    """A model answering 60,000 CJK characters a turn: the conversation ends with
    size_limit and its history so far, within MAX_HISTORY_BYTES; nothing raises."""

    class Verbose(ScriptedLLM):
        async def complete(self, model: str, messages: list[dict], **options: Any) -> Completion:
            self.calls.append(options.get("role", "assistant"))
            return Completion("字" * 60_000, 5, 60_000)

    parts = Parts(llm=Verbose(), max_history_bytes=100_000)
    assert await parts.handle(event(max_iterations=10)) == "size_limit"
    ((_, record),) = parts.results.sent
    summary = record["summary"]
    assert summary["end_reason"] == "size_limit"
    size = len(json.dumps(summary["conversation_history"], ensure_ascii=False).encode())
    assert size <= 100_000
    assert "MAX_HISTORY_BYTES" in summary["conversation_history"][-1]["content"]


async def test_a_turn_row_waits_for_the_previous_one_to_be_durable() -> None:
    """The row of turn N is written only once turn N-1's row is acked, so a crash re-bills at
    most the call in flight and one turn, however far the producer lags."""
    parts = Parts()
    acks: list[asyncio.Future] = []

    def put(simulation_id: str, row: dict, partition: int) -> asyncio.Future:
        parts.store.rows[simulation_id] = row
        acks.append(asyncio.get_running_loop().create_future())  # acked by the test
        return acks[-1]

    parts.store.put = put  # type: ignore[method-assign]
    decoded = parts.pipeline.decoder.decode(json.dumps(event()).encode())
    checkpoint = parts.pipeline.checkpointer(decoded, SOURCE, None)
    assert checkpoint is not None
    state = ConversationState(history=[])
    await asyncio.wait_for(checkpoint(state), 1)  # the first row goes out, not awaited
    second = asyncio.create_task(checkpoint(state))
    await asyncio.sleep(0.01)
    assert len(acks) == 1 and not second.done()  # held: the first row is not durable yet
    acks[0].set_result(None)
    await asyncio.wait_for(second, 1)
    assert len(acks) == 2  # written once the first was acked, not itself awaited
