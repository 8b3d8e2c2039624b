"""Every Kafka client simapp makes: consumers, producers, admin clients, and Faust's own.

One place turns the settings into connection options (bootstrap servers, KAFKA_SECURITY_PROTOCOL,
KAFKA_SASL_*, KAFKA_SSL_*), so they reach every client the same way: `connection` for the
aiokafka clients built here (the producer, topic creation, the TopicReader of the dead-letter
tools, the estimate and recovery's end offsets), `faust_credentials` for the Faust app's
consumer, producer and topic creation (`broker_credentials`, simapp/worker/application.py).

`check_access` connects once the way every client will and, when the broker refuses the TLS
handshake or the SASL credentials, raises KafkaAccessError naming the setting to fix: the
worker calls it before Faust makes its clients, the commands when a client cannot start.
The SASL password leaves this module only towards aiokafka and Faust; no message or log line
here holds it.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, UnsupportedSaslMechanismError

from simapp.config import SecurityProtocol, Settings

CHECK_TIMEOUT_MS = 10_000  # per attempt of check_access


class KafkaAccessError(RuntimeError):
    """The brokers refused the connection settings; the message names the setting to fix."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every client: the broker's certificate and host name verified
    against KAFKA_SSL_CAFILE (else the system's CAs); a client certificate when given."""
    if not settings.kafka_security_protocol.tls:
        return None
    cafile = settings.kafka_ssl_cafile
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None
    )
    if settings.kafka_ssl_certfile is not None:
        keyfile = settings.kafka_ssl_keyfile
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile),
            str(keyfile) if keyfile else None,
            password=lambda: b"",  # an encrypted key fails (config.py refuses it), never prompts
        )
    return context


def security(settings: Settings) -> dict[str, Any]:
    """aiokafka's security options from the settings."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol.value}
    if protocol.tls:
        options["ssl_context"] = ssl_context(settings)
    if protocol.sasl:
        assert settings.kafka_sasl_mechanism and settings.kafka_sasl_password  # config.py
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism.value,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value(),
        )
    return options


def connection(settings: Settings) -> dict[str, Any]:
    """The options every client needs to reach the brokers."""
    return {"bootstrap_servers": settings.kafka_bootstrap_servers, **security(settings)}


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` for the same settings (None = PLAINTEXT). Faust's aiokafka
    driver turns them into the same security options for its consumer, producer and the
    admin requests that create its topics."""
    from faust.auth import SASLCredentials, SSLCredentials

    protocol = settings.kafka_security_protocol
    context = ssl_context(settings)
    if protocol.sasl:
        assert settings.kafka_sasl_mechanism and settings.kafka_sasl_password  # config.py
        return SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=context,  # None: SASL_PLAINTEXT; a context: SASL_SSL
            mechanism=settings.kafka_sasl_mechanism.value,
        )
    if protocol is SecurityProtocol.SSL:
        return SSLCredentials(context)
    return None


def consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer (group-less unless `group_id` is given; nothing committed by default)."""
    options.setdefault("group_id", None)
    options.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(*topics, **connection(settings), **options)


def producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**connection(settings), **options)


def admin(settings: Settings, **options: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection(settings), **options)


async def start(client: Any, settings: Settings) -> None:
    """Start a client made here; when it cannot reach the brokers, say whether the security
    settings are why (KafkaAccessError naming the setting) instead of aiokafka's "Unable to
    bootstrap" (which hides the cause) or a bare KeyError from the SCRAM exchange."""
    try:
        await client.start()
    except (KafkaError, OSError, KeyError, ValueError, AssertionError, TimeoutError):
        await _close_quietly(client)
        await check_access(settings)
        raise


async def _close_quietly(client: Any) -> None:
    stop = getattr(client, "stop", None) or client.close
    try:
        await stop()
    except Exception:  # noqa: S110 - it never started; the start error is the one to report
        pass


def _servers(settings: Settings) -> list[tuple[str, int]]:
    servers = []
    for item in settings.kafka_bootstrap_servers.split(","):
        host, _, port = item.strip().rpartition(":")
        servers.append((host.strip("[]") or item.strip(), int(port or 9092)))
    return servers


async def _connect(host: str, port: int, options: dict[str, Any]) -> None:
    conn = await create_conn(host, port, request_timeout_ms=CHECK_TIMEOUT_MS, **options)
    conn.close()


async def check_access(settings: Settings) -> None:
    """Connect to the bootstrap servers the way every client will: first TLS alone (when
    configured), then the SASL exchange. Raises KafkaAccessError naming the setting when the
    broker's certificate does not verify, the TLS handshake fails, or the broker refuses the
    SASL mechanism or credentials. Returns once one server accepted; a server that cannot be
    reached at all (refused, timed out) is not a security verdict and is left to the clients'
    own retries and errors."""
    protocol = settings.kafka_security_protocol
    options = security(settings)
    transport = {"security_protocol": "SSL" if protocol.tls else "PLAINTEXT"}
    if protocol.tls:
        transport["ssl_context"] = options["ssl_context"]
    for host, port in _servers(settings):
        where = f"{host}:{port}"
        try:
            await _connect(host, port, transport)
        except ssl.SSLCertVerificationError as exc:
            raise KafkaAccessError(_certificate_problem(settings, where, exc)) from None
        except ssl.SSLError as exc:
            raise KafkaAccessError(
                f"KAFKA_SECURITY_PROTOCOL={protocol}: the TLS handshake with {where} failed "
                f"({exc.reason or exc}); is it a TLS listener, and do KAFKA_SSL_CERTFILE and "
                "KAFKA_SSL_KEYFILE hold what the broker expects?"
            ) from None
        except (TimeoutError, OSError, KafkaError):
            continue  # unreachable, or not a Kafka answer: no verdict on the settings
        if not protocol.sasl:
            return
        try:
            await _connect(host, port, options)
        except UnsupportedSaslMechanismError as exc:
            raise KafkaAccessError(
                f"KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}: the broker at {where} "
                f"does not offer it ({_offered(exc)})"
            ) from None
        except (TimeoutError, OSError):
            continue
        except (KafkaError, KeyError, ValueError, AssertionError) as exc:
            # SaslAuthenticationFailedError, or the broker closing the connection or answering
            # the SCRAM exchange with an error instead of its signature
            closed = isinstance(exc, KafkaConnectionError)
            how = " (it closed the connection)" if closed else ""
            raise KafkaAccessError(
                f"KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD: the broker at {where} refused the "
                f"SASL {settings.kafka_sasl_mechanism} login of user "
                f"{settings.kafka_sasl_username!r}{how}; check the user, its password (never "
                "shown) and that the broker has this mechanism enabled for it"
            ) from None
        return


def _certificate_problem(settings: Settings, where: str, exc: ssl.SSLCertVerificationError) -> str:
    cafile = settings.kafka_ssl_cafile
    source = f"the CAs in {cafile}" if cafile else "the system's CAs (KAFKA_SSL_CAFILE is unset)"
    return (
        f"KAFKA_SSL_CAFILE: the certificate of the broker at {where} does not verify against "
        f"{source}: {exc.verify_message or exc.reason}. Set KAFKA_SSL_CAFILE to the PEM file "
        "of the CA that signed the brokers' certificates"
    )


def _offered(exc: Exception) -> str:
    text = str(exc)
    marker = "Enabled mechanisms are:"
    return "it offers" + text.split(marker, 1)[1] if marker in text else text
