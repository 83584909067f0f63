"""Pause scenario: pause_buffer.

Two workflows of the same shape on two topics, each fed ``--pause-events``
~1 KB events produced before the clock starts. ``live`` is consumed unpaused
(each event starts its run); ``held`` is paused first (``on_pause: buffer``),
so each event is recorded and buffered instead; then ``held`` is unpaused and
the time until every buffered run has started (one transaction) is measured.
Runs are created, not executed (``worker_slots=0``), as in kafka_intake.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from bench.harness import Figure, scratch_database
from bench.kafka_scenarios import PARTITIONS, _kafka, _produce
from bench.registry import option, scenario
from orchestrator.app import Orchestrator
from orchestrator.pausing import pause_workflow, unpause_workflow
from orchestrator.settings import Settings
from orchestrator.sources import SourceContext
from orchestrator.spec import OnPause, TaskSpec, WorkflowSpec
from sources.kafka import EMBEDDED_CONSUMER_OPTIONS, KafkaSource
from sources.kafka_broker import ensure_topics
from sources.models import KafkaTrigger

option(
    "--pause-events",
    type=int,
    default=50_000,
    help="pause_buffer: events buffered while paused, and as many unpaused (default 50000)",
)


def _flow(name: str, topic: str) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        on_pause=OnPause.BUFFER,
        tasks=(TaskSpec(id="accept", handler="noop"),),
        triggers=(KafkaTrigger(topic=topic, params={"order_id": "{{ payload.order_id }}"}),),
    )


async def _intake(
    settings: Settings,
    db_url: str,
    spec: WorkflowSpec,
    events: int,
    *,
    paused: bool,
    options: dict[str, Any],
) -> tuple[float, Orchestrator]:
    """Seconds to record ``events`` of ``spec``'s topic (paused first when asked)."""
    source = KafkaSource(consumer_options=options)
    orch = Orchestrator(settings, db_url, workflows=[spec])
    await orch.__aenter__()
    assert orch.engine is not None and orch.intake is not None
    if paused:
        await pause_workflow(orch.engine, spec.name, actor="bench", reason="pause_buffer")
    source.setup(SourceContext(settings, orch.engine, orch.intake, orch.clock, None))
    source.use_router(orch.intake.router)
    started = time.perf_counter()
    await source.start()
    try:
        deadline = started + 600
        while source.stats.messages < events:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {source.stats.messages} of {events} recorded in 600 s")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        await source.stop()
    return elapsed, orch


async def pause_buffer(url: str, *, events: int = 50_000) -> list[Figure]:
    run_id = uuid.uuid4().hex[:8]
    live_topic, held_topic = f"bench_live_{run_id}", f"bench_held_{run_id}"
    live, held = _flow("bench_live", live_topic), _flow("bench_held", held_topic)
    async with _kafka() as (bootstrap, embedded), scratch_database(url) as (db_url, db):

        def settings(group: str) -> Settings:
            overrides: dict[str, Any] = {
                "kafka_bootstrap": bootstrap,
                "kafka_group_id": f"bench_{group}_{run_id}",
                "worker_slots": 0,
            }
            if embedded:
                overrides["kafka_idempotent_producer"] = False
            return Settings(**overrides)

        base = settings("produce")
        await ensure_topics(base, {live_topic: PARTITIONS, held_topic: PARTITIONS})
        payload_bytes = await _produce(base, live_topic, events)
        await _produce(base, held_topic, events)

        options = dict(EMBEDDED_CONSUMER_OPTIONS) if embedded else {}
        live_s, orch = await _intake(
            settings("live"), db_url, live, events, paused=False, options=options
        )
        await orch.__aexit__(None, None, None)
        held_s, orch = await _intake(
            settings("held"), db_url, held, events, paused=True, options=options
        )
        try:
            assert orch.engine is not None
            async with db.pool.acquire() as conn:
                buffered = await conn.fetchval(
                    "SELECT count(*) FROM held_events WHERE state = 'buffered'"
                )
                before = await conn.fetchval("SELECT count(*) FROM runs")
            started = time.perf_counter()
            done = await unpause_workflow(orch.engine, held.name, actor="bench")
            unpause_s = time.perf_counter() - started
        finally:
            await orch.__aexit__(None, None, None)
        async with db.pool.acquire() as conn:
            runs = await conn.fetchval("SELECT count(*) FROM runs WHERE workflow = $1", held.name)
    if buffered != events or len(done.run_ids) != events or runs != events or before != events:
        raise AssertionError(
            f"expected {events} buffered events and runs; buffered {buffered}, "
            f"started {len(done.run_ids)}, runs {runs} (live runs {before})"
        )
    live_rate, held_rate = events / live_s, events / held_s
    ctx: dict[str, Any] = {
        "events": events,
        "partitions": PARTITIONS,
        "payload_bytes": payload_bytes,
        "unpaused_events_per_s": round(live_rate),
        "paused_events_per_s": round(held_rate),
        "unpaused_s": round(live_s, 3),
        "paused_s": round(held_s, 3),
        "unpause_s": round(unpause_s, 3),
        "broker": "embedded" if embedded else "external",
    }
    return [
        Figure("pause_buffer", "unpause_all_started_s", unpause_s, "s", "<= 20", ctx),
        Figure(
            "pause_buffer", "paused_vs_unpaused_intake", 100 * held_rate / live_rate, "%", ">= 90"
        ),
        Figure("pause_buffer", "paused_events_per_s", held_rate, "events/s", ""),
        Figure("pause_buffer", "unpaused_events_per_s", live_rate, "events/s", ""),
    ]


@scenario(
    "pause_buffer",
    "50,000 Kafka events buffered while paused, then unpause: seconds until every run "
    "started, and the paused intake rate against the unpaused one",
)
async def _pause_buffer(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await pause_buffer(url, events=args.pause_events)
