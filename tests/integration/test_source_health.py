"""Readiness and metrics of the event sources: a Kafka consumer's lag per
partition and its readiness while the broker cannot be reached, the landing
zone's pending files and its readiness once the zone is gone."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import aiohttp
from eventually import eventually
from test_metrics import samples

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, ManualClock
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from sources.files import LandingSource
from sources.kafka import KafkaSource
from sources.kafka_publish import publish
from sources.models import FileTrigger, KafkaTrigger


def on_topic(name: str, topic: str) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(KafkaTrigger(topic=topic),),
    )


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        if resp.content_type.endswith("json"):
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def test_kafka_lag_per_partition_queue_wait_and_readiness(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("lag", partitions=2)
    settings = kafka_env.settings(worker_slots=2)
    source = KafkaSource(consumer_options=kafka_env.consumer_options)
    async with Orchestrator(
        settings,
        db_url,
        registry=builtin_registry(),
        workflows=[on_topic("lagged", topic)],
        sources=[source],
        http=True,
    ) as orch:
        assert orch.http is not None and orch.db is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        sent = await publish(settings, topic, [{"n": i} for i in range(4)], key="k")
        partition = sent[0][0]

        async def runs() -> list[int]:
            assert orch.db is not None
            async with orch.db.pool.acquire() as conn:
                ids = [r["id"] for r in await conn.fetch("SELECT id FROM runs")]
            return ids if len(ids) == 4 else []

        ids = await eventually(runs, timeout=30, what="a run per message")
        await wait_for_runs(orch.db, ids, timeout=30)
        status, text = await get(base + "/metrics")
        found = samples(text)
        # Every message read: nothing behind the high watermark.
        lag = ("orchestrator_kafka_consumer_lag", (("partition", str(partition)), ("topic", topic)))
        assert found[lag] == 0
        assert found[("orchestrator_task_queue_wait_seconds_count", ())] >= 4
        assert ("orchestrator_db_pool_waiters", ()) in found
        status, body = await get(base + "/readyz")
        assert (status, body) == (200, {"status": "ready"})
        # The consume loop is watched like the worker's: a wedged one turns /healthz 503.
        assert "kafka intake" in orch.liveness.loops()
        assert (await get(base + "/healthz"))[0] == 200


async def test_a_consumer_that_cannot_reach_its_broker_is_not_ready(db_url: str) -> None:
    # Nothing listens on port 9: every attempt to connect is refused at once.
    settings = Settings(
        kafka_bootstrap="127.0.0.1:9",
        worker_slots=0,
        http_port=0,
        health_stale_s=0.5,
        poll_interval_s=0.05,
    )
    source = KafkaSource()
    async with Orchestrator(
        settings,
        db_url,
        workflows=[on_topic("unreachable", "nowhere")],
        sources=[source],
        http=True,
    ) as orch:
        assert orch.http is not None
        url = f"http://127.0.0.1:{orch.http.port}/readyz"

        async def not_ready() -> Any:
            status, body = await get(url)
            return body if status == 503 else None

        body = await eventually(not_ready, timeout=30, what="/readyz to give up on Kafka")
        [problem] = body["problems"]
        assert problem.startswith("kafka: cannot read from Kafka for ")
        # Liveness is another matter: the process is fine, only not ready.
        status, _ = await get(f"http://127.0.0.1:{orch.http.port}/healthz")
        assert status == 200


async def test_pending_landing_files_are_counted_and_a_vanished_zone_is_not_ready(
    db_url: str, tmp_path: Path
) -> None:
    zone = tmp_path / "landing"
    clock = ManualClock(SYSTEM_CLOCK.now())  # never moves: the file stays pending
    spec = WorkflowSpec(
        name="landed",
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(FileTrigger(glob="in/*.csv", quiet_s=60),),
    )
    settings = Settings(worker_slots=0, http_port=0, landing_dir=zone, landing_rescan_s=0.2)
    source = LandingSource()
    async with Orchestrator(
        settings, db_url, workflows=[spec], sources=[source], clock=clock, http=True
    ) as orch:
        assert orch.http is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        assert (await get(base + "/readyz"))[0] == 200
        (zone / "in").mkdir(parents=True)
        (zone / "in" / "a.csv").write_text("id\n1\n")

        async def pending() -> bool:
            found = samples((await get(base + "/metrics"))[1])
            return found[("orchestrator_landing_files_pending", ())] == 1

        await eventually(pending, timeout=20, what="the file counted as pending")
        shutil.rmtree(zone)

        async def not_ready() -> Any:
            status, body = await get(base + "/readyz")
            return body if status == 503 else None

        body = await eventually(not_ready, timeout=20, what="/readyz to miss the landing zone")
        assert all(p.startswith("files: ") for p in body["problems"]), body
