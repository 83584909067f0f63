"""Deferred-wait scenarios: waiting, wake_latency.

Both use ``kafka`` waits (``sensor.kafka`` on a topic, correlation
``payload.order_id``, equals ``{{ params.order_id }}``) in ONE orchestrator
process: engine, worker (64 slots) and the :class:`KafkaSource` that consumes
the sensors' topic (``Router.channels("kafka")``), so the event that ends a wait goes the
whole product path: producer -> broker -> consumer -> ``Intake.ingest``, whose
transaction ends the wait and queues what follows. Kafka is
``ORCHESTRATOR_KAFKA_BOOTSTRAP`` when set, else the embedded broker.

- ``waiting``: N runs whose only task waits (the first 1,000 deferred by the
  worker, the rest copies of their rows: bench/wait_setup.py). While all N
  wait: the process's peak RSS, the worker slots in use (sampled), and
  event-loop lag. Then N matching messages are published and the clock runs
  until every run is ``success`` (the engine's runs-ended counter says when
  to count them in the database: counting a million rows over and over would
  load the database being measured).
- ``wake_latency``: one wait at a time; from just before the matching message
  is sent until the task after the sensor starts its handler.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from bench.harness import Figure, percentile, scratch_database
from bench.registry import option, scenario
from bench.wait_setup import (
    COPIED,
    TEMPLATE_RUNS,
    check_copies,
    copy_waits,
    grown_tables,
    order_id,
    publish_orders,
    rows_per_table,
)
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.context import TaskContext
from orchestrator.engine import RunRequest
from orchestrator.intake import Accepted, DeadLetter, Event, Intake
from orchestrator.metrics import METRICS
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database
from sources.kafka import EMBEDDED_CONSUMER_OPTIONS, KafkaSource
from sources.kafka_broker import EmbeddedKafka, ensure_topics
from sources.kafka_config import make_producer

PARTITIONS = 6
CREATE_BATCH = 1000
LAG_INTERVAL_S = 0.010
#: How long the consumer's fetch may wait at the broker for data (aiokafka's
#: ``fetch_max_wait_ms``, default 500). Kafka answers a waiting fetch as soon as
#: data arrives, but the embedded Tansu broker holds it for the whole wait, so a
#: message waits up to that long: 500 ms put ~245 ms into every wake-up. Idle
#: fetches at 5 ms cost ~6-12 % of a core here and about as much in the broker
#: (500 ms: ~1-2 % each).
EMBEDDED_FETCH_WAIT_MS = 5

option(
    "--waits",
    type=int,
    default=1_000_000,
    help="waiting: runs waiting at once (default 1000000)",
)
option("--wakes", type=int, default=200, help="wake_latency: wake-ups measured (default 200)")
option(
    "--fetch-wait-ms",
    type=int,
    default=None,
    help="waiting, wake_latency: the consumer's fetch_max_wait_ms (default "
    f"{EMBEDDED_FETCH_WAIT_MS} on the embedded broker, aiokafka's 500 on an external one)",
)


@contextlib.asynccontextmanager
async def _kafka() -> AsyncIterator[tuple[str, bool]]:
    """(bootstrap, embedded?)"""
    external = os.environ.get("ORCHESTRATOR_KAFKA_BOOTSTRAP")
    if external:
        yield external, False
        return
    async with EmbeddedKafka() as broker:
        yield broker.bootstrap, True


def _settings(bootstrap: str, embedded: bool) -> Settings:
    overrides: dict[str, Any] = {
        "worker_slots": 64,
        "claim_batch": 64,
        "db_pool_size": 8,
        "poll_interval_s": 1.0,
        "lease_s": 60.0,
        "kafka_bootstrap": bootstrap,
        "kafka_group_id": f"bench_{uuid.uuid4().hex[:8]}",
    }
    if embedded:
        overrides["kafka_idempotent_producer"] = False  # the embedded broker lacks it
    return Settings(**overrides)


def _source(embedded: bool, fetch_wait_ms: int | None) -> tuple[KafkaSource, dict[str, Any]]:
    options: dict[str, Any] = dict(EMBEDDED_CONSUMER_OPTIONS) if embedded else {}
    if fetch_wait_ms is None and embedded:
        fetch_wait_ms = EMBEDDED_FETCH_WAIT_MS
    if fetch_wait_ms is not None:
        options["fetch_max_wait_ms"] = fetch_wait_ms
    return KafkaSource(consumer_options=options), options


def _sensor(topic: str) -> TaskSpec:
    return TaskSpec(
        id="wait",
        handler="sensor.kafka",
        inputs={
            "topic": topic,
            "correlation": "payload.order_id",
            "equals": "{{ params.order_id }}",
        },
    )


def _rss_mib() -> tuple[float, float]:
    """(peak, current) resident set size of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    current = float("nan")
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return peak, current


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _count(db: Database, sql: str, *args: Any) -> int:
    async with db.pool.acquire() as conn:
        value: int = await conn.fetchval(sql, *args)
        return value


async def _until(
    db: Database,
    sql: str,
    *args: Any,
    want: int,
    timeout: float,
    what: str,
    every_s: float = 0.1,
) -> None:
    """Poll ``sql`` (a count) until it reaches ``want``."""
    deadline = time.perf_counter() + timeout
    while (got := await _count(db, sql, *args)) < want:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: {got} of {want} after {timeout:.0f} s")
        await asyncio.sleep(every_s)


async def _loop_lag(seconds: float) -> list[float]:
    """Overshoot (ms) of a 10 ms sleep, repeated for ``seconds``."""
    lags: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        await asyncio.sleep(LAG_INTERVAL_S)
        lags.append(max(0.0, time.perf_counter() - t - LAG_INTERVAL_S) * 1000)
    return lags


async def _assigned(source: KafkaSource, timeout: float = 60) -> None:
    deadline = time.perf_counter() + timeout
    while not source.stats.assigned:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the Kafka consumer got no partitions in {timeout:.0f} s")
        await asyncio.sleep(0.05)


RUNNING_TASKS = "SELECT count(*) FROM task_instances WHERE state = 'running'"
WAITING = "SELECT count(*) FROM deferrals WHERE state = 'waiting'"
SUCCESSFUL_RUNS = "SELECT count(*) FROM runs WHERE state = 'success'"
DEFERRED_TASKS = "SELECT count(*) FROM task_instances WHERE state = 'deferred'"
RUN_WAITING = "SELECT count(*) FROM deferrals WHERE run_id = $1 AND state = 'waiting'"


def _runs_succeeded() -> float:
    """Runs of bench_wait this process has seen succeed (the engine's counter)."""
    labels = {"workflow": "bench_wait", "state": "success"}
    return METRICS.registry.get_sample_value("orchestrator_runs_ended_total", labels) or 0.0


async def _all_released(db: Database, count: int, before: float, timeout: float) -> None:
    """Wait until ``count`` runs of bench_wait succeeded since the counter read
    ``before``: the engine's own counter says when to look (a count of a
    million rows ten times a second would load the database being measured),
    the database says when it is so."""
    deadline = time.perf_counter() + timeout
    while _runs_succeeded() - before < count:
        if time.perf_counter() > deadline:
            done = _runs_succeeded() - before
            raise TimeoutError(f"runs succeeded: {done:.0f} of {count}")
        await asyncio.sleep(0.02)
    await _until(db, SUCCESSFUL_RUNS, want=count, timeout=60, what="runs succeeded", every_s=0.02)


async def _make_waits(orch: Orchestrator, db: Database, count: int) -> None:
    """``count`` runs whose sensor waits: the first through the engine and
    the worker, the rest copies of what they wrote (see bench/wait_setup.py)."""
    assert orch.engine is not None
    made = min(count, TEMPLATE_RUNS)
    async with db.pool.acquire() as conn:
        before = await rows_per_table(conn)
    for first in range(0, made, CREATE_BATCH):
        await orch.engine.create_runs(
            [
                RunRequest("bench_wait", {"order_id": order_id(i)})
                for i in range(first, min(first + CREATE_BATCH, made))
            ],
            actor="bench",
        )
    await _until(db, WAITING, want=made, timeout=600, what="waits recorded")
    await _until(db, DEFERRED_TASKS, want=made, timeout=60, what="tasks deferred")
    async with db.pool.acquire() as conn:
        grown = grown_tables(before, await rows_per_table(conn))
        if grown != set(COPIED):
            raise AssertionError(
                f"deferring a sensor wrote to {sorted(grown)}, the copy makes {list(COPIED)}"
            )
        if count > made:
            template: int = await conn.fetchval(
                "SELECT id FROM runs WHERE params->>'order_id' = $1", order_id(0)
            )
            await copy_waits(conn, template, made, count - made)
            await check_copies(conn, made=1, copied=count - 1)


async def waiting(
    url: str, *, count: int, fetch_wait_ms: int | None, lag_s: float = 6.0
) -> list[Figure]:
    topic = f"bench_shipments_{uuid.uuid4().hex[:8]}"
    spec = WorkflowSpec(name="bench_wait", tasks=(_sensor(topic),))
    rss_before, _ = _rss_mib()
    async with _kafka() as (bootstrap, embedded):
        settings = _settings(bootstrap, embedded)
        await ensure_topics(settings, {topic: PARTITIONS})
        source, options = _source(embedded, fetch_wait_ms)
        async with (
            scratch_database(url) as (db_url, db),
            Orchestrator(
                settings, db_url, registry=builtin_registry(), workflows=[spec], sources=[source]
            ) as orch,
        ):
            assert orch.engine is not None and orch.worker is not None
            worker = orch.worker
            await _assigned(source)

            # 1. N waiting runs.
            started = time.perf_counter()
            await _make_waits(orch, db, count)
            deferred_s = time.perf_counter() - started
            await _until(db, WAITING, want=count, timeout=60, what="waits recorded")

            # 2. Everything waits: slots in use, event-loop lag, memory.
            calls_before = worker.executed
            running: list[int] = []
            busy: list[int] = []

            async def sample() -> None:
                end = time.perf_counter() + lag_s
                while time.perf_counter() < end:
                    running.append(await _count(db, RUNNING_TASKS))
                    # _busy: slots running a handler or waiting for its result to commit.
                    busy.append(worker._busy)
                    await asyncio.sleep(0.5)

            cpu_before, wall_before = _cpu_s(), time.perf_counter()
            lags, _ = await asyncio.gather(_loop_lag(lag_s), sample())
            cpu_waiting = (_cpu_s() - cpu_before) / (time.perf_counter() - wall_before)
            calls_while_waiting = worker.executed - calls_before
            peak_waiting, current_waiting = _rss_mib()
            still_waiting = await _count(db, WAITING)

            # 3. Release: N matching messages; the clock stops when every run succeeded.
            succeeded_before = _runs_succeeded()
            released = time.perf_counter()
            cpu_before = _cpu_s()
            producer = make_producer(settings, linger_ms=5, max_batch_size=256 * 1024)
            await producer.start()
            try:
                await publish_orders(producer, topic, PARTITIONS, count)
            finally:
                await producer.stop()
            published_s = time.perf_counter() - released
            await _all_released(db, count, succeeded_before, timeout=1800)
            release_s = time.perf_counter() - released
            cpu_release = _cpu_s() - cpu_before
            peak_after, _ = _rss_mib()
    slots_used = max(max(running), max(busy))
    ctx: dict[str, Any] = {
        "count": count,
        "wait_kind": "kafka",
        "worker_slots": settings.worker_slots,
        "partitions": PARTITIONS,
        "broker": "embedded" if embedded else "external",
        "consumer_options": options,
        "engine_made_waits": min(count, TEMPLATE_RUNS),
        "all_waiting_s": round(deferred_s, 2),
        "rss_before_mib": round(rss_before, 1),
        "rss_current_waiting_mib": round(current_waiting, 1),
        "rss_peak_after_release_mib": round(peak_after, 1),
        "still_waiting_after_measuring": still_waiting,
        "handler_calls_while_waiting": calls_while_waiting,
        "process_cpu_while_waiting_pct": round(cpu_waiting * 100, 1),
        "running_samples": running,
        "worker_busy_samples": busy,
        "lag_seconds": lag_s,
        "lag_samples": len(lags),
        "lag_max_ms": round(max(lags), 2),
        "lag_p50_ms": round(percentile(lags, 0.5), 2),
        "publish_s": round(published_s, 2),
        "released_runs_per_s": round(count / release_s),
        "process_cpu_us_per_release": round(cpu_release / count * 1e6, 1),
    }
    return [
        Figure("waiting", "peak_rss_mib", peak_waiting, "MiB", "<= 1024", ctx),
        Figure("waiting", "slots_used", slots_used, "slots", "== 0", ctx),
        Figure("waiting", "loop_lag_p99_ms", percentile(lags, 0.99), "ms", "<= 50", ctx),
        Figure("waiting", "release_s", release_s, "s", "<= 60", ctx),
    ]


def _time_ingest(intake: Intake, stamps: list[tuple[float, float]]) -> asyncio.Event:
    """Note when each ``Intake.ingest`` call starts and returns (one transaction
    each), to split the wake-up into stages; the path itself is unchanged. The
    event is set at each return: the woken task may start before ``ingest``
    returns (NOTIFY is sent at commit, before the connection is released)."""
    inner = intake.ingest
    returned = asyncio.Event()

    async def timed(
        events: Sequence[Event],
        *,
        dead_letters: Sequence[DeadLetter] = (),
        actor: str = "intake",
    ) -> list[Accepted]:
        begin = time.perf_counter()
        accepted = await inner(events, dead_letters=dead_letters, actor=actor)
        stamps.append((begin, time.perf_counter()))
        returned.set()
        return accepted

    intake.ingest = timed  # type: ignore[method-assign]
    return returned


async def wake_latency(
    url: str, *, count: int, fetch_wait_ms: int | None, warmup: int = 5
) -> list[Figure]:
    topic = f"bench_wake_{uuid.uuid4().hex[:8]}"
    registry = builtin_registry()
    marked: dict[int, asyncio.Future[float]] = {}

    async def mark(ctx: TaskContext) -> None:
        now = time.perf_counter()
        future = marked.get(ctx.run_id)
        if future is not None and not future.done():
            future.set_result(now)

    registry.register("bench.wake_mark", mark)
    spec = WorkflowSpec(
        name="bench_wake",
        tasks=(_sensor(topic), TaskSpec(id="after", handler="bench.wake_mark", upstream=("wait",))),
    )
    samples: list[float] = []
    stamps: list[tuple[float, float]] = []
    stages: dict[str, list[float]] = {
        "send_acked": [],
        "send_to_ingest": [],
        "ingest": [],
        "ingested_to_handler": [],
    }
    async with _kafka() as (bootstrap, embedded):
        settings = _settings(bootstrap, embedded)
        await ensure_topics(settings, {topic: PARTITIONS})
        source, options = _source(embedded, fetch_wait_ms)
        async with (
            scratch_database(url) as (db_url, db),
            Orchestrator(
                settings, db_url, registry=registry, workflows=[spec], sources=[source]
            ) as orch,
        ):
            assert orch.engine is not None and orch.intake is not None
            ingested = _time_ingest(orch.intake, stamps)
            await _assigned(source)
            producer = make_producer(settings, linger_ms=0)
            await producer.start()
            try:
                loop = asyncio.get_running_loop()
                for i in range(count + warmup):
                    order = f"wake-{i:06d}"
                    run_id = await orch.engine.trigger("bench_wake", {"order_id": order})
                    marked[run_id] = loop.create_future()
                    await _until(
                        db,
                        RUN_WAITING,
                        run_id,
                        want=1,
                        timeout=30,
                        what=f"run {run_id} deferred",
                        every_s=0.002,
                    )
                    stamps.clear()
                    ingested.clear()
                    t0 = time.perf_counter()
                    await producer.send_and_wait(
                        topic, orjson.dumps({"order_id": order}), key=order.encode()
                    )
                    acked = time.perf_counter()
                    async with asyncio.timeout(30):
                        woke = await marked[run_id]
                        await ingested.wait()
                    if i >= warmup:
                        samples.append((woke - t0) * 1000)
                        begin, end = stamps[0]
                        for stage, seconds in (
                            ("send_acked", acked - t0),
                            ("send_to_ingest", begin - t0),
                            ("ingest", end - begin),
                            # Can be negative: see _time_ingest.
                            ("ingested_to_handler", woke - end),
                        ):
                            stages[stage].append(seconds * 1000)
            finally:
                await producer.stop()
    ctx: dict[str, Any] = {
        "wakes": count,
        "wait_kind": "kafka",
        "partitions": PARTITIONS,
        "broker": "embedded" if embedded else "external",
        "consumer_options": options,
        "min_ms": round(min(samples), 2),
        "max_ms": round(max(samples), 2),
        "measured": "producer send -> next task's handler starts",
        # Where the time goes (p50 / p99 of each stage, ms).
        **{
            f"{stage}_ms": [round(percentile(v, 0.5), 2), round(percentile(v, 0.99), 2)]
            for stage, v in stages.items()
        },
    }
    return [
        Figure("wake_latency", "p50_ms", percentile(samples, 0.5), "ms", "<= 10", ctx),
        Figure("wake_latency", "p99_ms", percentile(samples, 0.99), "ms", "<= 50", ctx),
    ]


@scenario(
    "waiting",
    "1,000,000 runs waiting on kafka sensors in one process: RSS, slots, loop lag, release",
)
async def _waiting(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await waiting(url, count=args.waits, fetch_wait_ms=args.fetch_wait_ms)


@scenario("wake_latency", "200 kafka waits ended one at a time: send -> next task starts")
async def _wake_latency(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await wake_latency(url, count=args.wakes, fetch_wait_ms=args.fetch_wait_ms)
