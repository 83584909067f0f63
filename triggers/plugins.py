"""Entry points (see ``orchestrator.plugins``): each event source says whether
this process's settings enable it, and how ``orchestrator dev`` sets it up
with zero configuration."""

from __future__ import annotations

import asyncio

from orchestrator.plugins import DevPreparation
from orchestrator.settings import Settings
from orchestrator.sources import Source


class KafkaPlugin:
    def create(self, settings: Settings) -> Source | None:
        if not settings.has_role("kafka") or not settings.kafka_bootstrap:
            return None
        from triggers.kafka import KafkaSource

        return KafkaSource()

    async def prepare_dev(self, settings: Settings) -> DevPreparation | None:
        """No bootstrap servers configured: run the embedded broker for this session."""
        if not settings.has_role("kafka") or settings.kafka_bootstrap:
            return None
        from triggers.kafka import EMBEDDED_CONSUMER_OPTIONS
        from triggers.kafka_broker import EmbeddedKafka

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


class WebhookPlugin:
    def create(self, settings: Settings) -> Source | None:
        if not settings.has_role("api"):
            return None
        from triggers.webhook import WebhookSource

        return WebhookSource()

    async def prepare_dev(self, settings: Settings) -> DevPreparation | None:
        if not settings.has_role("api"):
            return None
        from triggers.webhook import dev_banner

        # Makes up ORCHESTRATOR_WEBHOOK_SECRET_SALES for this process when unset.
        return DevPreparation(banner=dev_banner("sales"))


class FilesPlugin:
    def create(self, settings: Settings) -> Source | None:
        if not settings.has_role("files"):
            return None
        from triggers.files import LandingSource

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


class SchedulerPlugin:
    def create(self, settings: Settings) -> Source | None:
        if not settings.has_role("scheduler"):
            return None
        from triggers.schedule import ScheduleSource

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


kafka = KafkaPlugin()
webhook = WebhookPlugin()
files = FilesPlugin()
scheduler = SchedulerPlugin()
