"""Kafka security settings: validated at start-up, turned into the same connection options for
every client (ours and Faust's), and secrets never shown in a start-up error.

The real-broker tests (TLS, SASL on the wire, refused certificate and password) are in
tests/test_kafka_security.py.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from simapp.config import SettingsError, load_settings, secret_bearing
from simapp.kafka import clients
from tests.secure_broker import Certificates

SECRET = "pw-4Kx-never-shown"  # noqa: S105 - the value that must not leak


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("certs"))


def settings(**values: object):  # noqa: ANN201
    return load_settings(_env_file=None, **values)


def refused(**values: object) -> str:
    with pytest.raises(SettingsError) as err:
        settings(**values)
    return str(err.value)


def test_plaintext_by_default_and_names_case_insensitive(certs: Certificates) -> None:
    assert settings().kafka_security_protocol == "PLAINTEXT"
    assert clients.connection(settings(kafka_bootstrap_servers="k:9092")) == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
    }
    s = settings(
        kafka_security_protocol="sasl_ssl",
        kafka_sasl_mechanism="scram-sha-256",
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET,
        kafka_ssl_cafile=str(certs.ca),
    )
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")


def test_sasl_needs_mechanism_user_and_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "")  # as .env.example leaves it: unset
    text = refused()
    assert "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs KAFKA_SASL_MECHANISM, " in text
    assert "KAFKA_SASL_USERNAME" in text and SECRET not in text
    text = refused(kafka_sasl_mechanism="GSSAPI", kafka_sasl_username="u")
    assert "KAFKA_SASL_MECHANISM" in text and SECRET not in text


def test_credentials_without_their_protocol_are_refused(certs: Certificates) -> None:
    text = refused(kafka_sasl_username="u", kafka_sasl_password=SECRET)
    assert "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set, but KAFKA_SECURITY_PROTOCOL" in text
    assert SECRET not in text
    text = refused(kafka_security_protocol="SASL_PLAINTEXT", kafka_ssl_cafile=str(certs.ca))
    assert "KAFKA_SSL_CAFILE set, but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT" in text


def test_ssl_files_must_exist_and_hold_what_they_say(certs: Certificates, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    text = refused(kafka_security_protocol="SSL", kafka_ssl_cafile=str(missing))
    assert "KAFKA_SSL_CAFILE" in text and str(missing) in text
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert "KAFKA_SSL_CAFILE: not a PEM file" in refused(
        kafka_security_protocol="SSL", kafka_ssl_cafile=str(garbage)
    )
    assert "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE" in refused(
        kafka_security_protocol="SSL", kafka_ssl_keyfile=str(certs.key)
    )
    assert "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE" in refused(
        kafka_security_protocol="SSL",
        kafka_ssl_certfile=str(certs.ca),  # a cert, no key
    )
    mutual = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(certs.ca),
        kafka_ssl_certfile=str(certs.cert),
        kafka_ssl_keyfile=str(certs.key),
    )
    assert clients.ssl_context(mutual) is not None


def test_every_client_and_faust_get_the_same_options(certs: Certificates) -> None:
    s = settings(
        kafka_bootstrap_servers="broker:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="simapp",
        kafka_sasl_password=SECRET,
        kafka_ssl_cafile=str(certs.ca),
    )
    options = clients.connection(s)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "simapp"
    assert options["sasl_plain_password"] == SECRET
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

    async def made_here() -> None:  # the aiokafka clients, as clients.py makes them
        producer, consumer, admin = clients.producer(s), clients.consumer(s), clients.admin(s)
        for inner in (producer.client, consumer._client, admin._client):
            assert inner._security_protocol == "SASL_SSL"
            assert inner._sasl_mechanism == "SCRAM-SHA-512"
            assert inner._sasl_plain_username == "simapp" and inner._ssl_context is not None
        await producer.stop()
        await consumer.stop()
        await admin.close()

    asyncio.run(made_here())
    # Faust's: broker_credentials, turned into aiokafka options by Faust's own driver
    from simapp.worker.application import faust_config

    credentials = faust_config(s)["broker_credentials"]
    assert isinstance(credentials, SASLCredentials) and SECRET not in repr(credentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "simapp" and auth["ssl_context"] is not None
    tls = settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(certs.ca))
    assert isinstance(faust_config(tls)["broker_credentials"], SSLCredentials)
    assert (
        credentials_to_aiokafka_auth(faust_config(tls)["broker_credentials"])["security_protocol"]
        == "SSL"
    )
    assert faust_config(settings())["broker_credentials"] is None


def test_secret_bearing_values_are_masked_in_start_up_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("KAFKA_SASL_PASSWORD", "LLM_API_KEY", "GRAFANA_ADMIN_PASSWORD", "X_TOKEN"):
        assert secret_bearing(name), name
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SSL_KEYFILE", "KAFKA_TOPIC"):
        assert not secret_bearing(name), name
    # a bad secret is never echoed, nor the secrets of a rule that spans settings
    text = refused(kafka_sasl_password=12345678901)
    assert "KAFKA_SASL_PASSWORD" in text and "12345678901" not in text
    monkeypatch.setenv("LLM_API_KEY", "sk-" + SECRET)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    text = refused()
    assert "KAFKA_SASL_PASSWORD set" in text and SECRET not in text
    # the password of a URL is masked too
    text = refused(llm_backend_url=["https://user:" + SECRET + "@llm.example/v1"])
    assert "LLM_BACKEND_URL" in text and SECRET not in text
