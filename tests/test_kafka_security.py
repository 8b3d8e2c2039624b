"""Kafka security through the real path: TLS to a broker, SASL on the wire, refused settings.

The broker is the embedded Tansu behind Debian's stunnel4, which terminates TLS with a
certificate from a trustme test CA and is the listener Tansu advertises, so every connection
goes through TLS (tests/secure_broker.py says why: Tansu 0.6.0 serves no TLS of its own, and
its storage engines here keep no SASL users, so no SASL login can succeed on it). The worker
and the commands get the settings as a user sets them: environment variables.

- A worker over TLS delivers a burst that `faust -A simapp submit` sent over TLS,
  `progress` reports it done and `dlq list` reads the dead letter the worker wrote over TLS.
- The wrong CA: the worker exits non-zero naming KAFKA_SSL_CAFILE; so does `dlq list`.
- SASL_SSL against Tansu with `--authentication`: the bytes the client sends once TLS is off
  (a recording relay between stunnel and Tansu) carry the SaslHandshake with the configured
  mechanism and the SCRAM client-first message with the user name; Tansu refuses the login,
  the worker exits non-zero naming KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD, and the password
  appears nowhere: not on the wire (SCRAM sends a proof), not in the log, not in the error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simapp.config import load_settings
from simapp.kafka.producer import produce
from tests.helpers import events_for, wait_until
from tests.secure_broker import Certificates, TlsBroker
from tests.test_readme_commands import run, user_env
from tests.tools import require_tool

pytestmark = pytest.mark.slow

USER = "simapp-user"
PASSWORD = "pw-7Qz-never-shown"  # noqa: S105 - a test value, and the thing that must not leak
SASL_APIS = {17: "SaslHandshake", 36: "SaslAuthenticate"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_broker(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[TlsBroker]:
    require_tool("stunnel4")
    broker = TlsBroker(tmp_path_factory.mktemp("tls-broker"), certs).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def sasl_broker(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[TlsBroker]:
    require_tool("stunnel4")
    workdir = tmp_path_factory.mktemp("sasl-broker")
    broker = TlsBroker(workdir, certs, authentication=True, record=True).start()
    try:
        yield broker
    finally:
        broker.stop()


def tls_env(broker: TlsBroker, cafile: Path) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(cafile),
    }


def sasl_env(broker: TlsBroker, cafile: Path) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CAFILE": str(cafile),
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": PASSWORD,
    }


def lower(env: dict[str, str]) -> dict[str, Any]:
    return {k.lower(): v for k, v in env.items()}


def exited(worker: Any, timeout: float) -> int | None:
    """The worker's exit code once it has left by itself (None: still running)."""
    wait_until(lambda: not worker.alive(), timeout)
    return None if worker.alive() else worker.proc.returncode


def test_a_burst_submit_progress_and_dlq_list_over_tls(
    stack: Any, workers: Any, ns: Any, tls_broker: TlsBroker, certs: Certificates, tmp_path: Path
) -> None:
    security = tls_env(tls_broker, certs.ca)
    worker = workers.start(**lower(security))
    topics = ns.overrides()
    env = user_env(
        **security,
        KAFKA_TOPIC=topics["kafka_topic"],
        DLQ_TOPIC=topics["dlq_topic"],
        KAFKA_PARTITIONS=stack.partitions,
        CALLBACK_ALLOWED_HOSTS="127.0.0.1",
    )
    web = f"http://127.0.0.1:{worker.port}"
    events = [
        {k: v for k, v in e.items() if k not in ("batch_id", "batch_size")}
        for e in events_for(stack, 30)
    ]
    burst = tmp_path / "burst.jsonl"
    burst.write_text("".join(json.dumps(e) + "\n" for e in events))

    cmd = ["faust", "-A", "simapp", "submit", str(burst), "--batch-id", "tls-batch", "--follow",
           "--web-url", web, "--timeout", "180"]  # fmt: skip
    sent = run(cmd, tmp_path, env, 240)
    assert sent.returncode == 0, sent.stdout[-3000:] + sent.stderr[-3000:]
    assert "sent 30 events, batch tls-batch" in sent.stdout
    assert "RESULT: OK, every simulation delivered" in sent.stdout
    ids = {e["id"] for e in events}
    assert ids <= {item["simulation_id"] for item in stack.sink_items()}

    shown = run(
        ["faust", "-A", "simapp", "progress", "--batch-id", "tls-batch", "--web-url", web],
        tmp_path,
        env,
        120,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("tls-batch"))
    assert row.split()[1:4] == ["30", "30", "0"] and row.split()[-1] == "done"

    # a record that is not JSON: the worker dead-letters it (its producer, over TLS)
    settings = load_settings(
        _env_file=None, **lower(security), **topics, kafka_partitions=stack.partitions
    )
    asyncio.run(produce(settings, [(b"tls-bad", b"{not json")]))

    def listed() -> Any:
        out = run(["faust", "-A", "simapp", "dlq", "list"], tmp_path, env, 120)
        return out if "not_json" in out.stdout else None

    out = wait_until(listed, 60, interval=2)
    assert out, "the dead letter never showed in `dlq list`"
    assert out.returncode == 0 and f"1 dead letters on {topics['dlq_topic']}" in out.stdout

    # every client came through stunnel: TLS sessions were accepted, and a plaintext client
    # gets no Kafka answer from the TLS listener
    assert tls_broker.stunnel is not None and tls_broker.stunnel.log_path is not None
    assert "accepted connection" in tls_broker.stunnel.log_path.read_text()
    plain = run(
        ["faust", "-A", "simapp", "dlq", "list"],
        tmp_path,
        user_env(KAFKA_BOOTSTRAP_SERVERS=tls_broker.bootstrap, DLQ_TOPIC=topics["dlq_topic"]),
        120,
    )
    assert "not_json" not in plain.stdout


def test_the_wrong_ca_stops_the_worker_and_the_commands_naming_the_setting(
    stack: Any, workers: Any, tls_broker: TlsBroker, certs: Certificates, tmp_path: Path
) -> None:
    security = tls_env(tls_broker, certs.wrong_ca)
    worker = workers.start(wait=False, **lower(security))
    code = exited(worker, 90)
    log = worker.log_path.read_text()
    assert code not in (0, None), log[-3000:]
    assert "KAFKA_SSL_CAFILE" in log and "does not verify" in log, log[-3000:]

    out = run(["faust", "-A", "simapp", "dlq", "list"], tmp_path, user_env(**security), 120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "error: cannot use the Kafka brokers: KAFKA_SSL_CAFILE" in out.stderr
    assert "Traceback" not in out.stderr


def test_sasl_reaches_the_wire_and_a_refused_login_stops_the_worker_without_the_password(
    stack: Any, workers: Any, sasl_broker: TlsBroker, certs: Certificates, tmp_path: Path
) -> None:
    security = sasl_env(sasl_broker, certs.ca)
    worker = workers.start(wait=False, **lower(security))
    code = exited(worker, 90)
    log = worker.log_path.read_text()
    assert code not in (0, None), log[-3000:]
    assert "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD" in log, log[-3000:]
    assert f"SCRAM-SHA-512 login of user {USER!r}" in log
    assert PASSWORD not in log

    # what the worker's client sent once stunnel took TLS off
    assert sasl_broker.recorder is not None
    frames = [f for f in sasl_broker.recorder.frames() if f.api_key in SASL_APIS]
    handshakes = [f for f in frames if f.api_key == 17]
    assert handshakes and all(f.data.endswith(b"\x00\rSCRAM-SHA-512") for f in handshakes)
    assert any(f.api_key == 36 and f"n,,n={USER},r=".encode() in f.data for f in frames)
    assert PASSWORD.encode() not in bytes(sasl_broker.recorder.sent)

    # a command a user types with the same settings: the named error, no password
    events = tmp_path / "one.jsonl"
    events.write_text(json.dumps(events_for(stack, 1)[0]) + "\n")
    env = user_env(**security, CALLBACK_ALLOWED_HOSTS="127.0.0.1")
    out = run(["faust", "-A", "simapp", "submit", str(events)], tmp_path, env, 120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD" in out.stderr
    assert PASSWORD not in out.stdout + out.stderr
