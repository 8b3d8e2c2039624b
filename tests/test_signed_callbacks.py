"""Signed callbacks (issue 20, point 4): Standard Webhooks headers that the `standardwebhooks`
package, as a receiver uses it, verifies; a tampered body, another secret or a stale timestamp
does not verify. Real HTTP on loopback for the attempts of one summary; the real path (a
worker, Tansu, the sink verifying every delivery) is the slow test at the end, and
tests/test_dlq_replay.py verifies the POSTs of `dlq replay`."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from simapp.config import SettingsError, load_settings
from simapp.delivery.callbacks import CallbackSender, Signer, encode_summary, webhook_id
from simapp.delivery.urlpolicy import CallbackPolicy

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
SUMMARY = {
    "simulation_id": "sim.1:a",  # ids may hold "." and ":"
    "conversation_history": [{"role": "assistant", "content": "Grüße — ok"}],
    "end_reason": "completed",
}


def signer(secret: str = SECRET) -> Signer:
    signed = Signer.from_settings(load_settings(_env_file=None, callback_signing_secret=secret))
    assert signed is not None
    return signed


def test_a_signed_summary_verifies_with_standardwebhooks() -> None:
    body = encode_summary(SUMMARY)
    headers = signer().headers("sim.1:a", body)
    assert Webhook(SECRET).verify(body, headers) == SUMMARY
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["webhook-id"] == webhook_id("sim.1:a")
    assert "." not in headers["webhook-id"]  # the spec: no "." in the signed id
    assert base64.urlsafe_b64decode(headers["webhook-id"][4:] + "==") == b"sim.1:a"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body: body.replace(b"completed", b"completee"),
        lambda body: body + b" ",
        lambda body: body.replace(b'"end_reason"', b'"end_reason" '),
    ],
)
def test_a_tampered_body_does_not_verify(tamper: Any) -> None:
    body = encode_summary(SUMMARY)
    headers = signer().headers("sim.1:a", body)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(tamper(body), headers)


def test_another_secret_an_other_id_or_an_old_signature_does_not_verify() -> None:
    body = encode_summary(SUMMARY)
    headers = signer(OTHER).headers("sim.1:a", body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, headers)
    moved = {**signer().headers("sim.1:a", body), "webhook-id": webhook_id("sim-2")}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, moved)


def test_a_signature_fixed_when_the_summary_was_made_is_refused_after_an_outage() -> None:
    """Why the timestamp, and so the signature, is each attempt's: a receiver refuses a
    timestamp older than 5 minutes, and a summary may wait out a receiver for
    CALLBACK_MAX_WAIT (6 h). Signed at `summarized_at` it would be refused when the receiver
    is back; signed at the attempt it verifies, with the same webhook-id and bytes."""
    body = encode_summary(SUMMARY)
    summarized_at = time.time() - 6 * 3600
    stale = signer().headers("sim.1:a", body, now=summarized_at)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(body, stale)
    fresh = signer().headers("sim.1:a", body)
    assert Webhook(SECRET).verify(body, fresh) == SUMMARY
    assert fresh["webhook-id"] == stale["webhook-id"]


def test_the_signature_matches_the_libraries_own_signing() -> None:
    body = encode_summary(SUMMARY)
    headers = signer().headers("sim.1:a", body, now=1_700_000_000)
    expected = Webhook(SECRET).sign(
        headers["webhook-id"], datetime.fromtimestamp(1_700_000_000, UTC), body
    )
    assert headers["webhook-signature"] == expected


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-whsec",
        "whsec_***not base64***",
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
    ],
)
def test_a_bad_secret_fails_at_start_up_naming_the_variable_not_the_value(bad: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, callback_signing_secret=bad)
    message = str(caught.value)
    assert "CALLBACK_SIGNING_SECRET" in message
    assert bad not in message and "***" in message


def test_the_secret_is_never_shown() -> None:
    settings = load_settings(_env_file=None, callback_signing_secret=SECRET)
    secret_part = SECRET.removeprefix("whsec_")
    assert secret_part not in repr(settings) and secret_part not in str(settings.model_dump())
    sender = CallbackSender.from_settings(settings)
    assert secret_part not in repr(sender.signer) and "secret" in repr(sender.signer)
    assert load_settings(_env_file=None, callback_signing_secret="").callback_signing_secret is None


async def test_every_attempt_carries_the_same_id_key_and_bytes_and_verifies() -> None:
    """Real HTTP: a receiver that verifies with standardwebhooks and answers 503 to the first
    attempt; the retry is signed again (its own timestamp) and verifies too."""
    seen: list[tuple[dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((dict(request.headers), body))
        try:
            Webhook(SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            return web.json_response({"error": str(exc)}, status=401)
        return web.json_response({}, status=503 if len(seen) == 1 else 200)

    app = web.Application()
    app.router.add_post("/cb", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sender = CallbackSender(
        timeout=5,
        attempts=3,
        deadline=30,
        policy=CallbackPolicy(["127.0.0.1"]),
        signer=signer(),
    )
    try:
        result = await sender.deliver(f"http://127.0.0.1:{port}/cb", "sim.1:a", SUMMARY)
    finally:
        await sender.close()
        await runner.cleanup()
    assert result.ok and result.attempts == 2
    (first, body1), (second, body2) = seen
    assert body1 == body2 == encode_summary(SUMMARY)
    for name in ("webhook-id", "Idempotency-Key"):
        assert first[name] == second[name]
    assert first["Idempotency-Key"] == "sim.1:a"
    assert json.loads(body2) == SUMMARY


async def test_unsigned_without_a_secret() -> None:
    sender = CallbackSender.from_settings(load_settings(_env_file=None))
    assert sender.signer is None


@pytest.mark.slow
def test_a_signed_burst_verifies_at_the_sink_and_another_secret_is_refused(
    stack, ns, workers, tmp_path
) -> None:
    """The real path: a worker signing with CALLBACK_SIGNING_SECRET, the sink verifying every
    delivery with standardwebhooks (401 when one does not verify). Then a sender with another
    secret: every POST refused, each summary a callback_failed dead letter naming the 401; and
    `dlq replay` with the right secret delivers them, verified."""
    from simapp.embedded.stack import http_json
    from tests.helpers import events_for, read_topic, send_events, wait_until
    from tests.test_dlq_replay import dlq_cli

    http_json(f"{stack.sink_url}/admin/config", {"signing_secret": SECRET})
    first = workers.start(callback_signing_secret=SECRET)
    events = events_for(stack, 30, max_iterations=2, seed=5)
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)

    def delivered() -> set[str]:
        return {i["simulation_id"] for i in stack.sink_items()} & ids

    assert wait_until(lambda: delivered() == ids, 180), len(delivered())
    for sim_id in ids:
        (delivery,) = http_json(f"{stack.sink_url}/received/{sim_id}")["deliveries"]
        assert delivery["verified"] is True
        assert delivery["headers"]["webhook-id"] == webhook_id(sim_id)
        assert delivery["headers"]["Idempotency-Key"] == sim_id
    assert http_json(f"{stack.sink_url}/received?limit=0")["signature_failures"] == 0
    assert SECRET.removeprefix("whsec_") not in first.log_path.read_text()

    workers.stop_all()
    workers.start(callback_signing_secret=OTHER)
    forged = events_for(stack, 5, max_iterations=1, seed=6)
    forged_ids = {e["id"] for e in forged}
    send_events(stack, ns, forged)
    dead = read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], len(forged_ids), timeout=120)
    assert {d["simulation_id"] for d in dead} == forged_ids
    assert all(d["reason"] == "callback_failed" and d["detail"] == "HTTP 401" for d in dead)
    assert not {i["simulation_id"] for i in stack.sink_items()} & forged_ids
    assert http_json(f"{stack.sink_url}/received?limit=0")["signature_failures"] >= 5

    # The secret fixed, `dlq replay` POSTs them again, signed with it: they verify.
    out = dlq_cli(stack, ns, tmp_path, CALLBACK_SIGNING_SECRET=SECRET)("replay")
    assert "'redelivered': 5" in out, out
    for sim_id in forged_ids:
        (delivery,) = http_json(f"{stack.sink_url}/received/{sim_id}")["deliveries"]
        assert delivery["verified"] is True
        assert delivery["headers"]["webhook-id"] == webhook_id(sim_id)
