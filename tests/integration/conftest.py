"""Kafka fixtures for the integration tests.

The broker is ``ORCHESTRATOR_TEST_KAFKA`` (host:port) when set, else an
embedded Tansu broker started once for the session on a free port. Each test
gets its own topic and consumer-group names from :class:`KafkaEnv`, so tests
never see each other's messages or offsets. Tests that restart the broker get
one of their own (:class:`OwnKafka`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from alert_receiver import Receiver
from local_http import local_server

from orchestrator.settings import Settings
from sources.kafka import EMBEDDED_CONSUMER_OPTIONS
from sources.kafka_broker import EmbeddedKafka, ensure_topics


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    explicit = os.environ.get("ORCHESTRATOR_TEST_KAFKA")
    if explicit:
        yield explicit
        return
    broker = EmbeddedKafka()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@dataclass
class KafkaEnv:
    """Unique names and matching settings for one test."""

    bootstrap: str
    prefix: str
    embedded: bool

    def topic(self, name: str = "t") -> str:
        return f"{self.prefix}_{name}"

    def group(self, name: str = "g") -> str:
        return f"{self.prefix}_{name}"

    def settings(self, group: str = "g", **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": self.bootstrap,
            "kafka_group_id": self.group(group),
            "worker_slots": 0,
            "http_port": 0,
        }
        if self.embedded:
            values["kafka_idempotent_producer"] = False  # the embedded broker lacks it
        values.update(overrides)
        return Settings(**values)

    @property
    def consumer_options(self) -> dict[str, Any]:
        """Short sessions: group joins and rebalances take about a second."""
        return dict(EMBEDDED_CONSUMER_OPTIONS)

    async def create_topic(self, name: str = "t", partitions: int = 1) -> str:
        topic = self.topic(name)
        await ensure_topics(self.bootstrap, {topic: partitions})
        return topic


@pytest.fixture
def kafka_env(kafka_bootstrap: str) -> KafkaEnv:
    return KafkaEnv(
        bootstrap=kafka_bootstrap,
        prefix=f"it_{uuid.uuid4().hex[:10]}",
        embedded="ORCHESTRATOR_TEST_KAFKA" not in os.environ,
    )


@dataclass
class OwnKafka:
    """An embedded broker for one test, which it may restart."""

    broker: EmbeddedKafka
    env: KafkaEnv

    async def restart(self) -> None:
        """Stop the broker and start a new one on the same port. It keeps
        everything in memory: topics, messages and committed offsets are gone,
        and a topic created again starts at offset 0 (as after ``orchestrator
        dev`` restarts)."""
        port = self.broker.port
        await asyncio.to_thread(self.broker.stop)
        self.broker = EmbeddedKafka(port=port)
        await asyncio.to_thread(self.broker.start)


@pytest.fixture
async def own_kafka() -> AsyncIterator[OwnKafka]:
    broker = EmbeddedKafka()
    await asyncio.to_thread(broker.start)
    env = KafkaEnv(bootstrap=broker.bootstrap, prefix=f"it_{uuid.uuid4().hex[:10]}", embedded=True)
    own = OwnKafka(broker, env)
    try:
        yield own
    finally:
        await asyncio.to_thread(own.broker.stop)


@pytest.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Receiver]:
    """A running :class:`alert_receiver.Receiver` with its signing secret set."""
    from aiohttp import web

    from orchestrator.signatures import generate_secret

    secret = generate_secret()
    monkeypatch.setenv("ORCHESTRATOR_SECRET_ALERT_KEY", secret)
    recv = Receiver(secret)
    app = web.Application()
    app.router.add_post("/{tail:.*}", recv.handle)
    async with local_server(app) as recv.url:
        try:
            yield recv
        finally:
            if recv.hold is not None:
                recv.hold.set()
