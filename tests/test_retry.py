"""simapp.limits.retry: full-jitter backoff and the one reading of server-advised waits
(Retry-After)."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from simapp.limits.retry import backoff, duration_seconds, retry_after_seconds


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After": "2"}, 2.0),  # a plain dict with HTTP's own spelling
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise one wins
        ({"x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "1m30.5s"}, 90.5),
        ({"x-ratelimit-reset-tokens": "0.5"}, 0.5),
        ({"x-ratelimit-reset-requests": "1h"}, 3600.0),
        ({"retry-after": "soon", "x-ratelimit-reset-requests": "3s"}, 3.0),
        ({"x-ratelimit-reset-requests": "1.2.3s"}, None),  # garbage is ignored, not raised
        ({"x-ratelimit-reset-requests": "5 parsecs"}, None),
        ({"content-type": "application/json"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_seconds(headers: Any, expected: float | None) -> None:
    got = retry_after_seconds(headers)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_retry_after_http_date_and_epoch() -> None:
    in_3s = datetime.now(UTC) + timedelta(seconds=3)
    assert retry_after_seconds({"retry-after": format_datetime(in_3s, usegmt=True)}) == (
        pytest.approx(3.0, abs=1.1)
    )
    past = datetime.now(UTC) - timedelta(minutes=5)
    assert retry_after_seconds({"retry-after": format_datetime(past, usegmt=True)}) == 0.0
    # x-ratelimit-reset as a Unix time (GitHub style) is not "55 years from now"
    assert retry_after_seconds({"x-ratelimit-reset": str(int(time.time()) + 4)}) == (
        pytest.approx(4.0, abs=1.1)
    )


def test_retry_after_httpx_headers() -> None:
    import httpx

    assert retry_after_seconds(httpx.Headers({"Retry-After": "7"})) == 7.0


def test_retry_after_ignores_what_is_not_a_mapping() -> None:
    assert retry_after_seconds(["retry-after", "2"]) is None
    assert retry_after_seconds("retry-after: 2") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1s", 1.0),
        ("20ms", 0.02),
        ("6m0s", 360.0),
        ("1m30.5s", 90.5),
        ("1h2m3s", 3723.0),
        (" 0.5 ", 0.5),
        ("-2", 0.0),
        ("1.2.3s", None),
        ("5 parsecs", None),
        ("s", None),
        ("10", 10.0),
        ("10x", None),
        ("1s5", None),  # a number without its unit at the end
    ],
)
def test_duration_seconds(value: str, expected: float | None) -> None:
    got = duration_seconds(value)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(("base", "cap"), [(0.5, 16.0), (1.0, 30.0), (0.1, 0.1)])
def test_backoff_stays_within_full_jitter_bounds(base: float, cap: float) -> None:
    rng_state = random.getstate()
    random.seed(1234)
    try:
        for attempt in range(12):
            ceiling = min(cap, base * 2**attempt)
            draws = [backoff(attempt, base, cap) for _ in range(300)]
            assert all(0.0 <= d <= ceiling for d in draws)
            assert max(draws) <= cap
            # full jitter: spread over the whole range, not clustered at the ceiling
            assert min(draws) < 0.1 * ceiling
            assert max(draws) > 0.9 * ceiling
    finally:
        random.setstate(rng_state)


def test_backoff_defaults_and_growth() -> None:
    rng_state = random.getstate()
    random.seed(99)
    try:
        # Defaults: base 0.5 s, cap 16 s.
        assert all(0.0 <= backoff(0) <= 0.5 for _ in range(200))
        assert all(0.0 <= backoff(3) <= 4.0 for _ in range(200))
        assert all(0.0 <= backoff(50) <= 16.0 for _ in range(200))  # no overflow, capped
        # The mean doubles per attempt until the cap.
        means = [sum(backoff(a, 1.0, 1000.0) for _ in range(2000)) / 2000 for a in range(5)]
        for a, mean in enumerate(means):
            assert mean == pytest.approx(2**a / 2, rel=0.1)
    finally:
        random.setstate(rng_state)
