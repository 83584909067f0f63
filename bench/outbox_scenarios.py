"""Lifecycle events scenario: outbox. The relay publishes every transition of
``fanout`` to Kafka while the engine runs it: events/s to the broker, the lag
(how long after a change everything before it was on the topic), and fanout's
runs/s with the relay on against off (alternated rounds, medians).

The relay runs in a process of its own (a replica with the worker role and no
worker slots) and, for comparison, in the engine's process (a worker replica
relaying too). Kafka is ``ORCHESTRATOR_KAFKA_BOOTSTRAP`` when set, else the
embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from typing import Any

from bench.engine_scenarios import bench_settings, chain
from bench.harness import Figure, scratch_database
from bench.kafka_scenarios import _kafka
from bench.registry import scenario
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.engine import RunRequest
from orchestrator.run_waiter import RunWaiter
from orchestrator.store import Database
from sources.kafka_broker import ensure_topics
from sources.lifecycle_relay import LifecycleRelay, group_status
from sources.queries import SQL


async def _relay_process(db_url: str, bootstrap: str, topic: str, embedded: bool) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.outbox_relay",
        db_url,
        bootstrap,
        topic,
        "plain" if embedded else "idempotent",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"READY":
        raise RuntimeError(f"the relay process did not start: {line!r}")
    return proc


async def _fanout_once(
    url: str, runs: int, relay_in: str, bootstrap: str, embedded: bool
) -> tuple[float, dict[str, Any]]:
    """fanout's runs/s; with ``relay_in`` "process" (the engine's) or "own" (a
    process of its own), a relay publishing as it runs; "off": none."""
    spec = chain("fanout3", 3)
    overrides: dict[str, Any] = {}
    topic = f"bench_lifecycle_{uuid.uuid4().hex[:8]}"
    if relay_in != "off":
        await ensure_topics(bootstrap, {topic: 6})
        overrides = {
            "kafka_bootstrap": bootstrap,
            "lifecycle_topic": topic,
            "kafka_idempotent_producer": not embedded,
        }
    settings = bench_settings(**overrides)
    relay = LifecycleRelay() if relay_in == "process" else None
    async with scratch_database(url) as (db_url, db):
        own = (
            await _relay_process(db_url, bootstrap, topic, embedded) if relay_in == "own" else None
        )
        try:
            async with Orchestrator(
                settings,
                db_url,
                registry=builtin_registry(),
                workflows=[spec],
                sources=[relay] if relay else [],
                migrate=False,
            ) as orch:
                assert orch.engine is not None and orch.db is not None
                return await _measure(orch, db, runs, relay_in != "off")
        finally:
            if own is not None:
                own.terminate()
                await own.wait()


async def _measure(
    orch: Orchestrator, db: Database, runs: int, relaying: bool
) -> tuple[float, dict[str, Any]]:
    assert orch.engine is not None and orch.db is not None
    async with RunWaiter(orch.db, poll_s=0.05) as waiter:
        await waiter.wait([await orch.engine.trigger("fanout3", actor="bench")], timeout=60)
        lags: list[float] = []
        sampling = relaying

        async def sample() -> None:
            # Every change committed longer ago than this is on the topic.
            while sampling:
                through = (await group_status(db)).published_through
                if through is not None:
                    lags.append((SYSTEM_CLOCK.now() - through).total_seconds())
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        ids = await orch.engine.create_runs(
            [RunRequest("fanout3") for _ in range(runs)], actor="bench"
        )
        await waiter.wait(ids, timeout=600)
        ended = time.perf_counter()
        rate = runs / (ended - started)
        if not relaying:
            return rate, {}
        # The cursors were created before the first transition: all go out.
        async with db.pool.acquire() as conn:
            written = await conn.fetchval("SELECT count(*) FROM transitions")
        while True:
            if (await group_status(db)).published >= written:
                break
            await asyncio.sleep(0.01)
        caught_up = time.perf_counter()
        sampling = False
        await sampler
        return rate, {
            "events": written,
            "events_per_s": written / (caught_up - started),
            "behind_at_fanout_end_s": caught_up - ended,
            "lag_max_s": max(lags, default=0.0),
            "lag_p50_s": statistics.median(lags) if lags else 0.0,
        }


async def _capacity(url: str, runs: int, bootstrap: str, embedded: bool) -> dict[str, Any]:
    """The relay's own pace, not bounded by the engine's: fanout runs once with
    no relay (a backlog), then the relay starts as fanout runs again; events/s
    from the relay's start until it has caught up with both."""
    spec = chain("fanout3", 3)
    topic = f"bench_lifecycle_{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, {topic: 6})
    settings = bench_settings(
        kafka_bootstrap=bootstrap, lifecycle_topic=topic, kafka_idempotent_producer=not embedded
    )
    async with (
        scratch_database(url) as (db_url, db),
        Orchestrator(settings, db_url, registry=builtin_registry(), workflows=[spec]) as orch,
    ):
        assert orch.engine is not None and orch.db is not None
        async with db.pool.acquire() as conn:  # the cursors start before the backlog
            await conn.execute(SQL.lifecycle_create_cursors, settings.lifecycle_partitions)
        async with RunWaiter(orch.db, poll_s=0.05) as waiter:
            requests = [RunRequest("fanout3") for _ in range(runs)]
            await waiter.wait(await orch.engine.create_runs(requests, actor="bench"), timeout=600)
            relay = LifecycleRelay()
            relay.attach(settings, orch.db, SYSTEM_CLOCK)
            started = time.perf_counter()
            async with relay:
                ids = await orch.engine.create_runs(requests, actor="bench")
                await waiter.wait(ids, timeout=600)
                async with db.pool.acquire() as conn:
                    written = await conn.fetchval("SELECT count(*) FROM transitions")
                while True:
                    if (await group_status(db)).published >= written:
                        break
                    await asyncio.sleep(0.01)
                elapsed = time.perf_counter() - started
    return {"events": written, "seconds": round(elapsed, 3), "events_per_s": written / elapsed}


async def outbox(url: str, *, runs: int, rounds: int = 3) -> list[Figure]:
    rates: dict[str, list[float]] = {"off": [], "process": [], "own": []}
    relay: dict[str, list[dict[str, Any]]] = {"process": [], "own": []}
    async with _kafka() as (bootstrap, embedded):
        for _ in range(rounds):
            for mode in rates:
                rate, seen = await _fanout_once(url, runs, mode, bootstrap, embedded)
                rates[mode].append(rate)
                if mode in relay:
                    relay[mode].append(seen)
        capacity = await _capacity(url, runs, bootstrap, embedded)
    off = statistics.median(rates["off"])
    ctx: dict[str, Any] = {
        "runs": runs,
        **{f"runs_per_s_relay_{m}": [round(v, 1) for v in r] for m, r in rates.items()},
        "broker": "embedded" if embedded else "external",
        "load_average": os.getloadavg(),
    }
    relayed = relay["process"] + relay["own"]
    rctx = {**ctx, "rounds": relay}
    events_per_s = statistics.median(r["events_per_s"] for r in relayed)
    lag = max(max(r["lag_max_s"], r["behind_at_fanout_end_s"]) for r in relayed)
    return [
        Figure("outbox", "relay_events_per_s", events_per_s, "events/s", ">= 10000", rctx),
        Figure(
            "outbox",
            "relay_backlog_events_per_s",
            capacity["events_per_s"],
            "events/s",
            ">= 10000",
            {**ctx, **capacity},
        ),
        Figure("outbox", "relay_lag_max_s", lag, "s", "<= 1", rctx),
        Figure(
            "outbox",
            "fanout_ratio_relay_own_process",
            statistics.median(rates["own"]) / off,
            "x",
            ">= 0.9",
            ctx,
        ),
        Figure(
            "outbox",
            "fanout_ratio_relay_in_engine_process",
            statistics.median(rates["process"]) / off,
            "x",
            context=ctx,
        ),
    ]


@scenario(
    "outbox",
    "fanout with lifecycle events published to Kafka vs without: relay events/s, lag, cost",
)
async def _outbox(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await outbox(url, runs=args.runs)
