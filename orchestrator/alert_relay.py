"""The alert relay: delivers the outbox (:mod:`orchestrator.alerts`) to its routes.

Any number of relays may run against one database. Each claims due
deliveries with ``FOR UPDATE SKIP LOCKED`` and a lease, so two never send the
same one at once; a relay that dies mid-delivery leaves a lease that runs out,
and the delivery is sent again -- with the same ``webhook-id``, so a receiver
can drop the duplicate. Nothing is lost and the state machine never waits:
alerts were committed with the transitions that raised them.

A failed send is tried again after a capped exponential backoff with jitter
(:mod:`orchestrator.backoff`); after ``max_attempts`` it is kept as
``undelivered`` (``orchestrator alerts``, ``GET /api/v1/alerts``). A route
with ``max_per_minute`` takes its sends from a per-minute count shared in the
database: what is over waits for the next minute. Alerts that need an
acknowledgement escalate along their routes when none comes in time.

The relay wakes on NOTIFY ``orchestrator_alerts`` (sent by the transactions
that raise alerts), on the next due retry or escalation, and every ``poll_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import orjson
from pydantic import ValidationError

from orchestrator.alert_routes import DeliveryError, Message, RouteContext, installed_routes
from orchestrator.alert_spec import RouteSpec
from orchestrator.alerts import error_parts
from orchestrator.backoff import Backoff, capped_exponential, restart_on_failure
from orchestrator.clock import Clock, wait_for_event
from orchestrator.health import Liveness
from orchestrator.metrics import METRICS
from orchestrator.notices import ALERTS_CHANNEL
from orchestrator.secrets import Secrets
from orchestrator.store import SQL, Database
from orchestrator.store.listener import Subscription

log = logging.getLogger(__name__)

_WINDOW = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class RelaySettings:
    batch: int = 200
    """Most deliveries claimed (and sent concurrently) at once."""
    lease_s: float = 60.0
    """How long a claim holds: longer than any route's timeout."""
    max_attempts: int = 8
    """Sends tried before a delivery is kept as undelivered."""
    retry_initial_s: float = 1.0
    retry_max_s: float = 300.0
    retry_jitter: float = 0.2
    poll_s: float = 1.0
    """Safety-net look without a NOTIFY."""
    log_lines: int = 20
    """Lines of the attempt's log an alert carries."""
    public_url: str = "http://127.0.0.1:8080"
    """Where the links in alerts point (the API and UI of this deployment)."""


def _floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def build_message(row: asyncpg.Record, settings: RelaySettings) -> Message:
    """The alert's context, as every route receives it."""
    run_id = row["run_id"]
    base = settings.public_url.rstrip("/")
    error_type, error_message = error_parts(row["error"])
    lines = [line for chunk in row["log_chunks"] or () for line in chunk.split("\n")]
    event = None
    if row["event_id"] is not None:
        event = {
            "id": row["event_id"],
            "source": row["event_source"],
            "channel": row["event_channel"],
            "key": row["event_key"],
            "received_at": _iso(row["event_received_at"]),
            "payload": orjson.loads(row["event_payload"]) if row["event_payload"] else None,
        }
    task_id = row["task_id"] or None
    payload: dict[str, Any] = {
        "id": row["alert_id"],
        "kind": row["kind"],
        "rule": row["rule"],
        "raised_at": _iso(row["created_at"]),
        "workflow": row["workflow"],
        "version": row["version"],
        "run_id": run_id,
        "run_state": row["run_state"],
        "logical_date": _iso(row["logical_date"]),
        "task_id": task_id,
        "attempt": row["attempt"],
        "error": {"type": error_type, "message": error_message} if row["error"] else None,
        "detail": row["detail"],
        "log_tail": lines[-settings.log_lines :] if lines else [],
        "event": event,
        "links": {
            "ui": f"{base}/#/runs/{run_id}",
            "api": f"{base}/api/v1/runs/{run_id}",
        },
        "requires_ack": row["require_ack"],
    }
    dataset = row["dataset"] or None
    payload["dataset"] = dataset
    payload["stale_after"] = _iso(row["stale_after"])
    if run_id is None:  # about a dataset: its lineage is where to look
        payload["links"] = {
            "ui": f"{base}/#/datasets",
            "api": f"{base}/api/v1/lineage?node={quote(dataset or '', safe='')}",
        }
        where = f"dataset {dataset} ({row['workflow']})"
    else:
        where = f"{row['workflow']} run {run_id}" + (f" task {task_id}" if task_id else "")
    if row["attempt"] is not None and task_id:
        where += f" attempt {row['attempt']}"
    summary = f"[{row['kind']}] {where}"
    if row["error"]:
        summary += f": {row['error'].splitlines()[0][:300]}"
    elif row["detail"]:
        summary += f": {row['detail']}"
    # One id per (alert, route): a resend of the same delivery carries it again.
    return Message(f"alert_{row['alert_id']}_{row['route_index']}", payload, summary)


class AlertRelay:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        secrets: Secrets,
        *,
        settings: RelaySettings | None = None,
        name: str | None = None,
        listen: bool = True,
    ) -> None:
        self.db = db
        self.clock = clock
        self.secrets = secrets
        self.settings = settings or RelaySettings()
        self.name = name or f"relay:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.liveness: Liveness | None = None
        self._listen = listen
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._session: aiohttp.ClientSession | None = None
        self._backoff = Backoff(0.05, 5.0)
        self._pruned_at: datetime | None = None
        self.sent = 0
        """Deliveries this relay handed over."""

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"relay {self.name} is already started")
        if self._listen:
            self._subscription = self.db.listener.subscribe(ALERTS_CHANNEL, self.wake)
        self._task = asyncio.create_task(self._run(), name="orchestrator-alert-relay")

    async def stop(self) -> None:
        """Stop at once: sends in flight are dropped with their lease, which
        runs out; another relay (or this one, restarted) sends them again."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AlertRelay:
        self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def wake(self, _payload: str = "") -> None:
        self._woken.set()

    async def _run(self) -> None:
        await restart_on_failure(
            self._loop, self._backoff, self.clock.sleep, f"alert relay {self.name}"
        )

    async def _loop(self) -> None:
        while True:
            if self.liveness is not None:
                self.liveness.beat("alert relay")
            self._woken.clear()
            if await self.drain():
                continue
            self._backoff.reset()
            async with self.db.pool.acquire() as conn:
                due: datetime | None = await conn.fetchval(SQL.alerts_next_due)
            wait = self.settings.poll_s
            if due is not None:
                wait = min(wait, max(0.0, (due - self.clock.now()).total_seconds()))
            if wait > 0:
                await wait_for_event(self.clock, self._woken, wait)

    # -- one pass -----------------------------------------------------------------------

    async def drain(self) -> int:
        """Escalate what is due, then claim and send one batch of due
        deliveries. Returns how much was done (0: nothing was due)."""
        now = self.clock.now()
        async with self.db.pool.acquire() as conn:
            escalated = await conn.fetch(SQL.escalate_alerts, now, self.settings.batch)
            rows = await conn.fetch(
                SQL.claim_alert_deliveries,
                self.name,
                self.settings.batch,
                now,
                self.settings.lease_s,
                self.settings.log_lines,
            )
            await self._prune_windows(conn, now)
        for r in escalated:
            log.warning("alert %s escalated: not acknowledged in time", r["alert_id"])
        if rows:
            await self._deliver(rows, now)
        return len(escalated) + len(rows)

    async def _prune_windows(self, conn: asyncpg.Connection, now: datetime) -> None:
        if self._pruned_at is None or now - self._pruned_at > timedelta(hours=1):
            self._pruned_at = now
            await conn.execute(SQL.prune_route_windows, _floor_minute(now) - timedelta(hours=1))

    async def _granted(self, rows: Sequence[asyncpg.Record], now: datetime) -> dict[str, int]:
        """How many sends each rate-limited route may make now."""
        wanted = Counter(r["route_key"] for r in rows)
        limits = {
            r["route_key"]: orjson.loads(r["route"]).get("max_per_minute")
            for r in rows
            if r["route"] is not None
        }
        granted: dict[str, int] = {}
        async with self.db.pool.acquire() as conn:
            for key, count in wanted.items():
                limit = limits.get(key)
                if limit:
                    granted[key] = await conn.fetchval(
                        SQL.take_route_slots, key, _floor_minute(now), count, limit
                    )
        return granted

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(10, self.settings.batch)),
                json_serialize=lambda v: orjson.dumps(v).decode(),
            )
        return self._session

    async def _deliver(self, rows: Sequence[asyncpg.Record], now: datetime) -> None:
        granted = await self._granted(rows, now)
        results: list[tuple[int, str, datetime | None, str | None]] = []
        sends = []
        by_route: dict[str, int] = defaultdict(int)
        for row in rows:
            key = row["route_key"]
            if key in granted:
                by_route[key] += 1
                if by_route[key] > granted[key]:
                    results.append((row["id"], "limited", _floor_minute(now) + _WINDOW, None))
                    METRICS.alert_deliveries.labels(self._route_type(row), "rate_limited").inc()
                    continue
            sends.append(row)
        outcomes = await asyncio.gather(*(self._send(row) for row in sends))
        for row, error in zip(sends, outcomes, strict=True):
            results.append(self._result(row, error, now))
        async with self.db.pool.acquire() as conn:
            await conn.execute(
                SQL.finish_alert_deliveries,
                [r[0] for r in results],
                [r[1] for r in results],
                [r[2] for r in results],
                [r[3] for r in results],
                self.name,
                now,
            )

    @staticmethod
    def _route_type(row: asyncpg.Record) -> str:
        return str(orjson.loads(row["route"]).get("type", "?")) if row["route"] else "?"

    def _result(
        self, row: asyncpg.Record, error: DeliveryError | None, now: datetime
    ) -> tuple[int, str, datetime | None, str | None]:
        route = self._route_type(row)
        if error is None:
            self.sent += 1
            METRICS.alert_deliveries.labels(route, "delivered").inc()
            return row["id"], "delivered", None, None
        attempts = row["attempts"]
        if not error.retryable or attempts >= self.settings.max_attempts:
            METRICS.alert_deliveries.labels(route, "undelivered").inc()
            log.error(
                "alert %s to route %s undelivered after %d attempts: %s",
                row["alert_id"],
                row["route_key"],
                attempts,
                error,
            )
            return row["id"], "undelivered", None, str(error)
        METRICS.alert_deliveries.labels(route, "failed").inc()
        s = self.settings
        delay = capped_exponential(
            attempts, initial_s=s.retry_initial_s, max_s=s.retry_max_s, jitter=s.retry_jitter
        )
        log.warning(
            "alert %s to route %s failed (attempt %d), retrying in %.1fs: %s",
            row["alert_id"],
            row["route_key"],
            attempts,
            delay,
            error,
        )
        return row["id"], "retry", now + timedelta(seconds=delay), str(error)

    async def _send(self, row: asyncpg.Record) -> DeliveryError | None:
        """Send one delivery; the error if it failed (never raises)."""
        ctx = RouteContext(self.session(), self.secrets, self.clock)
        try:
            if row["route"] is None:
                raise DeliveryError("the alert has no such route", retryable=False)
            spec = RouteSpec.model_validate_json(row["route"])
            route = installed_routes().get(spec.type)
            if route is None:
                raise DeliveryError(f"no alert route {spec.type!r} is installed", retryable=False)
            try:
                options = route.options_model.model_validate(spec.options)
            except ValidationError as exc:
                raise DeliveryError(
                    f"route options are not valid: {exc.errors()[0]['msg']}", retryable=False
                ) from None
            await route.send(build_message(row, self.settings), options, ctx)
        except DeliveryError as exc:
            return exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a route's own bug: kept, tried again
            log.exception("alert route failed on alert %s", row["alert_id"])
            return DeliveryError(ctx.masked(f"{type(exc).__name__}: {exc}"))
        return None
