"""The bytes of the JSON records simapp writes, and the size they may not exceed.

Compact UTF-8 JSON (`ensure_ascii=False`): Faust's JSON escapes every non-ASCII character as
six bytes, so a CJK reply took twice its UTF-8 size in a record. A record must also fit the
broker's message size (Kafka's `message.max.bytes`, 1 MiB by default), or the send fails and,
inside Faust's producer buffer, crashes the worker. The conversation engine ends a
conversation whose history outgrows MAX_HISTORY_BYTES (`size_limit`), which keeps every record
well inside MAX_RECORD_BYTES; `fit` is the guard behind it: a record that is still too large
has its longest strings cut in the middle, with a marker saying how much, until it fits, and
says so in a top-level `truncated` field.
"""

from __future__ import annotations

import json
from typing import Any

MARKER = "…[simapp cut {n} characters here: the record was over MAX_RECORD_BYTES]…"
MIN_KEPT = 64  # characters a cut string keeps at least (head and tail)
SLACK_BYTES = 512  # cut this much more than the excess, so one cut is usually enough


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def fit(value: dict[str, Any], max_bytes: int) -> bytes:
    """`value` encoded within `max_bytes`, its longest strings cut when it is larger (the
    dict is changed in place: the caller's copy says what was kept). Raises ValueError when
    even the cut record does not fit (a record of many small strings)."""
    data = encode(value)
    cut = 0
    while len(data) > max_bytes:
        path = _longest_string(value)
        if path is None:
            raise ValueError(f"record of {len(data)} bytes cannot be cut below {max_bytes}")
        container, key, text = path
        excess = len(data) - max_bytes
        text_bytes = len(text.encode("utf-8"))
        slack = len(MARKER.encode("utf-8")) + SLACK_BYTES  # the marker, the `truncated` field
        keep = int((text_bytes - excess - slack) * len(text) / text_bytes)
        keep = max(MIN_KEPT, keep)
        if keep >= len(text):
            keep = len(text) // 2
        if keep < MIN_KEPT:
            raise ValueError(f"record of {len(data)} bytes cannot be cut below {max_bytes}")
        removed = len(text) - keep
        head, tail = text[: keep // 2], text[len(text) - (keep - keep // 2) :]
        container[key] = head + MARKER.format(n=removed) + tail
        cut += removed
        value["truncated"] = {"characters_cut": cut, "max_record_bytes": max_bytes}
        data = encode(value)
    return data


def _longest_string(value: Any) -> tuple[Any, Any, str] | None:
    """(container, key, text) of the longest string longer than MIN_KEPT * 2, or None."""
    best: tuple[Any, Any, str] | None = None
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, str):
                if len(child) > 2 * MIN_KEPT and (best is None or len(child) > len(best[2])):
                    best = (node, key, child)
            elif isinstance(child, dict | list):
                stack.append(child)
    return best
