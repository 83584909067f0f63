"""Settings to aiokafka client arguments: security protocols, SASL, TLS, secrets."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import Settings
from sources.kafka_config import (
    client_kwargs,
    describe,
    make_consumer,
    make_producer,
    session_options,
)

PASSWORD = "s3cr3t-Pa55"


def settings(**values: object) -> Settings:
    return Settings(kafka_bootstrap="broker-1:9092,broker-2:9092", **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    out = tmp_path_factory.mktemp("tls")
    cert, key = out / "cert.pem", out / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=kafka.test", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_plaintext_names_the_brokers_and_nothing_else() -> None:
    kwargs = client_kwargs(settings())
    assert kwargs == {
        "bootstrap_servers": "broker-1:9092,broker-2:9092",
        "security_protocol": "PLAINTEXT",
        "client_id": "orchestrator",
    }


def test_missing_bootstrap_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="ORCHESTRATOR_KAFKA_BOOTSTRAP"):
        client_kwargs(Settings(kafka_bootstrap=None))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_passes_the_credentials(mechanism: str) -> None:
    kwargs = client_kwargs(
        settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username="alice",
            kafka_sasl_password=PASSWORD,
        )
    )
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "alice"
    assert kwargs["sasl_plain_password"] == PASSWORD
    assert "ssl_context" not in kwargs


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"kafka_sasl_username": "alice", "kafka_sasl_password": PASSWORD}, "SASL_MECHANISM"),
        ({"kafka_sasl_mechanism": "PLAIN", "kafka_sasl_password": PASSWORD}, "SASL_USERNAME"),
        ({"kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "alice"}, "SASL_PASSWORD"),
    ],
)
def test_incomplete_sasl_names_the_missing_setting(values: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"ORCHESTRATOR_KAFKA_{named}") as caught:
        client_kwargs(settings(kafka_security_protocol="SASL_SSL", **values))
    assert PASSWORD not in str(caught.value)


def test_sasl_mechanism_without_a_sasl_protocol_is_refused() -> None:
    with pytest.raises(ConfigError, match="SASL_PLAINTEXT or SASL_SSL"):
        client_kwargs(settings(kafka_sasl_mechanism="PLAIN"))


def test_sasl_ssl_with_a_ca_and_client_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    kwargs = client_kwargs(
        settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-256",
            kafka_sasl_username="alice",
            kafka_sasl_password=PASSWORD,
            kafka_ssl_cafile=cert,
            kafka_ssl_certfile=cert,
            kafka_ssl_keyfile=key,
        )
    )
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # The CA file was loaded: our self-signed certificate is trusted.
    assert any(
        c.get("subject") == ((("commonName", "kafka.test"),),) for c in context.get_ca_certs()
    )
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"


def test_ssl_without_a_ca_file_trusts_the_system_cas() -> None:
    context = client_kwargs(settings(kafka_security_protocol="SSL"))["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"ORCHESTRATOR_KAFKA_SSL_CAFILE: .*nope\.pem"):
        client_kwargs(settings(kafka_security_protocol="SSL", kafka_ssl_cafile=missing))


def test_a_key_without_a_certificate_is_refused(tls_files: tuple[Path, Path]) -> None:
    _cert, key = tls_files
    with pytest.raises(ConfigError, match="KEYFILE is set without"):
        client_kwargs(settings(kafka_security_protocol="SSL", kafka_ssl_keyfile=key))


def test_tls_files_with_a_plaintext_protocol_are_refused(tls_files: tuple[Path, Path]) -> None:
    cert, _key = tls_files
    with pytest.raises(ConfigError, match="SSL or SASL_SSL"):
        client_kwargs(settings(kafka_ssl_cafile=cert))


def test_the_password_is_never_in_what_may_be_logged() -> None:
    s = settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="alice",
        kafka_sasl_password=PASSWORD,
    )
    text = describe(s)
    assert "alice" in text and "PLAIN" in text and "broker-1:9092" in text
    assert PASSWORD not in text
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.model_dump())


@pytest.mark.parametrize("idempotent", [True, False])
async def test_producers_honour_the_idempotence_switch(idempotent: bool) -> None:
    producer = make_producer(settings(kafka_idempotent_producer=idempotent))
    try:
        assert (producer._txn_manager is not None) is idempotent
        assert producer.client._bootstrap_servers == "broker-1:9092,broker-2:9092"
    finally:
        await producer.stop()


async def test_consumers_commit_manually_in_the_configured_group() -> None:
    consumer = make_consumer(settings(kafka_group_id="intake-7"))
    try:
        assert consumer._group_id == "intake-7"
        assert consumer._enable_auto_commit is False
    finally:
        await consumer.stop()


async def test_consumers_fetch_as_much_per_partition_as_configured() -> None:
    options = session_options(settings(kafka_fetch_partition_bytes=262_144))
    assert options["max_partition_fetch_bytes"] == 262_144
    consumer = make_consumer(settings(), **options)
    try:
        assert consumer._max_partition_fetch_bytes == 262_144
    finally:
        await consumer.stop()
