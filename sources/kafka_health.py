"""How the Kafka consume loop is doing: its beats for ``/healthz``, its
readiness for ``/readyz``, and the consumer lag per partition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.clock import monotonic
from orchestrator.health import Liveness
from orchestrator.metrics import METRICS
from sources.kafka_config import AIOKafkaConsumer

#: The consume loop's name in ``/healthz``.
LOOP_NAME = "kafka intake"


class ConsumerHealth:
    def __init__(self) -> None:
        self.failing_since: float | None = None
        """When the loop began failing (unreachable broker, ...); None while it reads."""

    @staticmethod
    def beat(liveness: Liveness | None) -> None:
        if liveness is not None:
            liveness.beat(LOOP_NAME)

    @staticmethod
    def idle(liveness: Liveness | None) -> None:
        """Waiting for topics is not being stuck."""
        if liveness is not None:
            liveness.forget(LOOP_NAME)

    def read(self) -> None:
        self.failing_since = None

    def failed(self) -> None:
        if self.failing_since is None:
            self.failing_since = monotonic()

    def not_ready(self, stale_s: float, last_error: str | None) -> str | None:
        """Ready while assigned or still connecting; not once failing for
        longer than the health allowance."""
        since = self.failing_since
        if since is not None and monotonic() - since > stale_s:
            return f"cannot read from Kafka for {monotonic() - since:.0f}s: {last_error}"
        return None

    @staticmethod
    def report_lag(consumer: AIOKafkaConsumer, next_offsets: Mapping[Any, int]) -> None:
        """Per assigned partition, how far the next offset to read is behind
        the high watermark the broker last reported (no round trip)."""
        for tp in consumer.assignment():
            end, at = consumer.highwater(tp), next_offsets.get(tp)
            if end is not None and at is not None:
                METRICS.kafka_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - at))

    @staticmethod
    def forget_lag() -> None:
        METRICS.kafka_lag.clear()
