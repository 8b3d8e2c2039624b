"""Hostile and broken input: every bad event gets a specific DLQ reason; good ones between
them are all delivered; the worker keeps going. Plus property tests of the decoder."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simapp.config import load_settings
from simapp.simulation.schemas import EventDecoder, Rejection, SimulationEvent
from tests.helpers import events_for, read_topic, send_raw, wait_until

GOOD = {
    "id": "sim-ok",
    "persona": {"name": "Ann", "description": "d", "traits": ["calm"]},
    "intent": "Hello",
    "max_iterations": 3,
    "callback_url": "https://api.example.com/cb",
    "model": "gpt-4",
}


def decoder(**kw) -> EventDecoder:
    return EventDecoder(load_settings(**kw))


# ----- unit: the decoder never raises -------------------------------------------------------
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_any_bytes_give_event_or_rejection(raw: bytes) -> None:
    out = decoder().decode(raw)
    assert isinstance(out, SimulationEvent | Rejection)
    if isinstance(out, Rejection):
        assert out.reason and out.detail


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(GOOD) + ["batch_id", "batch_size", "x"]), json_values))
def test_any_json_object_gives_event_or_rejection(obj: dict) -> None:
    out = decoder().decode(json.dumps(obj).encode())
    assert isinstance(out, SimulationEvent | Rejection)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(GOOD)), json_values)
def test_mutating_one_field_of_a_good_event(field: str, value) -> None:
    out = decoder().decode(json.dumps({**GOOD, field: value}).encode())
    assert isinstance(out, SimulationEvent | Rejection)
    if isinstance(out, Rejection):
        assert out.reason in {"invalid_field", "forbidden_callback"}


@pytest.mark.parametrize(
    ("mutation", "reason", "needle"),
    [
        ({"max_iterations": 0}, "invalid_field", "max_iterations"),
        ({"max_iterations": -3}, "invalid_field", "max_iterations"),
        ({"max_iterations": 10**9}, "invalid_field", "MAX_ITERATIONS"),
        ({"max_iterations": "5"}, "invalid_field", "max_iterations"),
        ({"max_iterations": True}, "invalid_field", "max_iterations"),
        ({"persona": "Ann"}, "invalid_field", "persona"),
        ({"intent": "a\x00b"}, "invalid_field", "NUL"),
        ({"callback_url": "file:///etc/passwd"}, "forbidden_callback", "scheme"),
        (
            {"callback_url": "http://169.254.169.254/latest/meta-data"},
            "forbidden_callback",
            "internal",
        ),
        ({"callback_url": "http://127.0.0.1:8080/x"}, "forbidden_callback", "internal"),
        ({"callback_url": "http://[::ffff:10.0.0.1]/x"}, "forbidden_callback", "internal"),
        ({"callback_url": "http://localhost/x"}, "forbidden_callback", "internal"),
        ({"callback_url": "http://user:pw@example.com/x"}, "forbidden_callback", "credentials"),
        ({"id": "../etc"}, "invalid_field", "id"),
        ({"model": "gpt 4; rm"}, "invalid_field", "model"),
    ],
)
def test_specific_rejections(mutation: dict, reason: str, needle: str) -> None:
    out = decoder().decode(json.dumps({**GOOD, **mutation}).encode())
    assert isinstance(out, Rejection), out
    assert out.reason == reason and needle in out.detail, out


def test_allowlists() -> None:
    strict = decoder(callback_allowed_hosts="api.example.com,10.0.0.0/8", allowed_models="gpt-4")
    assert isinstance(strict.decode(json.dumps(GOOD).encode()), SimulationEvent)
    other = {**GOOD, "callback_url": "https://evil.example.net/x"}
    assert strict.decode(json.dumps(other).encode()).reason == "forbidden_callback"
    internal_ok = {**GOOD, "callback_url": "http://10.1.2.3/x"}
    assert isinstance(strict.decode(json.dumps(internal_ok).encode()), SimulationEvent)
    assert (
        strict.decode(json.dumps({**GOOD, "model": "claude-3"}).encode()).reason == "unknown_model"
    )
    big = json.dumps({**GOOD, "intent": "x" * 70_000}).encode()
    assert strict.decode(big).reason == "too_large"
    emoji = {**GOOD, "intent": "Hi 👋🏽 — naïve café", "persona": {"name": "Zoë 🚀"}}
    assert isinstance(strict.decode(json.dumps(emoji).encode()), SimulationEvent)


# ----- end to end: the corpus through a real worker ------------------------------------------
@pytest.mark.slow
def test_bad_event_corpus_goes_to_dlq_and_good_ones_are_delivered(stack, ns, workers):
    worker = workers.start(allowed_models="gpt-4")
    good = events_for(stack, 6)
    g = iter(good)

    def rec(obj) -> tuple[bytes, bytes]:
        key = obj.get("id", "none") if isinstance(obj, dict) else "none"
        return str(key).encode(), json.dumps(obj).encode()

    template = {k: v for k, v in good[0].items() if k not in ("id", "batch_id", "batch_size")}
    bad: list[tuple[tuple[bytes, bytes], str]] = [
        ((b"k1", b"\xff\xfe not json"), "not_json"),
        ((b"k2", b"[1, 2, 3]"), "not_object"),
        (rec({"id": "bad-missing", "intent": "x"}), "invalid_field"),
        (rec({**template, "id": "bad-type", "max_iterations": "3"}), "invalid_field"),
        (rec({**template, "id": "bad-neg", "max_iterations": -1}), "invalid_field"),
        (rec({**template, "id": "bad-huge", "max_iterations": 10**12}), "invalid_field"),
        (rec({**template, "id": "bad-big", "intent": "x" * 5_000_000}), "too_large"),
        (
            rec({**template, "id": "bad-file", "callback_url": "file:///etc/passwd"}),
            "forbidden_callback",
        ),
        (
            rec({**template, "id": "bad-meta", "callback_url": "http://169.254.169.254/"}),
            "forbidden_callback",
        ),
        (rec({**template, "id": "bad-nul", "intent": "a\u0000b"}), "invalid_field"),
        (rec({**template, "id": "bad-model", "model": "mystery-model"}), "unknown_model"),
    ]
    emoji = {**next(g), "intent": "Can you help me 👋🏽 with naïve café 日本語?"}
    goods = [emoji, *g]
    records: list[tuple[bytes, bytes]] = []
    for i, (record, _reason) in enumerate(bad):  # good events between the bad ones
        records.append(record)
        if i < len(goods):
            records.append(rec(goods[i]))
    records.append(rec(dict(emoji)))  # the same id again: reported, not simulated twice
    send_raw(stack, ns, records)

    good_ids = {e["id"] for e in goods}
    assert wait_until(lambda: good_ids <= {i["simulation_id"] for i in stack.sink_items()}, 120)
    expected = [reason for _record, reason in bad] + ["duplicate_id"]
    dead = read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], len(expected), timeout=60)
    assert sorted(d["reason"] for d in dead) == sorted(expected)
    for d in dead:
        assert d["source"]["topic"] == ns.overrides()["kafka_topic"]
        assert isinstance(d["source"]["offset"], int) and d["timestamp"]
        assert d["detail"]
    assert next(d for d in dead if d["reason"] == "too_large")["original"]["truncated"] is True
    delivered = [i for i in stack.sink_items() if i["simulation_id"] == emoji["id"]]
    assert len(delivered) == 1  # the duplicate id was not simulated again
    assert "👋🏽" in delivered[0]["conversation_history"][1]["content"]
    assert worker.alive()
    log = worker.log_path.read_text()
    assert stack.api_key not in log  # API keys never appear in logs
    assert all(stack.api_key not in json.dumps(d) for d in dead)
