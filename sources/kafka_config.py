"""Settings to aiokafka clients: bootstrap, security protocol, SASL and TLS.

Every Kafka client of the project (the intake consumer, producers, the admin
client) is built here, so a broker's requirements are configured once: the
embedded test broker has no idempotent producer, so ``make_producer`` honours
``settings.kafka_idempotent_producer``. The SASL password is handed to aiokafka
and appears nowhere else: :func:`describe` is what may be logged.

aiokafka ships no type information; its names are imported (and re-exported)
here only, so the rest of the project has one place that says so (the wire
protocol types that ``kafka_metadata`` extends aside).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    KafkaError,
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]

from orchestrator.errors import ConfigError
from orchestrator.settings import Settings

__all__ = [
    "AIOKafkaAdminClient",
    "AIOKafkaConsumer",
    "AIOKafkaProducer",
    "CommitFailedError",
    "ConsumerRebalanceListener",
    "DefaultPartitioner",
    "KafkaError",
    "NewTopic",
    "OffsetOutOfRangeError",
    "TopicAlreadyExistsError",
    "TopicPartition",
    "bootstrap_of",
    "client_kwargs",
    "describe",
    "make_admin",
    "make_consumer",
    "make_producer",
]

CLIENT_ID = "orchestrator"


def bootstrap_of(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise ConfigError(
            "ORCHESTRATOR_KAFKA_BOOTSTRAP is not set: name the Kafka brokers as host:port[,...]"
        )
    return settings.kafka_bootstrap


def _existing(path: Path | None, key: str) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"ORCHESTRATOR_{key}: {path} is not a readable file")
    return str(path)


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    cafile = _existing(settings.kafka_ssl_cafile, "KAFKA_SSL_CAFILE")
    certfile = _existing(settings.kafka_ssl_certfile, "KAFKA_SSL_CERTFILE")
    keyfile = _existing(settings.kafka_ssl_keyfile, "KAFKA_SSL_KEYFILE")
    if keyfile and not certfile:
        raise ConfigError(
            "ORCHESTRATOR_KAFKA_SSL_KEYFILE is set without ORCHESTRATOR_KAFKA_SSL_CERTFILE"
        )
    try:
        # Without a CA file the system's trusted CAs are used; hostnames are checked.
        context: ssl.SSLContext = create_ssl_context(
            cafile=cafile, certfile=certfile, keyfile=keyfile
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the Kafka TLS files: {exc}") from None
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments every aiokafka client takes, from ``settings``.

    Raises :class:`ConfigError` naming the setting that is missing or wrong.
    """
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap_of(settings),
        "security_protocol": protocol,
        "client_id": CLIENT_ID,
    }
    uses_tls = protocol in ("SSL", "SASL_SSL")
    uses_sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    tls_files = [
        name
        for name, value in (
            ("KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
            ("KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
            ("KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile),
        )
        if value is not None
    ]
    if tls_files and not uses_tls:
        raise ConfigError(
            f"ORCHESTRATOR_{tls_files[0]} is set but ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL is "
            f"{protocol}; use SSL or SASL_SSL for TLS"
        )
    if uses_tls:
        kwargs["ssl_context"] = _ssl_context(settings)
    if uses_sasl:
        mechanism = settings.kafka_sasl_mechanism
        if mechanism is None:
            raise ConfigError(
                f"ORCHESTRATOR_KAFKA_SASL_MECHANISM is required with {protocol} "
                "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )
        if not settings.kafka_sasl_username:
            raise ConfigError(f"ORCHESTRATOR_KAFKA_SASL_USERNAME is required with {protocol}")
        if settings.kafka_sasl_password is None:
            raise ConfigError(f"ORCHESTRATOR_KAFKA_SASL_PASSWORD is required with {protocol}")
        kwargs["sasl_mechanism"] = mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    elif settings.kafka_sasl_mechanism is not None:
        raise ConfigError(
            "ORCHESTRATOR_KAFKA_SASL_MECHANISM is set but ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL "
            f"is {protocol}; use SASL_PLAINTEXT or SASL_SSL for SASL"
        )
    return kwargs


def describe(settings: Settings) -> str:
    """How the clients connect, for logs and banners: never the password."""
    parts = [settings.kafka_bootstrap or "(no bootstrap)", settings.kafka_security_protocol]
    if settings.kafka_sasl_mechanism:
        parts.append(f"{settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username or '?'}")
    return " ".join(parts)


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer (not started) that waits for all in-sync replicas; idempotent
    unless ``kafka_idempotent_producer`` is off (brokers without it)."""
    kwargs: dict[str, Any] = {
        **client_kwargs(settings),
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotent_producer,
    }
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


def make_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer (not started) in ``settings.kafka_group_id`` with manual commits:
    offsets are committed by the caller, only after what they cover is durable."""
    kwargs: dict[str, Any] = {
        **client_kwargs(settings),
        "group_id": settings.kafka_group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(**kwargs)


def make_admin(settings: Settings | str) -> AIOKafkaAdminClient:
    """An admin client (not started), from settings or a bare bootstrap string."""
    if isinstance(settings, str):
        return AIOKafkaAdminClient(bootstrap_servers=settings, client_id=CLIENT_ID)
    return AIOKafkaAdminClient(**client_kwargs(settings))


#: Consumer options for the embedded broker (dev mode, tests, bench). It holds
#: every group join for half the session timeout, so the default 10 s session
#: would delay the first event and every rebalance by 5 s. A loop stalled for
#: longer than 2 s costs a rebalance, which redelivery makes harmless.
EMBEDDED_CONSUMER_OPTIONS: dict[str, Any] = {
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 500,
    # It holds a fetch for the whole wait even when data arrives: keep it short
    # so a message wakes its sensor in milliseconds, not half a second.
    "fetch_max_wait_ms": 5,
}


def session_options(settings: Settings) -> dict[str, Any]:
    """Consumer session and fetch options from the settings when they have
    them (heartbeats at a quarter of ``kafka_session_timeout_ms``); else
    aiokafka's defaults."""
    session = settings.kafka_session_timeout_ms
    if not isinstance(session, int):
        return {}
    return {
        "session_timeout_ms": session,
        "heartbeat_interval_ms": max(100, session // 4),
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "max_partition_fetch_bytes": settings.kafka_fetch_partition_bytes,
    }


def describe_partitions(tps: set[Any]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))


def describe_offsets(offsets: Mapping[Any, int]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(offsets.items()))
