"""`batch_callback_url` on events: the same URL policy as `callback_url` at decode time
(simapp/simulation/schemas.py), and carried into the results record for the batch report."""

from __future__ import annotations

import json

from simapp.config import load_settings
from simapp.simulation.pipeline import result_record
from simapp.simulation.schemas import EventDecoder, Rejection, SimulationEvent

BASE = {
    "id": "s1",
    "persona": {"name": "P"},
    "intent": "help",
    "max_iterations": 2,
    "callback_url": "https://rx.example.com/cb",
    "model": "gpt-4",
    "batch_id": "b1",
}


def decode(**extra: object) -> SimulationEvent | Rejection:
    return EventDecoder(load_settings()).decode(json.dumps({**BASE, **extra}))


def test_an_internal_batch_callback_url_is_refused_as_forbidden_callback() -> None:
    for url in ("http://127.0.0.1:8080/batch", "http://169.254.169.254/latest", "ftp://x.com/"):
        got = decode(batch_callback_url=url)
        assert isinstance(got, Rejection), url
        assert got.reason == "forbidden_callback" and got.detail.startswith("batch_callback_url")
        assert (got.simulation_id, got.batch_id) == ("s1", "b1")


def test_a_batch_callback_url_is_carried_into_the_results_record() -> None:
    event = decode(batch_callback_url="https://rx.example.com/batch")
    assert isinstance(event, SimulationEvent)
    summary = {"simulation_id": "s1", "end_reason": "completed"}
    record = result_record(event, summary, {"assistant": "gpt-4", "user": "gpt-4"})
    assert record["batch_callback_url"] == "https://rx.example.com/batch"
    plain = decode()
    assert isinstance(plain, SimulationEvent) and plain.batch_callback_url is None
