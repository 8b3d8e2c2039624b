"""Backoff and server-advised waits, shared by LLM calls and callback deliveries.

One reading of `Retry-After` for every HTTP peer: `retry-after-ms`, `Retry-After` in seconds or
as an HTTP date, and the `x-ratelimit-reset-*` durations some providers send instead. A value
that cannot be read is ignored, never raised: the caller falls back to its own backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

_EPOCH_THRESHOLD = 1e9  # ~2001-09-09 as a Unix time; no provider asks for a 31-year wait
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def backoff(attempt: int, base: float = 0.5, cap: float = 16.0) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt))."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def retry_after_seconds(headers: Mapping[str, Any] | Any | None) -> float | None:
    """Seconds a response asks us to wait before trying again, or None if it does not say.

    Header names are matched case-insensitively (a plain dict from LiteLLM is not a
    case-insensitive mapping like aiohttp's and httpx's headers).
    """
    if not headers:
        return None
    try:
        lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    except (AttributeError, TypeError):
        return None
    value = lowered.get("retry-after-ms")
    if value:
        seconds = _number(value)
        if seconds is not None:
            return seconds / 1000
    value = lowered.get("retry-after")
    if value:
        seconds = _number(value)
        if seconds is not None:
            return seconds
        try:
            return _non_negative(parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset"):
        value = lowered.get(name)
        seconds = duration_seconds(value) if value else None
        if seconds is not None:
            if seconds > _EPOCH_THRESHOLD:  # a Unix time (GitHub style), not a duration
                seconds = max(0.0, seconds - time.time())
            return seconds
    return None


def duration_seconds(value: str) -> float | None:
    """OpenAI-style reset durations: '1s', '20ms', '6m0s', '0.5'; None when unreadable."""
    value = value.strip()
    if not value:
        return None
    plain = _number(value)
    if plain is not None:
        return plain
    total, number, i = 0.0, "", 0
    try:
        while i < len(value):
            ch = value[i]
            if ch.isdigit() or ch == ".":
                number += ch
                i += 1
                continue
            unit = "ms" if value.startswith("ms", i) else ch
            if unit not in _UNITS or not number:
                return None
            total += float(number) * _UNITS[unit]
            number = ""
            i += len(unit)
    except ValueError:  # e.g. '1.2.3s'
        return None
    return total if not number else None


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return _non_negative(number)


def _non_negative(seconds: float) -> float:
    return seconds if seconds > 0 else 0.0  # also maps NaN to 0
