"""POSTs summaries to their callback URLs through one shared aiohttp session.

`attempt` is one delivery (following allowed redirects): accepted, worth retrying
(connection errors, timeouts, 408/425/429 and 5xx, with the receiver's Retry-After), or final
(any other answer, a refused redirect). The worker's retries, per-receiver breaker and pacing
are the outbox's (simapp/delivery/outbox.py); `deliver` retries on its own, for `dlq replay`.
Every POST carries `Idempotency-Key: <simulation id>` so a receiver can drop the rare repeat
(at-least-once delivery), and the same body on every attempt.

With CALLBACK_SIGNING_SECRET every POST is signed the Standard Webhooks way (`Signer`):
`webhook-id` (stable per simulation: `sim_` + the id in unpadded base64url, since the spec
wants no `.` in it), `webhook-timestamp` (the attempt's time) and `webhook-signature:
v1,<base64 HMAC-SHA256 of id.timestamp.body>`. The id and the bytes are the same on every
attempt and in a `dlq replay`; the timestamp, and so the signature, is the attempt's: the spec
says so ("every time an attempt is retried the timestamp of the attempt is updated") and its
receivers refuse a timestamp older than 5 minutes, so a signature fixed when the summary was
made would be refused after any outage longer than that (docs/architecture.md, "Signed
callbacks").

Every hop passes the callback policy. aiohttp's own redirect following is off: a 307/308 is
followed (at most MAX_REDIRECTS times, the body re-sent) only when its target passes the same
checks as the event's URL, IP literals included, and host names are resolved through the
guarded resolver at connect time; 301/302/303 would turn the POST into a GET and are refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from simapp.config import Settings, secret_key
from simapp.delivery.urlpolicy import CallbackPolicy
from simapp.limits.retry import backoff, retry_after_seconds
from simapp.outbound.addresses import GuardedResolver

USER_AGENT = "simapp/0.1 (+callback)"
MAX_REDIRECTS = 3
RETRY_AFTER_CAP = 60.0
BACKOFF_CAP = 30.0
FOLLOWED_REDIRECTS = frozenset({307, 308})  # keep the method and the body
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(slots=True)
class Delivery:
    """Outcome of delivering one summary."""

    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None


@dataclass(slots=True)
class Attempt:
    """Outcome of one POST: accepted (`ok`), refused for good (`final`), or worth retrying
    (after `retry_after` seconds when the receiver said so)."""

    ok: bool
    final: bool = False
    status: int | None = None
    retry_after: float | None = None
    error: str | None = None


class _Final(Exception):
    """A hop that must not be retried (refused redirect, non-retryable status)."""

    def __init__(self, status: int | None, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def webhook_id(simulation_id: str) -> str:
    """The Standard Webhooks message id of a simulation's summary: stable across attempts and
    replays, and without the `.` that simulation ids may hold (the signed content is
    id.timestamp.body)."""
    return "sim_" + base64.urlsafe_b64encode(simulation_id.encode()).decode().rstrip("=")


class Signer:
    """Signs callbacks per the Standard Webhooks specification (symmetric, `v1`)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_settings(cls, s: Settings) -> Signer | None:
        secret = s.callback_signing_secret
        return cls(secret_key(secret)) if secret is not None else None

    def __repr__(self) -> str:
        return "Signer(<secret>)"

    def headers(self, simulation_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
        """webhook-id, webhook-timestamp (`now`, default the current time) and
        webhook-signature for one attempt of `body`."""
        msg_id = webhook_id(simulation_id)
        timestamp = str(int(time.time() if now is None else now))
        signed = f"{msg_id}.{timestamp}.".encode() + body
        mac = hmac.new(self._key, signed, hashlib.sha256).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(mac).decode("ascii"),
        }


class CallbackSender:
    """Delivers summaries; create once per worker (and `close()` it when done)."""

    def __init__(
        self,
        *,
        timeout: float,
        attempts: int,
        deadline: float,
        policy: CallbackPolicy,
        pool_size: int = 100,
        signer: Signer | None = None,
    ) -> None:
        self.signer = signer
        self.timeout = timeout
        self.attempts = attempts
        self.deadline = deadline
        self.policy = policy
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> CallbackSender:
        return cls(
            timeout=s.callback_timeout,
            attempts=s.callback_retry_attempts,
            deadline=s.callback_deadline,
            policy=CallbackPolicy(s.callback_allowed_hosts),
            signer=Signer.from_settings(s),
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # With an allowlist, the allowlist is the rule; without, no name may resolve to an
            # internal address (DNS rebinding).
            resolver = GuardedResolver(
                lambda host, addr: self.policy.restricted, "CALLBACK_ALLOWED_HOSTS"
            )
            connector = aiohttp.TCPConnector(
                limit=self.pool_size, resolver=resolver, ttl_dns_cache=60
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

    async def attempt(self, url: str, simulation_id: str, body: bytes) -> Attempt:
        """One delivery of `body` (summary JSON); never raises for the receiver's sake."""
        problem = self.policy.check(url)
        if problem is not None:  # checked at decode time too; a replay may come from elsewhere
            return Attempt(False, final=True, error=f"callback_url refused: {problem}")
        headers = {"Content-Type": "application/json", "Idempotency-Key": simulation_id}
        if self.signer is not None:
            headers.update(self.signer.headers(simulation_id, body))
        try:
            status, retry_after = await self._post(url, body, headers)
        except _Final as final:
            return Attempt(False, final=True, status=final.status, error=final.error)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Attempt(False, error=f"{type(exc).__name__}: {exc}"[:300])
        if status is None:
            return Attempt(True, status=200)
        return Attempt(False, status=status, retry_after=retry_after, error=f"HTTP {status}")

    async def deliver(self, url: str, simulation_id: str, payload: dict[str, Any]) -> Delivery:
        """`attempt` with CALLBACK_RETRY_ATTEMPTS retries and backoff within
        CALLBACK_DEADLINE (for `dlq replay`, which runs outside the worker's outbox)."""
        body = encode_summary(payload)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.deadline
        attempts = 0
        while True:
            attempts += 1
            result = await self.attempt(url, simulation_id, body)
            if result.ok:
                return Delivery(True, attempts, 200)
            if result.final or attempts > self.attempts:
                return Delivery(False, attempts, result.status, result.error)
            delay = retry_delay(result, attempts)
            if loop.time() + delay >= give_up_at:
                error = f"{result.error} (deadline reached)"
                return Delivery(False, attempts, result.status, error)
            await asyncio.sleep(delay)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, float | None]:
        """One delivery attempt, following allowed redirects: (None, None) when accepted,
        (status, Retry-After) when it may be retried; raises _Final when it must not."""
        target = url
        for _hop in range(MAX_REDIRECTS + 1):
            async with self.session.post(
                target, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    return None, None
                if status in REDIRECTS:
                    target = self._redirect_target(target, status, resp.headers.get("Location"))
                    continue
                if status in (408, 425, 429) or status >= 500:
                    return status, retry_after_seconds(resp.headers)
                raise _Final(status, f"HTTP {status}")
        raise _Final(None, f"more than {MAX_REDIRECTS} redirects (last to {target})")

    def _redirect_target(self, current: str, status: int, location: str | None) -> str:
        if not location:
            raise _Final(status, f"HTTP {status} redirect without a Location")
        try:
            target = str(URL(current).join(URL(location)))
        except ValueError:
            raise _Final(
                status, f"HTTP {status} redirect to a malformed URL {location!r}"
            ) from None
        if status not in FOLLOWED_REDIRECTS:
            raise _Final(status, f"HTTP {status} redirect to {target} not followed (POST only)")
        problem = self.policy.check(target)
        if problem is not None:
            raise _Final(status, f"HTTP {status} redirect to {target} refused: {problem}")
        return target


def encode_summary(payload: dict[str, Any]) -> bytes:
    """The bytes POSTed for a summary (the same on every attempt)."""
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def retry_delay(result: Attempt, attempts: int) -> float:
    """The receiver's Retry-After (capped), else full-jitter backoff."""
    if result.retry_after is not None:
        return min(RETRY_AFTER_CAP, result.retry_after)
    return backoff(attempts - 1, 0.5, BACKOFF_CAP)
