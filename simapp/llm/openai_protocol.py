"""The OpenAI chat-completions protocol spoken directly, on the worker's LLM session.

For any OpenAI-compatible server (a LiteLLM proxy, vLLM, OpenAI, Azure OpenAI, a user's own
chatbot endpoint): `POST {base}/chat/completions`, content and `usage` from the JSON, status
and Retry-After from the response, cost from LiteLLM's cost map. A call costs a fraction of a
millisecond of CPU here, against 7-13 ms through `litellm.acompletion` (docs/benchmarks.md).

A transport error's text goes into summaries, so it names the backend by its label (an
endpoint's name, "the LLM backend"), never its host or address.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from typing import Any

import aiohttp

from simapp.limits.budgets import Budget
from simapp.llm import costs
from simapp.llm.completion import Completion
from simapp.llm.errors import (
    CONNECTION_ERROR,
    SERVER_ERROR,
    TIMEOUT,
    ProviderError,
    kind_of_status,
)

ERROR_TEXT_LIMIT = 300


class OpenAIProtocol:
    """One OpenAI-compatible backend."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        session: Any,
        label: str = "the LLM backend",
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.label = label
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._session = session

    async def close(self) -> None:
        await self._session.close()

    async def send(
        self,
        model: str,
        messages: list[dict[str, str]],
        budgets: Sequence[Budget],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        body: dict[str, Any] = {"model": model, "messages": messages}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session().post(
                    self.url, json=body, headers=self._headers, trace_request_ctx=budgets
                ) as resp:
                    raw = await resp.read()
                    status, headers = resp.status, resp.headers
        except TimeoutError:
            raise ProviderError(TIMEOUT, f"no answer within {self._timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(CONNECTION_ERROR, transport_error(self.label, exc)) from None
        if not 200 <= status < 300:
            text = _error_text(raw)
            raise ProviderError(
                kind_of_status(status, text), f"HTTP {status}: {text}", status, headers
            )
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"].get("content") or ""
            usage = data.get("usage") or {}
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ProviderError(
                SERVER_ERROR, f"unreadable answer ({type(exc).__name__})", status
            ) from None
        return Completion(
            content=content if isinstance(content, str) else str(content),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=costs.cost_of(model, prompt, completion),
        )


def transport_error(label: str, exc: BaseException) -> str:
    """What failed, without the host, address or URL that aiohttp's and asyncio's messages
    carry ("Cannot connect to host 10.0.0.5:8080", "Connect call failed ('10.0.0.5', 8080)"):
    the error's class and the text of its errno."""
    number = getattr(exc, "errno", None)
    reason = f": {os.strerror(number)}" if isinstance(number, int) and number > 0 else ""
    return f"connection error to {label} ({type(exc).__name__}{reason})"


def _error_text(raw: bytes) -> str:
    """The provider's error message (OpenAI's {"error": {"message", "code"}}), else the body."""
    try:
        data = json.loads(raw)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            parts = [str(error.get(k)) for k in ("code", "message") if error.get(k)]
            if parts:
                return ": ".join(parts)[:ERROR_TEXT_LIMIT]
    except ValueError:
        pass
    return raw[:ERROR_TEXT_LIMIT].decode("utf-8", "replace")
