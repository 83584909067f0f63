"""The triggerer: ends time waits and timeouts of deferred tasks.

Event-driven waits end in the intake transaction that records their event.
What is left ends here: a wait for a moment (``wake_at``) and every wait's
deadline (``timeout_at``). Both are absolute times stored with the deferral,
so a triggerer started after a crash re-arms from the database and honours
them as if nothing had happened.

Waiting costs memory, not tasks: one heap of ``(due, deferral id)`` tuples,
``due`` being the earlier of the two times, and one loop sleeping on the
injected clock until the earliest. The heap holds only waits due within
``horizon_s`` (and at most ``max_armed`` from one bulk read); later ones are
read as their time comes near. New waits are found three ways:

- NOTIFY ``orchestrator_deferrals``, sent by the transaction that records a
  timed wait, wakes the loop, which reads the deferrals created since it last
  looked (by id, and again the ids whose transaction was still open then);
- the same read every ``poll_s``, in case a notification was lost;
- a full reload every ``refresh_s``, the safety net for everything else.

Waits are ended in batches through :meth:`Engine.resolve`, whose guarded
update ends each wait once: two triggerers may race for the same waits, or a
timeout with the event that satisfies the wait, and exactly one wins each.

Due times are compared with ``clock.now()``: hosts are expected to keep their
clocks in sync with the database server's, which stamped ``timeout_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import asyncpg

from orchestrator.backoff import Backoff, restart_on_failure
from orchestrator.clock import Clock, wait_for_event
from orchestrator.deferral import Resolution
from orchestrator.engine import Engine
from orchestrator.health import Liveness
from orchestrator.notices import DEFERRALS_CHANNEL
from orchestrator.polls import PollRunner
from orchestrator.registry import HandlerRegistry
from orchestrator.sla import SlaTimers
from orchestrator.store import SQL
from orchestrator.store.listener import Subscription

log = logging.getLogger(__name__)

_BEGINNING = datetime.min.replace(tzinfo=UTC)
_MAX_HOLES = 10_000
"""Most ids of still-open transactions remembered; beyond, the reload finds them."""


class Triggerer:
    """Ends due time waits and timeouts; any number may run against one database."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        *,
        name: str | None = None,
        batch: int = 1000,
        refresh_s: float = 60.0,
        poll_s: float = 5.0,
        horizon_s: float = 300.0,
        max_armed: int = 100_000,
        listen: bool = True,
        registry: HandlerRegistry | None = None,
        poll_concurrency: int = 32,
    ) -> None:
        """
        :param name: recorded as ``resolved_by`` and as the transitions' actor.
        :param batch: most waits ended in one transaction (and new deferrals
            read in one query).
        :param refresh_s: how often the heap is rebuilt from the database.
        :param poll_s: how often new deferrals are looked for without a NOTIFY.
        :param horizon_s: only waits due this far ahead are kept in memory.
        :param max_armed: most waits loaded by one bulk read (a backlog after a
            long outage is worked through in due order, this many at a time).
        :param listen: LISTEN for new deferrals (off: polling only).
        :param registry: handlers that ``sensor.poll`` waits may check (without
            one, poll waits only time out).
        :param poll_concurrency: most poll checks running at once.
        """
        for label, value in (
            ("batch", batch),
            ("refresh_s", refresh_s),
            ("poll_s", poll_s),
            ("horizon_s", horizon_s),
            ("max_armed", max_armed),
        ):
            if value <= 0:
                raise ValueError(f"Triggerer {label} must be positive, not {value}")
        self.engine = engine
        self.clock = clock
        self.name = name or f"triggerer:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.batch = batch
        self.refresh = timedelta(seconds=refresh_s)
        self.poll = timedelta(seconds=poll_s)
        self.horizon = timedelta(seconds=horizon_s)
        self.max_armed = max_armed
        self._hole_ttl = self.refresh
        self._heap: list[tuple[datetime, int]] = []
        self._armed_ids: set[int] = set()
        self._last_id = 0
        self._holes: dict[int, datetime] = {}
        """Ids below ``_last_id`` not seen yet (transaction open), with when first missed."""
        self._horizon_end = _BEGINNING
        """The heap holds every waiting deferral due before this (exclusive)."""
        self._extend_at = _BEGINNING
        self._next_reload = _BEGINNING
        self._next_poll = _BEGINNING
        self.liveness: Liveness | None = None
        """Told each time the loop comes round (``/healthz``)."""
        self._dirty = asyncio.Event()
        #: Set when the loop must look again before its planned time: new
        #: waits were noticed, or a poll check armed its next time.
        self._woken = asyncio.Event()
        self._backoff = Backoff(0.05, 5.0)
        self._task: asyncio.Task[None] | None = None
        self._listen = listen
        self._subscription: Subscription | None = None
        self.polls = (
            PollRunner(
                engine,
                registry,
                actor=self.name,
                concurrency=poll_concurrency,
                rearm=self._rearm_checked,
                clock=clock,
            )
            if registry is not None
            else None
        )
        #: SLA and task deadlines ride on this loop and clock too (:mod:`orchestrator.sla`).
        self.slas = SlaTimers(engine, actor=self.name, horizon=self.horizon, batch=batch)
        self.loaded = asyncio.Event()
        """Set once the waits have been read from the database at start."""
        self.fired = 0
        """Waits this triggerer asked the engine to end (a rival may have ended some first)."""

    @property
    def armed(self) -> int:
        """Waits currently held in memory."""
        return len(self._heap)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"triggerer {self.name} is already started")
        if self._listen:
            self._subscription = self.engine.db.listener.subscribe(
                DEFERRALS_CHANNEL, self._on_notify
            )
        self._task = asyncio.create_task(self._run(), name="orchestrator-triggerer")

    async def stop(self) -> None:
        """Stop at once: an interrupted batch rolls back and its waits stay
        waiting in the database for the next triggerer."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
        if self.polls is not None:
            await self.polls.stop()

    async def __aenter__(self) -> Triggerer:
        self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _on_notify(self, _payload: str) -> None:
        self._dirty.set()
        self._woken.set()

    def _rearm_checked(self, due: datetime, deferral_id: int) -> None:
        """A poll check found nothing: arm its next time (or its time limit)
        and let the loop sleep again with it in view."""
        self._arm(due, deferral_id)
        self._woken.set()

    async def _run(self) -> None:
        """Keep the loop alive across database errors: log, back off, start
        over from a full reload (nothing that matters lives only here)."""
        await restart_on_failure(
            self._loop, self._backoff, self.clock.sleep, f"triggerer {self.name}"
        )

    async def _loop(self) -> None:
        if self._last_id == 0:
            async with self.engine.db.pool.acquire() as conn:
                newest: int = await conn.fetchval(SQL.triggerer_last_id)
            # The newest ids may belong to transactions still open: read the
            # last batch of them again like new rows, which notices those.
            self._last_id = max(0, newest - self.batch)
        await self._reload()
        while True:
            if self.liveness is not None:
                self.liveness.beat("triggerer")
            now = self.clock.now()
            if now >= self._next_reload:
                await self._reload()
                now = self.clock.now()
            elif now >= self._extend_at and len(self._heap) < self.max_armed:
                await self._extend(now)
            if self._dirty.is_set() or now >= self._next_poll:
                await self._load_new(now)
            if self._heap and self._heap[0][0] <= now:
                await self._fire(now)
                continue
            sla_due = self.slas.next_due()
            if sla_due is not None and sla_due <= now:
                await self.slas.fire(now)
                continue
            self._backoff.reset()
            wake = min(self._next_reload, self._next_poll)
            if sla_due is not None:
                wake = min(wake, sla_due)
            if len(self._heap) < self.max_armed:
                wake = min(wake, self._extend_at)
            if self._heap:
                wake = min(wake, self._heap[0][0])
            await self._sleep_until(wake)

    async def _sleep_until(self, when: datetime) -> None:
        self._woken.clear()
        if self._dirty.is_set():
            return
        await wait_for_event(self.clock, self._woken, (when - self.clock.now()).total_seconds())

    # -- reading waits -------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.engine.db.pool.acquire() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

    def _arm(self, due: datetime, deferral_id: int) -> None:
        if deferral_id not in self._armed_ids:
            self._armed_ids.add(deferral_id)
            heapq.heappush(self._heap, (due, deferral_id))

    def _set_horizon(self, rows: Sequence[asyncpg.Record], end: datetime, limit: int) -> None:
        if len(rows) < limit:
            self._horizon_end = end
            self._extend_at = end - self.horizon / 2
        else:
            # Cut short by the limit: complete up to the last due time read;
            # read on from there once the heap has room again.
            self._horizon_end = rows[-1]["due"]
            self._extend_at = self._horizon_end

    async def _reload(self) -> None:
        now = self.clock.now()
        end = now + self.horizon
        rows = await self._fetch(SQL.triggerer_due_between, _BEGINNING, end, self.max_armed)
        self._heap = [(r["due"], r["id"]) for r in rows]
        heapq.heapify(self._heap)
        self._armed_ids = {r["id"] for r in rows}
        self._set_horizon(rows, end, self.max_armed)
        await self.slas.reload(now)
        self._next_reload = now + self.refresh
        if not self.loaded.is_set():
            log.info("triggerer %s armed %d waits", self.name, len(rows))
            self.loaded.set()

    async def _extend(self, now: datetime) -> None:
        """Read the waits whose due time has come within the horizon."""
        end = now + self.horizon
        room = self.max_armed - len(self._heap)
        rows = await self._fetch(SQL.triggerer_due_between, self._horizon_end, end, room)
        for r in rows:
            self._arm(r["due"], r["id"])
        self._set_horizon(rows, end, room)

    async def _load_new(self, now: datetime) -> None:
        """Read deferrals created since the last look, and those whose
        transaction was still open then (ids are taken at insert, not commit)."""
        self._dirty.clear()
        self._next_poll = now + self.poll
        expired = now - self._hole_ttl
        self._holes = {i: t for i, t in self._holes.items() if t > expired}
        rows = await self._fetch(SQL.triggerer_new, self._last_id, list(self._holes), self.batch)
        await self.slas.load_new()
        seen: set[int] = set()
        for r in rows:
            seen.add(r["id"])
            self._holes.pop(r["id"], None)
            if r["due"] is not None and r["due"] < self._horizon_end:
                self._arm(r["due"], r["id"])
        top = max(seen, default=0)
        if top > self._last_id:
            missing = (i for i in range(self._last_id + 1, top) if i not in seen)
            stamp = now
            for i in itertools.islice(missing, max(0, _MAX_HOLES - len(self._holes))):
                self._holes[i] = stamp
            self._last_id = top
        if len(rows) == self.batch:
            self._dirty.set()  # there may be more
            self._woken.set()

    # -- ending waits ----------------------------------------------------------------

    async def _fire(self, now: datetime) -> None:
        ids: list[int] = []
        while self._heap and self._heap[0][0] <= now and len(ids) < self.batch:
            _due, deferral_id = heapq.heappop(self._heap)
            self._armed_ids.discard(deferral_id)
            ids.append(deferral_id)
        resolutions = []
        for r in await self._fetch(SQL.triggerer_waits, ids):
            if r["kind"] == "poll" and self.polls is not None and _poll_due(r, now):
                self.polls.submit(r)  # the check decides; it re-arms or ends the wait
                continue
            resolution = _resolution(r, now)
            if resolution is not None:
                resolutions.append(resolution)
                continue
            # Its times changed since it was armed: arm it again as it is now.
            times = [t for t in (r["wake_at"], r["timeout_at"]) if t is not None]
            if times and min(times) < self._horizon_end:
                self._arm(min(times), r["id"])
        if resolutions:
            await self.engine.resolve(resolutions, actor=self.name)
            self.fired += len(resolutions)
            log.debug("triggerer %s ended %d waits", self.name, len(resolutions))


def _poll_due(row: asyncpg.Record, now: datetime) -> bool:
    """A poll's check is due (and comes before its timeout)."""
    wake: datetime | None = row["wake_at"]
    timeout: datetime | None = row["timeout_at"]
    return wake is not None and wake <= now and (timeout is None or wake <= timeout)


def _resolution(row: asyncpg.Record, now: datetime) -> Resolution | None:
    """How a waiting deferral ends at ``now``, or None if it is not due.
    A wake time at or before the timeout wins: the wait was satisfied."""
    wake: datetime | None = row["wake_at"]
    timeout: datetime | None = row["timeout_at"]
    if wake is not None and wake <= now and (timeout is None or wake <= timeout):
        return Resolution(
            row["id"],
            "success",
            {"wake_at": wake.isoformat(), "woke_at": now.isoformat()},
            reason=f"time reached: {wake.isoformat()}",
            run_id=row["run_id"],
        )
    if timeout is not None and timeout <= now:
        waited = _seconds(timeout - row["created_at"])
        text = f"timed out after {waited} waiting for {row['description']}"
        if row["on_timeout"] == "skipped":
            return Resolution(
                row["id"], "skipped", reason=text, timed_out=True, run_id=row["run_id"]
            )
        return Resolution(
            row["id"], "failed", reason=text, error=text, timed_out=True, run_id=row["run_id"]
        )
    return None


def _seconds(span: timedelta) -> str:
    seconds = round(span.total_seconds(), 3)
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds}s"
