"""The yardsticks of `make bench`: a raw aiohttp POST loop (the floor of any client) and a bare
`litellm.acompletion` loop, against the same mock as the workers, in a child process.

The child (`python -m simapp.lab.bench --reference-child ...`, `child_main`) keeps LiteLLM's
import (2.5 s, ~200 MB) and its CPU out of the bench's own process; `run_reference` is the
parent's side: it reconfigures the mock, runs the child and reads its JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from simapp.config import load_settings
from simapp.embedded.catalogue import make_events
from simapp.embedded.session import EmbeddedSession
from simapp.embedded.stack import http_json

Call = Callable[[int], Awaitable[None]]  # the i-th call of a loop


def bare_messages() -> list[list[dict[str, str]]]:
    """Request shapes like simapp's: assistant turns and simulated-user turns, a few long."""
    from simapp.simulation.conversation import ConversationEngine, assistant_system_prompt
    from simapp.simulation.schemas import SimulationEvent

    engine = ConversationEngine(llm=None, max_iterations_cap=10, timeout=300)  # type: ignore[arg-type]
    shapes = []
    for event in make_events(8, callback_url="http://127.0.0.1/cb", seed=1):
        ev = SimulationEvent.model_validate(event)
        history = [
            {"role": "system", "content": assistant_system_prompt(ev)},
            {"role": "user", "content": ev.intent},
        ]
        shapes.append(list(history))
        history.append({"role": "assistant", "content": "Here is a short, helpful answer."})
        shapes.append(engine.user_view(ev, history))
    return shapes


async def lanes(n: int, concurrency: int, call: Call, errors: dict[str, int]) -> int:
    """n calls by `concurrency` tasks, each calling one after another; successes."""
    next_i = ok = 0

    async def lane() -> None:
        nonlocal next_i, ok
        while next_i < n:
            i = next_i
            next_i += 1
            try:
                await call(i)
                ok += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1

    await asyncio.gather(*(lane() for _ in range(min(concurrency, n))))
    return ok


def litellm_call(args: argparse.Namespace, shapes: list[list[dict[str, str]]]) -> Call:
    """One `litellm.acompletion` per call, LiteLLM imported as the workers' route imports it."""
    from simapp.llm.litellm_route import import_litellm

    litellm = import_litellm(args.pool_size)

    async def call(i: int) -> None:
        resp = await litellm.acompletion(
            model=f"openai/{args.model}",
            messages=shapes[i % len(shapes)],
            api_base=args.api_base,
            api_key=args.api_key,
            timeout=args.timeout,
            max_retries=0,
        )
        _ = resp.choices[0].message.content, resp.usage

    return call


def raw_call(args: argparse.Namespace, shapes: list[list[dict[str, str]]]) -> tuple[Call, Any]:
    """One aiohttp POST per call, the reply parsed as JSON; and the session to close."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.pool_size, limit_per_host=args.pool_size)
    )
    url = args.api_base.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"}

    async def call(i: int) -> None:
        body = {"model": args.model, "messages": shapes[i % len(shapes)]}
        async with session.post(url, json=body, headers=headers) as resp:
            data = json.loads(await resp.read())
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            _ = data["choices"][0]["message"]["content"], data["usage"]

    return call, session


async def reference_loop(args: argparse.Namespace) -> dict[str, Any]:
    """The bare LiteLLM loop (`--kind litellm`) or a raw aiohttp POST loop (`--kind raw`):
    a warm-up (clients, the connection pool), then `--calls` calls timed in CPU and wall."""
    shapes = bare_messages()
    errors: dict[str, int] = {}
    started_import = time.perf_counter()
    if args.kind == "litellm":
        call, session = litellm_call(args, shapes), None
    else:
        call, session = raw_call(args, shapes)
    import_s = time.perf_counter() - started_import
    try:
        warmup = min(50, max(5, args.calls // 20))
        await lanes(warmup, args.concurrency, call, errors)
        errors.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        ok = await lanes(args.calls, args.concurrency, call, errors)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    finally:
        if session is not None:
            await session.close()
    return {
        "kind": args.kind,
        "model": args.model,
        "calls": args.calls,
        "ok": ok,
        "errors": errors,
        "warmup_calls": warmup,
        "concurrency": args.concurrency,
        "pool_size": args.pool_size,
        "import_seconds": round(import_s, 2),
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
        "achieved_rps": round(ok / wall, 1) if wall > 0 else None,
        "cpu_ms_per_call": round(1000 * cpu / ok, 3) if ok else None,
    }


def child_main(argv: list[str]) -> int:
    """`python -m simapp.lab.bench --reference-child ...`: one loop, its result as a JSON line."""
    p = argparse.ArgumentParser(prog="python -m simapp.lab.bench --reference-child")
    p.add_argument("--kind", choices=["litellm", "raw"], required=True)
    p.add_argument("--api-base", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--model", default="gpt-4")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--pool-size", type=int, default=50)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    result = asyncio.run(reference_loop(args))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] == args.calls else 1


OVERHEAD_MARGIN_S = 0.05  # per-turn time on top of the mock latency


def loop_concurrency(args: argparse.Namespace) -> int:
    """Calls the loops keep in flight: what a worker needs at the bench's budget and latency
    (Little's law per worker with 50 % headroom, at least 50), as before the workers sized
    themselves, so the loops' figures compare with earlier runs."""
    cycle_s = args.latency_ms / 1000 + args.jitter_ms / 1000 + OVERHEAD_MARGIN_S
    return max(50, math.ceil(args.rps / args.workers * cycle_s * 1.5))


def run_reference(
    session: EmbeddedSession, args: argparse.Namespace, kind: str, calls: int
) -> dict[str, Any]:
    """Reconfigure the mock (same latency, no RPS limit, counters reset) and run one loop."""
    concurrency = loop_concurrency(args)
    stack = session.stack
    http_json(f"{stack.mock_url}/admin/config", {"rps_limit": 0})
    http_json(f"{stack.mock_url}/admin/reset", {})
    argv = [
        sys.executable, "-m", "simapp.lab.bench", "--reference-child", "--kind", kind,
        "--api-base", f"{stack.mock_url}/v1",
        "--api-key", stack.api_key,
        "--model", args.model,
        "--calls", str(calls),
        "--concurrency", str(concurrency),
        "--pool-size", str(concurrency),
        "--timeout", str(load_settings().llm_timeout),
    ]  # fmt: skip
    timeout = 120 + calls / 20
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    (stack.log_dir / f"{kind}.log").write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{kind} loop failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    mock = session.mock_stats()
    result["mock_200"] = mock.get("responses_by_status", {}).get("200", 0)
    result["mock_max_in_flight"] = mock.get("max_in_flight")
    return result
