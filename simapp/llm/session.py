"""The worker's one aiohttp session for LLM traffic, with the rate budgets' send gate.

LLM_CONNECTION_POOL_SIZE sockets, and a trace hook that holds each request's bytes until the
send rules of its budgets allow one more write (`simapp.limits.budgets.send_gate`): aiohttp awaits
`on_request_chunk_sent` right before it writes a chunk (the buffered headers go with the first)
and writes in the same loop step once we return, so the gate's times are the write times.
A body written in several chunks is gated per chunk, which can only send fewer requests.

Which budgets a request belongs to: the direct route passes them as `trace_request_ctx`;
LiteLLM, which builds the request itself, carries the model in a header that the hook reads
and removes before anything is written, so the provider never sees it.

The LiteLLM route without a backend URL sends where a model name says, so its session is
guarded (`internal_allowed`): a request to an internal address (an IP literal, `localhost`, a
name resolving to one) is refused before it connects unless LLM_ALLOWED_INTERNAL_HOSTS names
it. This repeats the decoder's check (simapp/llm/destinations.py) at connect time, for the
providers LiteLLM calls through this session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from simapp.limits.budgets import Budget, RateLimits, send_gate
from simapp.outbound.addresses import (
    GuardedResolver,
    HostList,
    is_internal_host,
    origin_of,
)

BUDGET_HEADER = "X-Simapp-Budget"
INTERNAL_HOSTS_SETTING = "LLM_ALLOWED_INTERNAL_HOSTS"


class DestinationRefused(Exception):
    """A request to an internal address nothing allowed; it never connected. Deliberately
    no aiohttp or OSError class: LiteLLM's HTTP handler answers a connection error by sending
    the request again on a client of its own (outside this session), so the refusal must
    pass through its transport as what it is."""


def llm_session(
    limits: RateLimits, pool_size: int, internal_allowed: HostList | None = None
) -> aiohttp.ClientSession:
    """Create inside the worker's event loop; lives as long as the worker. With
    `internal_allowed`, the session is guarded (module docstring)."""

    async def on_request_start(session: Any, ctx: Any, params: Any) -> None:
        if internal_allowed is not None:
            host = params.url.host or ""
            if is_internal_host(host) and not internal_allowed.has_name(host):
                raise DestinationRefused(
                    f"{origin_of(str(params.url))} is an internal address "
                    f"(set {INTERNAL_HOSTS_SETTING} to allow it)"
                )
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
    resolver = None
    if internal_allowed is not None:
        allowed = internal_allowed
        resolver = GuardedResolver(
            lambda host, addr: allowed.has_name(host) or allowed.has_address(addr),
            INTERNAL_HOSTS_SETTING,
            refuse=DestinationRefused,
        )
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=pool_size, limit_per_host=pool_size, resolver=resolver
        ),
        trace_configs=[trace],
    )


def _are_budgets(value: Any) -> bool:
    return isinstance(value, Sequence) and bool(value) and isinstance(value[0], Budget)
