"""Every hop of a callback passes the policy: a redirect out of it is never followed.

Real HTTP on loopback: a receiver that answers 307/308/302 and targets that count their hits.
aiohttp follows up to 10 redirects by default, and it does not ask the connector's resolver
about an IP literal, so before this rule a redirect took the summary anywhere. With
bad07b2's CallbackSender every refusal test here failed (the target was reached).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from simapp.delivery.callbacks import CallbackSender
from simapp.delivery.urlpolicy import CallbackPolicy
from tests.tools import tools_required

PAYLOAD = {"simulation_id": "sim-r", "conversation_history": [], "end_reason": "completed"}


class Host:
    """An HTTP server that records hits and answers what `respond` says."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address = address
        self.hits: list[tuple[str, str | None]] = []
        self.respond: Any = lambda request: web.json_response({"ok": True})
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Host:
        async def handle(request: web.Request) -> web.StreamResponse:
            await request.read()
            self.hits.append((request.path, request.headers.get("Idempotency-Key")))
            return self.respond(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    def url(self, path: str = "/cb", host: str | None = None) -> str:
        return f"http://{host or self.address}:{self.port}{path}"

    def redirect(self, status: int, location: str) -> None:
        self.respond = lambda request: web.Response(status=status, headers={"Location": location})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@asynccontextmanager
async def hosts(*addresses: str) -> AsyncIterator[list[Host]]:
    started = [await Host(a).start() for a in addresses]
    try:
        yield started
    finally:
        for host in started:
            await host.stop()


def sender(*allowed: str) -> CallbackSender:
    return CallbackSender(
        timeout=5, attempts=2, deadline=10, policy=CallbackPolicy(allowed), pool_size=4
    )


async def deliver(s: CallbackSender, url: str) -> Any:
    try:
        return await s.deliver(url, "sim-r", PAYLOAD)
    finally:
        await s.close()


def test_redirect_to_a_host_outside_the_allowlist_is_refused() -> None:
    async def scenario() -> tuple[Any, Host, Host]:
        async with hosts("127.0.0.1", "127.0.0.2") as (receiver, outside):
            receiver.redirect(307, outside.url("/stolen"))
            delivery = await deliver(sender("127.0.0.1/32"), receiver.url())
            return delivery, receiver, outside

    delivery, receiver, outside = asyncio.run(scenario())
    assert not delivery.ok
    assert outside.hits == []
    assert len(receiver.hits) == 1  # refused at once, not retried
    assert f"127.0.0.2:{outside.port}/stolen" in delivery.error
    assert "not in CALLBACK_ALLOWED_HOSTS" in delivery.error


def test_redirect_to_an_ip_literal_when_the_allowlist_names_hosts() -> None:
    """The allowlist names `localhost`; a redirect to the IP literal 127.0.0.1 is another
    host (aiohttp would connect without asking the resolver)."""

    async def scenario() -> tuple[Any, Host]:
        async with hosts("127.0.0.1", "127.0.0.1") as (receiver, target):
            receiver.redirect(308, target.url("/x", host="127.0.0.1"))
            delivery = await deliver(sender("localhost"), receiver.url(host="localhost"))
            return delivery, target

    delivery, target = asyncio.run(scenario())
    assert not delivery.ok and target.hits == []
    assert "'127.0.0.1' is not in CALLBACK_ALLOWED_HOSTS" in delivery.error


def test_a_redirect_chain_is_checked_at_every_hop() -> None:
    async def scenario() -> tuple[Any, list[Host]]:
        async with hosts("127.0.0.1", "127.0.0.1", "127.0.0.2") as (first, second, outside):
            first.redirect(307, second.url("/hop2"))
            second.redirect(308, outside.url("/hop3"))
            delivery = await deliver(sender("127.0.0.1/32"), first.url("/hop1"))
            return delivery, [first, second, outside]

    delivery, (first, second, outside) = asyncio.run(scenario())
    assert not delivery.ok
    assert [h for h, _ in first.hits] == ["/hop1"]
    assert [h for h, _ in second.hits] == ["/hop2"]  # an allowed hop is followed
    assert outside.hits == []
    assert "/hop3 refused" in delivery.error


def test_an_allowed_307_is_followed_with_the_same_body_and_key() -> None:
    async def scenario() -> tuple[Any, Host]:
        async with hosts("127.0.0.1", "127.0.0.1") as (receiver, final):
            receiver.redirect(307, final.url("/moved"))
            return await deliver(sender("127.0.0.1/32"), receiver.url()), final

    delivery, final = asyncio.run(scenario())
    assert delivery.ok
    assert final.hits == [("/moved", "sim-r")]


def test_a_302_is_not_followed_it_would_turn_the_post_into_a_get() -> None:
    async def scenario() -> tuple[Any, Host]:
        async with hosts("127.0.0.1", "127.0.0.1") as (receiver, final):
            receiver.redirect(302, final.url("/moved"))
            return await deliver(sender("127.0.0.1/32"), receiver.url()), final

    delivery, final = asyncio.run(scenario())
    assert not delivery.ok and final.hits == []
    assert "not followed" in delivery.error


PUBLIC = "192.88.99.1"  # a globally routable address, put on lo for the test only


@pytest.fixture
def public_address() -> Any:
    """A global address on the loopback interface, so a first hop passes the policy without
    an allowlist (needs root and iproute2; skipped otherwise, failed under CI)."""
    assert ipaddress.ip_address(PUBLIC).is_global
    if os.geteuid() != 0 or subprocess.run(["which", "ip"], capture_output=True).returncode:
        reason = "needs root and `ip` to add a global address to lo"
        if tools_required():
            pytest.fail(reason)
        pytest.skip(reason)
    add = subprocess.run(["ip", "addr", "add", f"{PUBLIC}/32", "dev", "lo"], capture_output=True)
    try:
        yield PUBLIC
    finally:
        if add.returncode == 0:
            subprocess.run(["ip", "addr", "del", f"{PUBLIC}/32", "dev", "lo"], check=False)


@pytest.mark.parametrize("target", ["169.254.169.254", "127.0.0.1", "[::ffff:127.0.0.1]"])
def test_without_an_allowlist_a_redirect_to_an_internal_literal_is_refused(
    public_address: str, target: str
) -> None:
    async def scenario() -> tuple[Any, Host, Host]:
        async with hosts(public_address, "127.0.0.1") as (receiver, internal):
            port = internal.port
            receiver.redirect(307, f"http://{target}:{port}/latest/meta-data")
            return await deliver(sender(), receiver.url()), receiver, internal

    delivery, receiver, internal = asyncio.run(scenario())
    assert len(receiver.hits) == 1, "the public first hop must be reached"
    assert not delivery.ok and internal.hits == []
    shown = str(ipaddress.ip_address(target.strip("[]")))  # as the URL library writes it
    assert "is internal" in delivery.error and shown in delivery.error


@pytest.mark.slow
def test_a_refused_redirect_is_a_dead_letter_and_replay_refuses_it_too(stack, ns, workers):
    """Through a worker: the dead letter's detail names the refused target; `dlq replay`
    checks every hop the same way (the worker's allowlist is 127.0.0.1 and localhost)."""
    import sys
    import threading

    from tests.helpers import events_for, read_topic, send_events

    ready = threading.Event()
    servers: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            async with hosts("127.0.0.1", "127.0.0.2") as (receiver, outside):
                receiver.redirect(307, outside.url("/elsewhere"))
                servers.update(receiver=receiver, outside=outside, loop=asyncio.get_running_loop())
                servers["stop"] = asyncio.Event()
                ready.set()
                await servers["stop"].wait()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        worker = workers.start(callback_retry_attempts=1)
        (event,) = events_for(stack, 1)
        event["callback_url"] = servers["receiver"].url("/hook")
        send_events(stack, ns, [event])
        (dead,) = read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], 1, timeout=60)
        assert dead["reason"] == "callback_failed"
        assert f"127.0.0.2:{servers['outside'].port}/elsewhere refused" in dead["detail"]
        env = {**os.environ, **worker.extra["env"]}
        replay = subprocess.run(
            [sys.executable, "-m", "faust", "-A", "simapp", "dlq", "replay"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert replay.returncode == 1, replay.stdout + replay.stderr
        assert "'still_undeliverable': 1" in replay.stdout
        assert servers["outside"].hits == []
        assert len(servers["receiver"].hits) == 2  # the worker's attempt and the replay's
    finally:
        servers["loop"].call_soon_threadsafe(servers["stop"].set)
        thread.join(10)
