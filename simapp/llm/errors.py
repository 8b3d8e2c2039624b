"""What a failed LLM attempt means, the same for every route.

Routes turn their failures into `ProviderError` with a `kind`; the client decides from the
kind alone: retry (timeout, server_error, connection_error), pause the budget (rate_limited),
or end the simulation (fatal, context_window).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RATE_LIMITED = "rate_limited"
FATAL = "fatal"  # our request is wrong or refused (400, 401, 403, 404, 422): retrying won't help
CONTEXT_WINDOW = "context_window"  # the conversation no longer fits the model
TIMEOUT = "timeout"
SERVER_ERROR = "server_error"
CONNECTION_ERROR = "connection_error"
RETRYABLE = frozenset({TIMEOUT, SERVER_ERROR, CONNECTION_ERROR})
BACKEND_FAILURES = RETRYABLE  # what counts towards opening the circuit breaker

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "context_window",
    "too many tokens",
    "prompt is too long",
)


class ProviderError(Exception):
    """One attempt failed; `kind` says what to do about it."""

    def __init__(
        self,
        kind: str,
        message: str,
        status: int | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.headers = headers


def kind_of_status(status: int, body: str = "") -> str:
    """The kind of an HTTP error answer (status != 2xx)."""
    if status == 429:
        return RATE_LIMITED
    if status in (400, 413) and is_context_window_text(body):
        return CONTEXT_WINDOW
    if status in (400, 401, 403, 404, 422):
        return FATAL
    if status == 408:
        return TIMEOUT
    if status >= 500:
        return SERVER_ERROR
    return CONNECTION_ERROR


def is_context_window_text(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _CONTEXT_MARKERS)


def is_backend_failure(exc: BaseException) -> bool:
    """Only backend trouble counts towards opening the breaker, not our bad requests or 429s."""
    return not isinstance(exc, ProviderError) or exc.kind in BACKEND_FAILURES
