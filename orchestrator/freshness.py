"""Freshness: a dataset that declares ``fresh_within`` (and optionally the
``cron`` of its expected updates) is stale once its last update is too old
(:func:`orchestrator.lineage.freshness`). ``datasets`` and ``lineage`` show it
at read time; this watch checks every dataset periodically (in the scheduler
role) and alerts once per stale spell: a WARNING log line and the
``orchestrator_dataset_stale_alerts`` counter, with the
``orchestrator_datasets_stale`` gauge holding how many are stale now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from orchestrator.clock import Clock
from orchestrator.lineage import Lineage, dataset_list
from orchestrator.metrics import METRICS
from orchestrator.store import Database

log = logging.getLogger(__name__)

__all__ = ["FreshnessWatch"]


class FreshnessWatch:
    """Finds datasets gone stale. Which are stale is kept in memory: after a
    restart a dataset still stale is reported once more."""

    def __init__(self, db: Database, clock: Clock, *, interval_s: float = 60.0) -> None:
        self.db = db
        self.clock = clock
        self.interval_s = interval_s
        self.lineage = Lineage()
        self.stale: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> list[str]:
        """Check every dataset now; returns those newly stale (alerted)."""
        async with self.db.pool.acquire() as conn:
            found = await dataset_list(conn, self.lineage, self.clock.now())
        stale = {d["uri"]: d for d in found if d["freshness"] == "stale"}
        newly = sorted(set(stale) - self.stale)
        for uri in newly:
            d = stale[uri]
            log.warning(
                "dataset %s is stale: last update %s, expected within %ss",
                uri,
                d["last_update"],
                d["fresh_within_s"],
            )
        if newly:
            METRICS.dataset_stale_alerts.inc(len(newly))
        for uri in sorted(self.stale - set(stale)):
            log.info("dataset %s is fresh again", uri)
        METRICS.datasets_stale.set(len(stale))
        self.stale = set(stale)
        return newly

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dataset-freshness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("dataset freshness check failed; trying again later")
            await self.clock.sleep(self.interval_s)
