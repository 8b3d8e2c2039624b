"""The outbox (simapp/delivery/outbox.py) with a scripted receiver: waiting out an outage
behind the receiver's breaker, dead letters at CALLBACK_MAX_WAIT or at once for a final
answer, the same bytes on every attempt, hand-back when the flow stops, the memory bound.
The real path (a worker, the results topic, real POSTs to the sink) is
tests/test_receiver_outage.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from simapp.delivery.callbacks import Attempt
from simapp.delivery.dead_letters import DeadLetters, Source
from simapp.delivery.outbox import Outbox, parse_record, receiver_of
from simapp.observe.progress import ProgressReporter

SOURCE = Source("results", 1, 5)


class Topic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    async def send(self, key: bytes, value: Any) -> asyncio.Future:
        self.sent.append((key, value))
        ack = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    def values(self) -> list[dict]:
        return [json.loads(v) for _, v in self.sent]


class Receiver:
    """Answers each POST with `answer(n)` (n counts POSTs from 1); records the bodies."""

    def __init__(self, answer: Any = lambda n: Attempt(True, status=200)) -> None:
        self.answer = answer
        self.posts: list[tuple[str, str, bytes, float]] = []

    async def attempt(self, url: str, simulation_id: str, body: bytes) -> Attempt:
        self.posts.append((url, simulation_id, body, time.monotonic()))
        n = len(self.posts)
        await asyncio.sleep(0)
        return self.answer(n)


def record(sim: str = "sim-1", url: str = "http://rx.example/cb", **extra: Any) -> bytes:
    summary = {"simulation_id": sim, "end_reason": "completed", "duration_ms": 10}
    data = {"summary": summary, "callback_url": url, "batch_id": "b1", "batch_size": 3}
    data.update(extra)
    return json.dumps(data).encode()


class Box:
    def __init__(self, receiver: Receiver, **options: Any) -> None:
        self.dlq, self.progress = Topic(), Topic()
        settings = {
            "max_wait": 5.0,
            "host_rps": 1000.0,
            "fail_max": 3,
            "reset": 0.2,
            "pending_bytes": 10**6,
        }
        settings.update(options)
        self.outbox = Outbox(
            receiver,  # type: ignore[arg-type]
            DeadLetters(self.dlq.send),
            ProgressReporter(self.progress.send),
            **settings,
        )
        self.settled: list[tuple[str, bool]] = []

    async def put(self, value: bytes, sim: str = "sim-1") -> None:
        await self.outbox.put(value, SOURCE, lambda ok: self.settled.append((sim, ok)))

    async def drain(self) -> None:
        async with asyncio.timeout(5):
            while self.outbox.jobs:  # noqa: ASYNC110 - polling a plain set
                await asyncio.sleep(0.01)

    def kinds(self) -> list[tuple[str, str]]:
        return [(m["kind"], m["reason"]) for m in self.progress.values()]


async def test_a_summary_is_posted_counted_and_settled() -> None:
    rx = Receiver()
    box = Box(rx)
    await box.put(record())
    await box.drain()
    ((url, sim, body, _),) = rx.posts
    assert (url, sim) == ("http://rx.example/cb", "sim-1")
    assert json.loads(body) == json.loads(record())["summary"]  # the summary, not the record
    assert box.kinds() == [("completed", "completed")]
    assert box.settled == [("sim-1", True)] and box.dlq.sent == []


async def test_a_failed_simulation_is_delivered_and_counted_failed() -> None:
    box = Box(Receiver())
    await box.put(record(failed=True))
    await box.drain()
    assert box.kinds() == [("failed", "completed")]


async def test_an_outage_is_waited_out_behind_the_breaker_with_the_same_bytes() -> None:
    """The receiver refuses the first 8 POSTs: after fail_max failures its breaker opens,
    then one probe per reset interval, and the summary goes through, never dead-lettered."""
    rx = Receiver(lambda n: Attempt(n > 8, status=200 if n > 8 else 503, error="HTTP 503"))
    box = Box(rx, fail_max=3, reset=0.1)
    await box.put(record())
    await box.drain()
    assert box.settled == [("sim-1", True)] and box.dlq.sent == []
    assert len({body for _, _, body, _ in rx.posts}) == 1  # the same bytes every attempt
    assert len(rx.posts) == 9
    gaps = [b[3] - a[3] for a, b in zip(rx.posts[3:], rx.posts[4:], strict=False)]
    assert min(gaps) >= 0.09  # once open: probes, one per reset interval, not a storm


async def test_many_summaries_share_one_probe_while_the_receiver_is_down() -> None:
    down = {"until": 12}
    rx = Receiver(lambda n: Attempt(n > down["until"], error="HTTP 503", status=503))
    box = Box(rx, fail_max=2, reset=0.1)
    for i in range(20):
        await box.put(record(f"sim-{i}"), f"sim-{i}")
    await box.drain()
    assert sorted(ok for _, ok in box.settled) == [True] * 20
    failed = [p for p in rx.posts[:12]]
    assert len(failed) == 12 and len(rx.posts) == 32  # 12 refused, then each one once
    assert box.dlq.sent == []


async def test_a_summary_not_taken_within_max_wait_is_a_dead_letter() -> None:
    rx = Receiver(lambda n: Attempt(False, status=503, error="HTTP 503"))
    box = Box(rx, max_wait=0.5, reset=0.1)
    await box.put(record())
    await box.drain()
    (dead,) = box.dlq.values()
    assert dead["reason"] == "callback_failed"
    assert "CALLBACK_MAX_WAIT" in dead["detail"] and "HTTP 503" in dead["detail"]
    assert dead["summary"]["simulation_id"] == "sim-1"
    assert box.kinds() == [("failed", "callback_failed")]
    assert box.settled == [("sim-1", True)]


async def test_a_final_answer_is_a_dead_letter_at_once() -> None:
    rx = Receiver(lambda n: Attempt(False, final=True, status=410, error="HTTP 410"))
    box = Box(rx)
    await box.put(record())
    await box.drain()
    assert len(rx.posts) == 1
    assert box.dlq.values()[0]["detail"] == "HTTP 410"


async def test_stopping_the_flow_hands_back_what_is_not_being_posted() -> None:
    rx = Receiver(lambda n: Attempt(False, status=503, error="HTTP 503"))
    box = Box(rx, fail_max=1, reset=30)
    for i in range(3):
        await box.put(record(f"sim-{i}"), f"sim-{i}")
    await asyncio.sleep(0.05)  # the breaker is open: they wait
    box.outbox.on_flow(False)
    await box.drain()
    assert sorted(box.settled) == [("sim-0", False), ("sim-1", False), ("sim-2", False)]
    assert box.dlq.sent == [] and box.progress.sent == []
    await box.put(record("sim-9"), "sim-9")  # closed: handed back at once
    assert box.settled[-1] == ("sim-9", False)


async def test_the_outbox_holds_at_most_its_bytes() -> None:
    gate = asyncio.Event()

    class Slow(Receiver):
        async def attempt(self, url: str, simulation_id: str, body: bytes) -> Attempt:
            await gate.wait()
            return await super().attempt(url, simulation_id, body)

    one = len(record("sim-0"))
    box = Box(Slow(), pending_bytes=2 * one + 1)
    await box.put(record("sim-0"), "sim-0")
    await box.put(record("sim-1"), "sim-1")
    third = asyncio.create_task(box.put(record("sim-2"), "sim-2"))
    await asyncio.sleep(0.05)
    assert not third.done() and box.outbox.held == 2 * one
    gate.set()
    await asyncio.wait_for(third, 2)
    await box.drain()
    assert len(box.settled) == 3


@pytest.mark.parametrize(
    "value", [b"not json", b"[1]", json.dumps({"summary": {"x": 1}}).encode(), b""]
)
async def test_a_record_that_is_not_a_summary_is_dead_lettered(value: bytes) -> None:
    rx = Receiver()
    box = Box(rx)
    await box.put(value)
    assert rx.posts == []
    (dead,) = box.dlq.values()
    assert dead["reason"] == "invalid_result"
    assert box.settled == [("sim-1", True)]


async def test_a_record_written_before_the_outbox_is_not_posted_again() -> None:
    rx = Receiver()
    box = Box(rx)
    old = json.dumps({"simulation_id": "s", "delivered": True, "callback_url": "http://x/"})
    await box.put(old.encode())
    assert rx.posts == [] and box.settled == [("sim-1", True)]


def test_receivers_are_scheme_host_and_port() -> None:
    assert receiver_of("https://API.example.com/a?b") == "https://api.example.com:443"
    assert receiver_of("http://10.0.0.1:8080/x") == "http://10.0.0.1:8080"
    assert parse_record(record()) is not None
