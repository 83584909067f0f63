"""Entry points (see ``orchestrator.plugins``): each built-in event source
registers its trigger model, what its sensors wait on, its SQL and migrations
(this package's ``sql/`` and ``migrations/``) and its CLI commands; says whether
this process's settings enable it; and how ``orchestrator dev`` sets it up with
zero configuration. Modules that need aiokafka or aiohttp load only when used."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.plugins import DevPreparation, SensorKeys, SourcePlugin
from orchestrator.settings import Settings
from sources.models import FileTrigger, KafkaTrigger, ScheduleTrigger, WebhookTrigger

if TYPE_CHECKING:
    import click
    from aiohttp import web

    from orchestrator.sources import Source

#: Named queries and migrations of every built-in source.
STORE = "sources"


def _kafka_sensor_waits_on(inputs: Mapping[str, Any]) -> tuple[str, str] | None:
    """``sensor.kafka`` waits on a literal topic and correlation expression."""
    topic, expression = inputs.get("topic"), inputs.get("correlation")
    if isinstance(topic, str) and isinstance(expression, str):
        return topic, expression
    return None


class KafkaPlugin(SourcePlugin):
    triggers = (KafkaTrigger,)
    sensors = (SensorKeys("sensor.kafka", "kafka", waits_on=_kafka_sensor_waits_on),)
    store = STORE

    def commands(self) -> Sequence[click.Command]:
        from sources.commands import publish

        return (publish,)

    def create(self, settings: Settings) -> Source | None:
        if not settings.has_role("kafka") or not settings.kafka_bootstrap:
            return None
        from sources.kafka import KafkaSource

        return KafkaSource()

    async def prepare_dev(self, settings: Settings) -> DevPreparation | None:
        """No bootstrap servers configured: run the embedded broker for this session."""
        if not settings.has_role("kafka") or settings.kafka_bootstrap:
            return None
        from sources.kafka import EMBEDDED_CONSUMER_OPTIONS
        from sources.kafka_broker import EmbeddedKafka

        broker = EmbeddedKafka()
        await asyncio.to_thread(broker.start)

        async def cleanup() -> None:
            await asyncio.to_thread(broker.stop)

        return DevPreparation(
            settings={
                "kafka_bootstrap": broker.bootstrap,
                "kafka_idempotent_producer": False,  # the embedded broker lacks it
                "kafka_session_timeout_ms": EMBEDDED_CONSUMER_OPTIONS["session_timeout_ms"],
                "kafka_fetch_max_wait_ms": EMBEDDED_CONSUMER_OPTIONS["fetch_max_wait_ms"],
            },
            banner=[
                f"Publish a Kafka event (embedded broker at {broker.bootstrap}):",
                '  orchestrator publish orders \'{"order_id": "A-1001", "customer": "c-42"}\'',
                "then end order_fulfillment's wait for the shipment:",
                '  orchestrator publish shipments \'{"order_id": "A-1001", "carrier": "dhl"}\'',
            ],
            cleanup=cleanup,
        )


class WebhookPlugin(SourcePlugin):
    triggers = (WebhookTrigger,)

    def commands(self) -> Sequence[click.Command]:
        from sources.commands import hook_send

        return (hook_send,)

    def create(self, settings: Settings) -> Source | None:
        if not settings.has_role("api"):
            return None
        from sources.webhook import WebhookSource

        return WebhookSource()

    async def prepare_dev(self, settings: Settings) -> DevPreparation | None:
        if not settings.has_role("api"):
            return None
        from sources.webhook import dev_banner

        # Makes up ORCHESTRATOR_WEBHOOK_SECRET_SALES for this process when unset.
        return DevPreparation(banner=dev_banner("sales"))


class FilesPlugin(SourcePlugin):
    triggers = (FileTrigger,)
    # Waits on one path name its channel key; waits on a glob match paths by pattern.
    sensors = (SensorKeys("sensor.file", "file", keyed_by_channel=True, by_pattern=True),)
    store = STORE

    def create(self, settings: Settings) -> Source | None:
        if not settings.has_role("files"):
            return None
        from sources.files import LandingSource

        return LandingSource()

    async def prepare_dev(self, settings: Settings) -> DevPreparation | None:
        if not settings.has_role("files"):
            return None
        landing = settings.landing_dir
        return DevPreparation(
            banner=[
                f"Drop a file into {landing}/ (taken once its size and mtime hold still):",
                f"  mkdir -p {landing}/crm && echo 'id,name' > {landing}/crm/contacts.csv",
            ]
        )


class SchedulerPlugin(SourcePlugin):
    triggers = (ScheduleTrigger,)
    looked_up_first = ("schedule",)
    store = STORE

    def commands(self) -> Sequence[click.Command]:
        from sources.commands import backfill, backfills

        return (backfill, backfills)

    def add_routes(self, app: web.Application) -> None:
        from sources import api_backfills

        api_backfills.add_routes(app)

    def create(self, settings: Settings) -> Source | None:
        if not settings.has_role("scheduler"):
            return None
        from sources.schedule import ScheduleSource

        return ScheduleSource()

    async def prepare_dev(self, settings: Settings) -> DevPreparation | None:
        if not settings.has_role("scheduler"):
            return None
        return DevPreparation(
            banner=[
                "Run a scheduled workflow for past dates:",
                "  orchestrator backfill nightly_report --start 2026-01-01 --end 2026-01-04",
            ]
        )


class LifecyclePlugin(SourcePlugin):
    """Not an event source: the relay that publishes lifecycle events to Kafka
    (``sources/lifecycle_relay.py``), run like one in processes with the worker role."""

    store = STORE

    def create(self, settings: Settings) -> Source | None:
        if not (
            settings.lifecycle_topic
            and settings.lifecycle_relay
            and settings.kafka_bootstrap
            and settings.has_role("worker")
        ):
            return None
        from sources.lifecycle_relay import LifecycleRelay

        return LifecycleRelay()


kafka = KafkaPlugin()
webhook = WebhookPlugin()
files = FilesPlugin()
scheduler = SchedulerPlugin()
lifecycle = LifecyclePlugin()
