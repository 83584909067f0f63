"""Retention: old history is deleted in batches, never what a live run needs.

Runs are pruned once ended and older than the cutoff (their task instances and
transitions with them); events once older than the cutoff and none of the
runs they started is still queued or running; dead letters and alerts about
a dataset by age. With lifecycle events on, a run, a dataset update's event
or a dataset's alert stays until a relay has published its events. Each batch
is its own short transaction, so pruning never holds locks for long and
several processes may prune at once (``SKIP LOCKED``).

A pruned run with a logical date (a schedule's or a backfill's) leaves a row
in the ``logical_dates_pruned`` ledger, so its date stays processed: neither
a backfill nor the scheduler creates it again. The audit log is never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from orchestrator.clock import Clock
from orchestrator.store import SQL, Database

log = logging.getLogger(__name__)


@dataclass
class Pruned:
    runs: int = 0
    events: int = 0
    dead_letters: int = 0
    dataset_alerts: int = 0
    """Alerts about a dataset (those about a run go with their run)."""

    def __str__(self) -> str:
        return (
            f"{self.runs} runs, {self.events} events, {self.dead_letters} dead letters, "
            f"{self.dataset_alerts} dataset alerts"
        )


async def count_prunable(
    db: Database, cutoff: datetime, *, keep_unpublished: bool = False
) -> Pruned:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(SQL.count_prunable, cutoff, keep_unpublished)
    assert row is not None
    return Pruned(row["runs"], row["events"], row["dead_letters"], row["dataset_alerts"])


async def prune(
    db: Database, cutoff: datetime, *, batch: int = 5000, keep_unpublished: bool = False
) -> Pruned:
    """Delete everything prunable older than ``cutoff``, ``batch`` rows at a time.

    ``keep_unpublished``: lifecycle events are on (``ORCHESTRATOR_LIFECYCLE_TOPIC``),
    so a run, or a dataset update's event, stays until its events are published."""
    done = Pruned()
    # Runs first: their events become prunable once they are gone.
    for query, field, args in (
        (SQL.prune_runs, "runs", (keep_unpublished,)),
        (SQL.prune_events, "events", (keep_unpublished,)),
        (SQL.prune_dead_letters, "dead_letters", ()),
        (SQL.prune_dataset_alerts, "dataset_alerts", (keep_unpublished,)),
    ):
        while True:
            async with db.transaction() as conn:
                deleted = len(await conn.fetch(query, cutoff, batch, *args))
            setattr(done, field, getattr(done, field) + deleted)
            if deleted < batch:
                break
    return done


async def prune_periodically(
    db: Database,
    clock: Clock,
    *,
    retention: timedelta,
    interval_s: float,
    batch: int,
    keep_unpublished: bool = False,
) -> None:
    while True:
        try:
            pruned = await prune(
                db, clock.now() - retention, batch=batch, keep_unpublished=keep_unpublished
            )
            if pruned.runs or pruned.events or pruned.dead_letters:
                log.info("retention pruned %s", pruned)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention pass failed; trying again next interval")
        await clock.sleep(interval_s)


@dataclass(frozen=True, slots=True)
class PrunedDate:
    """A (workflow, logical date) whose run retention deleted."""

    logical_date: datetime
    run_id: int
    state: str
    """How the run had ended."""
    pruned_at: datetime


async def pruned_dates(
    db: Database, workflow: str, logical_dates: Sequence[datetime]
) -> dict[datetime, PrunedDate]:
    """Which of ``logical_dates`` of ``workflow`` were processed by a run that
    retention has since deleted: they count as done, and are never run again."""
    if not logical_dates:
        return {}
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.logical_dates_pruned, workflow, list(logical_dates))
    return {
        r["logical_date"]: PrunedDate(r["logical_date"], r["run_id"], r["state"], r["pruned_at"])
        for r in rows
    }
