"""The outbox's part in the batch report (simapp/delivery/outbox.py), with a scripted receiver:
the facts on a simulation's final progress message, a batch record POSTed with the batch id as
Idempotency-Key and no progress message, a repeat dropped, an undeliverable one dead-lettered.
The real path is tests/test_report_e2e.py."""

from __future__ import annotations

import json

from simapp.delivery.callbacks import Attempt
from simapp.delivery.outbox import parse_record
from tests.test_outbox import Box, Receiver, record


def batch(batch_id: str = "b1", url: str = "http://rx.example/batch") -> bytes:
    report = {"batch_id": batch_id, "simulations": 3, "progress": {"done": True}}
    return json.dumps(
        {"kind": "batch", "batch": batch_id, "summary": report, "callback_url": url}
    ).encode()


async def test_the_final_message_carries_the_facts_of_the_record() -> None:
    box = Box(Receiver())
    facts = {"persona": "Ann", "endpoint": None, "models": {"assistant": "m1", "user": "m2"}}
    summary = {
        "simulation_id": "sim-1",
        "end_reason": "timeout",
        "duration_ms": 10,
        "total_iterations": 4,
        "usage": {"by_role": {"assistant": {"llm_calls": 2, "cost_usd": 0.5}}},
    }
    value = json.dumps(
        {"summary": summary, "callback_url": "http://rx.example/cb", "batch_id": "b1",
         "batch_size": 3, "facts": facts, "batch_callback_url": "http://rx.example/batch"}
    ).encode()  # fmt: skip
    await box.put(value)
    await box.drain()
    (message,) = box.progress.values()
    got = message["facts"]
    assert got["persona"] == "Ann" and got["models"] == {"assistant": "m1", "user": "m2"}
    assert got["usage"] == {"assistant": [2, 0, 0, 0.5]} and got["iterations"] == 4
    assert got["ref"] == [1, 5]  # a timeout is listed: where its transcript is
    assert got["batch_callback_url"] == "http://rx.example/batch" and got["dead"] is False


async def test_a_dead_lettered_summary_says_so_in_its_facts() -> None:
    box = Box(Receiver(lambda n: Attempt(False, final=True, status=410, error="HTTP 410")))
    await box.put(record())
    await box.drain()
    (message,) = box.progress.values()
    assert message["kind"] == "failed" and message["facts"]["dead"] is True
    assert message["facts"]["ref"] == [1, 5]


async def test_a_batch_record_is_posted_with_the_batch_id_once_and_sends_no_progress() -> None:
    rx = Receiver()
    box = Box(rx)
    await box.put(batch(), sim="b1")
    await box.drain()
    ((url, key, body, _),) = rx.posts
    assert (url, key) == ("http://rx.example/batch", "b1")  # Idempotency-Key: the batch id
    assert json.loads(body)["simulations"] == 3
    assert box.progress.sent == [] and box.settled == [("b1", True)]
    await box.put(batch(), sim="b1")  # written twice by a progress agent that crashed
    await box.drain()
    assert len(rx.posts) == 1 and box.settled == [("b1", True), ("b1", True)]


async def test_an_undeliverable_batch_report_is_a_dead_letter_of_its_batch() -> None:
    box = Box(Receiver(lambda n: Attempt(False, final=True, status=404, error="HTTP 404")))
    await box.put(batch("b9"), sim="b9")
    await box.drain()
    (dead,) = box.dlq.values()
    assert dead["reason"] == "callback_failed" and dead["batch_id"] == "b9"
    assert dead["simulation_id"] is None and dead["detail"].startswith("batch report")
    assert dead["summary"]["batch_id"] == "b9" and box.progress.sent == []


def test_parse_record_takes_batch_records_and_refuses_half_ones() -> None:
    assert parse_record(batch())["batch"] == "b1"
    assert parse_record(json.dumps({"kind": "batch", "summary": {}}).encode()) is None
    no_url = {"kind": "batch", "batch": "b1", "summary": {}}
    assert parse_record(json.dumps(no_url).encode()) is None
