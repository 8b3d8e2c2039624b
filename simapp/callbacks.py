"""POSTs summaries to their callback URLs, with retries, through one shared aiohttp session.

Every POST carries `Idempotency-Key: <simulation id>` so a receiver can drop the rare repeat
(at-least-once delivery). Retries use exponential backoff with full jitter on connection errors,
timeouts, 429 and 5xx, bounded by attempts and an overall deadline; anything else (4xx) is final.
A slow receiver only delays its own simulation: each POST has its own timeout.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from simapp.urlpolicy import CallbackPolicy, is_internal_address

USER_AGENT = "simapp/0.1 (+callback)"


@dataclass(slots=True)
class Delivery:
    """Outcome of delivering one summary."""

    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None


class GuardedResolver(AbstractResolver):
    """Refuses host names that resolve to internal addresses (DNS rebinding), unless allowed."""

    def __init__(self, policy: CallbackPolicy) -> None:
        self.policy = policy
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        infos = await self.inner.resolve(host, port, family)
        if not self.policy.restricted:
            import ipaddress

            for info in infos:
                if is_internal_address(ipaddress.ip_address(info["host"])):
                    raise OSError(f"{host} resolves to internal address {info['host']}")
        return infos

    async def close(self) -> None:
        await self.inner.close()


class CallbackSender:
    """Delivers summaries; create once per worker and `close()` on shutdown."""

    def __init__(
        self,
        *,
        timeout: float,
        attempts: int,
        deadline: float,
        policy: CallbackPolicy,
        pool_size: int = 100,
    ) -> None:
        self.timeout = timeout
        self.attempts = attempts
        self.deadline = deadline
        self.policy = policy
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.pool_size, resolver=GuardedResolver(self.policy), ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, url: str, simulation_id: str, payload: dict[str, Any]) -> Delivery:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Idempotency-Key": simulation_id}
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.deadline
        status: int | None = None
        error: str | None = None
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                async with self.session.post(url, data=body, headers=headers) as resp:
                    status = resp.status
                    if 200 <= status < 300:
                        return Delivery(True, attempt, status)
                    error = f"HTTP {status}"
                    retryable = status in (408, 425, 429) or status >= 500
                    if status == 429:
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, error, retryable = None, f"{type(exc).__name__}: {exc}"[:300], True
            if not retryable or attempt > self.attempts:
                return Delivery(False, attempt, status, error)
            delay = (
                retry_after
                if retry_after is not None
                else random.uniform(0, min(30.0, 0.5 * 2 ** (attempt - 1)))
            )
            if loop.time() + delay >= give_up_at:
                return Delivery(False, attempt, status, f"{error} (deadline reached)")
            await asyncio.sleep(delay)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(60.0, max(0.0, float(value)))
    except ValueError:
        return None
