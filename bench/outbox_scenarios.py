"""Lifecycle events scenario: outbox. The relay publishes every transition of
``fanout`` to Kafka while the engine runs it: events/s to the broker, the lag
(how long after a change everything before it was on the topic), and fanout's
runs/s with the relay on against off: rounds of the three modes one after
the other, the figure the median of each round's ratio (a round's phases are
seconds apart, so the machine's drift weighs on both alike).

The relay runs in a process of its own (a replica with the worker role and no
worker slots) and, for comparison, in the engine's process (a worker replica
relaying too). Kafka is ``ORCHESTRATOR_KAFKA_BOOTSTRAP`` when set, else the
embedded broker.

On a machine of few cores, what the relay costs the engine is the CPU it and
the work it causes take: the relay process's own, its database sessions' and
the broker's. These are measured per event published (relay in its own
process), which load from elsewhere changes far less than runs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from bench.cpu_use import backends_cpu_s, cpu_s
from bench.engine_scenarios import bench_settings, chain
from bench.harness import Figure, scratch_database
from bench.outbox_explain import relay_statements
from bench.registry import scenario
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.engine import RunRequest
from orchestrator.run_waiter import RunWaiter
from orchestrator.store import Database
from sources.kafka_broker import EmbeddedKafka, ensure_topics
from sources.lifecycle_relay import LifecycleRelay, group_status
from sources.queries import SQL

#: The database sessions of the relay process, by name (their CPU use).
_RELAY_SESSIONS = "bench-lifecycle-relay"

#: A reading of CPU seconds spent so far: "relay" (the process), "relay_db"
#: (its database sessions), "broker" (None: not on this machine), and
#: "published" (events).
Probe = Callable[[], Awaitable[dict[str, float | None]]]


@dataclass(frozen=True)
class _Broker:
    bootstrap: str
    embedded: bool
    pid: int | None


@contextlib.asynccontextmanager
async def _kafka() -> AsyncIterator[_Broker]:
    external = os.environ.get("ORCHESTRATOR_KAFKA_BOOTSTRAP")
    if external:
        yield _Broker(external, False, None)
        return
    async with EmbeddedKafka() as broker:
        yield _Broker(broker.bootstrap, True, broker.pid)


async def _relay_process(db_url: str, broker: _Broker, topic: str) -> Any:
    sep = "&" if "?" in db_url else "?"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.outbox_relay",
        f"{db_url}{sep}application_name={_RELAY_SESSIONS}",
        broker.bootstrap,
        topic,
        "plain" if broker.embedded else "idempotent",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"READY":
        raise RuntimeError(f"the relay process did not start: {line!r}")
    return proc


def _probe(proc: Any, db: Database, broker: _Broker) -> Probe:
    async def read() -> dict[str, float | None]:
        assert proc.stdout is not None
        proc.send_signal(signal.SIGUSR1)
        own = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        async with db.pool.acquire() as conn:
            sessions = await backends_cpu_s(conn, _RELAY_SESSIONS)
        return {
            "relay": own["cpu_s"],
            "relay_db": sessions,
            "broker": cpu_s(broker.pid) if broker.pid is not None else None,
            "published": own["published"],
        }

    return read


def _per_event_us(
    before: dict[str, float | None], after: dict[str, float | None]
) -> dict[str, Any]:
    """CPU microseconds per event published between two readings."""
    events = (after["published"] or 0) - (before["published"] or 0)
    out: dict[str, Any] = {"events_measured": events}
    for what in ("relay", "relay_db", "broker"):
        start, end = before[what], after[what]
        if start is not None and end is not None and events:
            out[f"{what}_cpu_us_per_event"] = round((end - start) / events * 1e6, 2)
    return out


async def _fanout_once(
    url: str, runs: int, relay_in: str, broker: _Broker
) -> tuple[float, dict[str, Any]]:
    """fanout's runs/s; with ``relay_in`` "process" (the engine's) or "own" (a
    process of its own), a relay publishing as it runs; "off": none."""
    spec = chain("fanout3", 3)
    overrides: dict[str, Any] = {}
    topic = f"bench_lifecycle_{uuid.uuid4().hex[:8]}"
    if relay_in != "off":
        await ensure_topics(broker.bootstrap, {topic: 6})
        overrides = {
            "kafka_bootstrap": broker.bootstrap,
            "lifecycle_topic": topic,
            "kafka_idempotent_producer": not broker.embedded,
        }
    settings = bench_settings(**overrides)
    relay = LifecycleRelay() if relay_in == "process" else None
    async with scratch_database(url) as (db_url, db):
        own = await _relay_process(db_url, broker, topic) if relay_in == "own" else None
        probe = _probe(own, db, broker) if own is not None else None
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
                return await _measure(orch, db, runs, relay_in != "off", probe)
        finally:
            if own is not None:
                own.terminate()
                await own.wait()


async def _measure(
    orch: Orchestrator, db: Database, runs: int, relaying: bool, probe: Probe | None
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
        cpu_before = await probe() if probe is not None else None
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
        cpu = _per_event_us(cpu_before, await probe()) if probe and cpu_before else {}
        sampling = False
        await sampler
        return rate, {
            **cpu,
            "events": written,
            "events_per_s": written / (caught_up - started),
            "behind_at_fanout_end_s": caught_up - ended,
            "lag_max_s": max(lags, default=0.0),
            "lag_p50_s": statistics.median(lags) if lags else 0.0,
        }


async def _capacity(url: str, runs: int, broker: _Broker) -> dict[str, Any]:
    """The relay's own pace, not bounded by the engine's: fanout runs once with
    no relay (a backlog), then the relay starts as fanout runs again; events/s
    from the relay's start until it has caught up with both."""
    spec = chain("fanout3", 3)
    topic = f"bench_lifecycle_{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker.bootstrap, {topic: 6})
    settings = bench_settings(
        kafka_bootstrap=broker.bootstrap,
        lifecycle_topic=topic,
        kafka_idempotent_producer=not broker.embedded,
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
            statements = await relay_statements(db_url, settings.lifecycle_batch)
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
    return {
        "events": written,
        "seconds": round(elapsed, 3),
        "events_per_s": written / elapsed,
        "statements": statements,
    }


async def outbox(url: str, *, runs: int, rounds: int = 5) -> list[Figure]:
    rates: dict[str, list[float]] = {"off": [], "process": [], "own": []}
    relay: dict[str, list[dict[str, Any]]] = {"process": [], "own": []}
    async with _kafka() as broker:
        for _ in range(rounds):
            for mode in rates:
                rate, seen = await _fanout_once(url, runs, mode, broker)
                rates[mode].append(rate)
                if mode in relay:
                    relay[mode].append(seen)
        capacity = await _capacity(url, runs, broker)

    def ratio(mode: str) -> float:
        return statistics.median(m / o for m, o in zip(rates[mode], rates["off"], strict=True))

    ctx: dict[str, Any] = {
        "runs": runs,
        **{f"runs_per_s_relay_{m}": [round(v, 1) for v in r] for m, r in rates.items()},
        "broker": "embedded" if broker.embedded else "external",
        "load_average": os.getloadavg(),
    }
    relayed = relay["process"] + relay["own"]
    rctx = {**ctx, "rounds": relay}
    cpu = [
        Figure(
            "outbox",
            metric,
            statistics.median(r[metric] for r in relay["own"]),
            "us/event",
            context={**ctx, "rounds": [r[metric] for r in relay["own"]]},
        )
        for metric in (
            "relay_cpu_us_per_event",
            "relay_db_cpu_us_per_event",
            "broker_cpu_us_per_event",
        )
        if all(metric in r for r in relay["own"])
    ]
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
            ratio("own"),
            "x",
            ">= 0.9",
            ctx,
        ),
        Figure(
            "outbox",
            "fanout_ratio_relay_in_engine_process",
            ratio("process"),
            "x",
            context=ctx,
        ),
        *cpu,
    ]


@scenario(
    "outbox",
    "fanout with lifecycle events published to Kafka vs without: relay events/s, lag, cost",
)
async def _outbox(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await outbox(url, runs=args.runs)
