"""The worker's one aiohttp session for LLM traffic, with the rate budgets' send gate.

LLM_CONNECTION_POOL_SIZE sockets, and a trace hook that holds each request's bytes until the
send rules of its budgets allow one more write (`ratelimit.send_gate`): aiohttp awaits
`on_request_chunk_sent` right before it writes a chunk (the buffered headers go with the first)
and writes in the same loop step once we return, so the gate's times are the write times.
A body written in several chunks is gated per chunk, which can only send fewer requests.

Which budgets a request belongs to: the direct route passes them as `trace_request_ctx`;
LiteLLM, which builds the request itself, carries the model in a header that the hook reads
and removes before anything is written, so the provider never sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from simapp.limits.budgets import Budget, RateLimits, send_gate

BUDGET_HEADER = "X-Simapp-Budget"


def llm_session(limits: RateLimits, pool_size: int) -> aiohttp.ClientSession:
    """Create inside the worker's event loop; lives as long as the worker."""

    async def on_request_start(session: Any, ctx: Any, params: Any) -> None:
        budgets = ctx.trace_request_ctx
        model = params.headers.pop(BUDGET_HEADER, None)
        if model is not None:
            budgets = limits.for_call(model)
        ctx.simapp_budgets = budgets if _are_budgets(budgets) else ()

    async def on_request_chunk_sent(session: Any, ctx: Any, params: Any) -> None:
        budgets = getattr(ctx, "simapp_budgets", ())
        if budgets:
            await send_gate(budgets)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    trace.on_request_chunk_sent.append(on_request_chunk_sent)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size),
        trace_configs=[trace],
    )


def _are_budgets(value: Any) -> bool:
    return isinstance(value, Sequence) and bool(value) and isinstance(value[0], Budget)
