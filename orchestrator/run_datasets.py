"""Reads of dataset updates for runs and datasets: what caused a run, what it
updated, and which runs consumed a dataset's updates (one query each)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator.store import SQL, Database

__all__ = ["consumers_of", "run_datasets", "update_json"]


def update_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "uri": row["uri"],
        "workflow": row["workflow"],
        "run_id": row["run_id"],
        "task_id": row["task_id"],
        "logical_date": row["logical_date"].isoformat() if row["logical_date"] else None,
        "metadata": orjson.loads(row["metadata"]),
        "recorded_at": row["recorded_at"].isoformat(),
    }


async def run_datasets(
    db: Database, run_id: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The updates that started run ``run_id``, and those its tasks made."""
    async with db.pool.acquire() as conn:
        caused = await conn.fetch(SQL.run_dataset_causes, run_id)
        made = await conn.fetch(SQL.run_dataset_updates, run_id)
    return [update_json(r) for r in caused], [update_json(r) for r in made]


async def consumers_of(
    db: Database, uri: str, logical_date: datetime | None = None
) -> list[dict[str, Any]]:
    """Which runs consumed the updates of ``uri`` (of ``logical_date``)."""
    rows = await db.pool.fetch(SQL.consumers_of_update, uri, logical_date)
    return [
        {
            "dataset_event_id": r["dataset_event_id"],
            "logical_date": r["logical_date"].isoformat() if r["logical_date"] else None,
            "run_id": r["run_id"],
            "workflow": r["workflow"],
            "state": r["state"],
        }
        for r in rows
    ]
