"""Prometheus metrics: counted in memory where things happen, database-wide
gauges read at scrape time (cached), served at ``/metrics``.

Counting costs no database round trip: the engine, intake, worker and HTTP
middleware increment process-local counters. What only the database knows
(tasks queued, the oldest queued task's age, waits) is read when scraped, at
most once per :data:`GAUGE_CACHE_S`. Every replica serves ``/metrics``: on the
API port, or on ``ORCHESTRATOR_METRICS_PORT`` (a replica without the API
role still has one).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from orchestrator.clock import monotonic, real_pause

if TYPE_CHECKING:
    from orchestrator.health import Liveness, Readiness
    from orchestrator.intake import Accepted, Event
    from orchestrator.store import Database

log = logging.getLogger(__name__)

#: Database-wide gauges are read at most this often, however often scraped.
GAUGE_CACHE_S = 5.0
_DURATIONS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs_started = Counter(
            "orchestrator_runs_started", "Runs created, by workflow.", ["workflow"], registry=r
        )
        self.runs_ended = Counter(
            "orchestrator_runs_ended",
            "Runs that ended, by workflow and final state.",
            ["workflow", "state"],
            registry=r,
        )
        self.task_attempts = Counter(
            "orchestrator_task_attempts_ended",
            "Task attempts ended in this process's worker, by outcome.",
            ["state"],
            registry=r,
        )
        self.task_duration = Histogram(
            "orchestrator_task_duration_seconds",
            "How long task attempts ran in this process's worker.",
            buckets=_DURATIONS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "orchestrator_task_queue_wait_seconds",
            "How long tasks this process's worker claimed waited to start after they "
            "became runnable (queued, or their retry came due).",
            buckets=_DURATIONS,
            registry=r,
        )
        self.intake_events = Counter(
            "orchestrator_intake_events",
            "Events taken in, by source and outcome (recorded, duplicate, dead_lettered).",
            ["source", "outcome"],
            registry=r,
        )
        self.http_responses = Counter(
            "orchestrator_http_responses",
            "HTTP answers, by kind of route (api, hooks, other) and status code.",
            ["route", "code"],
            registry=r,
        )
        self.alert_deliveries = Counter(
            "orchestrator_alert_deliveries",
            "Alert sends by this process's relay, by route type and outcome "
            "(delivered, failed: to be retried, undelivered: given up, rate_limited: deferred).",
            ["route", "outcome"],
            registry=r,
        )
        self.tasks_queued = Gauge(
            "orchestrator_tasks_queued", "Tasks waiting for a worker slot.", registry=r
        )
        self.oldest_queued_s = Gauge(
            "orchestrator_oldest_queued_task_age_seconds",
            "Age of the task waiting longest for a slot (0: none waits).",
            registry=r,
        )
        self.tasks_deferred = Gauge(
            "orchestrator_tasks_deferred", "Tasks waiting without a slot (deferred).", registry=r
        )
        self.db_pool_size = Gauge(
            "orchestrator_db_pool_connections", "Connections in this process's pool.", registry=r
        )
        self.db_pool_waiters = Gauge(
            "orchestrator_db_pool_waiters",
            "Callers waiting for a pool connection right now.",
            registry=r,
        )
        self.kafka_lag = Gauge(
            "orchestrator_kafka_consumer_lag",
            "Messages behind the partition's high watermark, per assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.landing_pending = Gauge(
            "orchestrator_landing_files_pending",
            "Files seen in the landing zone and not taken in yet (not complete, being checked,"
            " or complete and waiting for their commit).",
            registry=r,
        )
        self.db_pool_in_use = Gauge(
            "orchestrator_db_pool_in_use", "Pool connections in use right now.", registry=r
        )
        self.loop_lag_s = Gauge(
            "orchestrator_event_loop_lag_seconds",
            "How late the event loop ran a timer at the last look (a busy loop is late).",
            registry=r,
        )
        # Datasets are many and their URIs are not bounded: no URI labels.
        self.dataset_updates_recorded = Counter(
            "orchestrator_dataset_updates", "Dataset updates recorded.", registry=r
        )
        self.datasets_stale = Gauge(
            "orchestrator_datasets_stale",
            "Datasets whose last update is older than their fresh_within, at the last check.",
            registry=r,
        )
        self.dataset_stale_alerts = Counter(
            "orchestrator_dataset_stale_alerts",
            "Times a dataset was found newly stale (one alert per stale spell).",
            registry=r,
        )
        self.lifecycle_published = Counter(
            "orchestrator_lifecycle_events_published",
            "Lifecycle events this process published to the lifecycle topic.",
            registry=r,
        )
        self.lifecycle_lag_s = Gauge(
            "orchestrator_lifecycle_lag_seconds",
            "Seconds since the time before which every committed change is published "
            "(as of this process's relay; 0 before it has finished a window).",
            registry=r,
        )
        self._gauges_read_at: float | None = None
        self._lock = asyncio.Lock()

    # A batch counts once per label set, not once per item: these run on the
    # intake and commit paths.
    def runs_created(self, workflows: Iterable[str]) -> None:
        for workflow, n in Tally(workflows).items():
            self.runs_started.labels(workflow).inc(n)

    def tasks_claimed(self, waits: Iterable[float | None]) -> None:
        for wait in waits:
            self.queue_wait.observe(max(0.0, wait or 0.0))

    def dataset_updates(self, uris: Iterable[str]) -> None:
        self.dataset_updates_recorded.inc(sum(1 for _ in uris))

    def runs_finished(self, ended: Iterable[tuple[str, str]]) -> None:
        for (workflow, state), n in Tally(ended).items():
            self.runs_ended.labels(workflow, state).inc(n)

    def events_taken_in(self, answered: Iterable[tuple[Event, Accepted]]) -> None:
        outcomes = Tally(
            (
                event.source,
                "duplicate"
                if answer.duplicate
                else "dead_lettered"
                if answer.dead_letters
                else "recorded",
            )
            for event, answer in answered
        )
        for (source, outcome), n in outcomes.items():
            self.intake_events.labels(source, outcome).inc(n)

    async def refresh(self, db: Database) -> None:
        """Read the database-wide gauges, unless read within :data:`GAUGE_CACHE_S`."""
        from orchestrator.store import SQL

        async with self._lock:
            now = monotonic()
            if self._gauges_read_at is not None and now - self._gauges_read_at < GAUGE_CACHE_S:
                return
            async with db.pool.acquire() as conn:
                row = await conn.fetchrow(SQL.metrics_gauges)
            assert row is not None
            self.tasks_queued.set(row["queued"])
            self.oldest_queued_s.set(row["oldest_queued_s"] or 0)
            self.tasks_deferred.set(row["deferred"])
            self._gauges_read_at = now
        self.db_pool_size.set(db.pool.get_size())
        self.db_pool_in_use.set(db.pool.get_size() - db.pool.get_idle_size())
        self.db_pool_waiters.set(pool_waiters(db.pool))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def pool_waiters(pool: object) -> int:
    """Callers blocked in ``pool.acquire()``. asyncpg has no public count:
    its pool hands out connections through an asyncio queue, whose waiting
    getters are the waiters (0 if a future asyncpg changes that)."""
    queue = getattr(pool, "_queue", None)
    getters = getattr(queue, "_getters", ())
    return sum(1 for g in getters if not g.done())


#: This process's metrics.
METRICS = Metrics()


async def watch_loop_lag(metrics: Metrics = METRICS, every_s: float = 0.5) -> None:
    """Measure how late the event loop wakes a timer (a blocked loop is late):
    real time by nature."""
    while True:
        started = monotonic()
        await real_pause(every_s)
        metrics.loop_lag_s.set(max(0.0, monotonic() - started - every_s))


def metrics_handler(db: Database, metrics: Metrics = METRICS) -> Handler:
    async def serve(_request: web.Request) -> web.Response:
        try:
            await metrics.refresh(db)
        except Exception as exc:  # a scrape must still answer what is counted in memory
            log.warning("metrics: database gauges not read (%s)", exc)
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return serve


@web.middleware
async def count_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    kind = "api" if path.startswith("/api/") else "hooks" if path.startswith("/hooks/") else "other"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        METRICS.http_responses.labels(kind, str(exc.status)).inc()
        raise
    METRICS.http_responses.labels(kind, str(response.status)).inc()
    return response


def metrics_app(db: Database, liveness: Liveness, readiness: Readiness) -> web.Application:
    """``/metrics``, ``/healthz`` and ``/readyz`` alone: ``ORCHESTRATOR_METRICS_PORT``
    (a replica without the API role still has them)."""
    from orchestrator.api import liveness_answer, readiness_answer

    async def healthz(_request: web.Request) -> web.Response:
        return liveness_answer(liveness)

    async def readyz(_request: web.Request) -> web.Response:
        return await readiness_answer(readiness)

    app = web.Application(middlewares=[count_responses])
    app.router.add_get("/metrics", metrics_handler(db))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
