"""What an LLM call gives the conversation: a `Completion`, or an `LLMError` that ends it.

The end reasons an LLM failure causes are named here, beside the error that carries them, so
the LLM layer needs nothing from the conversation engine above it.
"""

from __future__ import annotations

from dataclasses import dataclass

END_LLM_ERROR = "llm_error"  # refused for good (400/401/403/404): retrying cannot fix it
END_LLM_UNAVAILABLE = "llm_unavailable"  # retries exhausted (timeouts, 5xx, connection errors)
END_CONTEXT_WINDOW = "context_window_exceeded"  # the conversation no longer fits the model


@dataclass(slots=True)
class Completion:
    """One LLM answer and what it cost."""

    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


class LLMError(Exception):
    """An LLM call failed for good; `end_reason` says how the conversation ends."""

    def __init__(self, message: str, end_reason: str = END_LLM_ERROR) -> None:
        super().__init__(message)
        self.end_reason = end_reason
