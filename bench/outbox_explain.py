"""What the lifecycle relay's statements cost the database, from
``EXPLAIN (ANALYZE, BUFFERS)`` in a session like the relay's (no timing of
each plan node: that would cost more than the statement): a lease of every
partition, one page of their window (``lifecycle_batch`` events), the
workflows of its runs and the finish. The updates are rolled back."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from sources.lifecycle_relay import SESSION
from sources.queries import SQL


async def _explain(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    plan = orjson.loads(
        await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) " + sql, *args)
    )[0]
    top = plan["Plan"]
    return {
        "rows": top["Actual Rows"],
        "planning_ms": round(plan["Planning Time"], 3),
        "execution_ms": round(plan["Execution Time"], 3),
        "shared_hit": top.get("Shared Hit Blocks", 0),
        "shared_read": top.get("Shared Read Blocks", 0),
    }


async def relay_statements(db_url: str, batch: int) -> dict[str, Any]:
    """The cost of each statement of one pass over what is not yet published."""
    conn = await asyncpg.connect(db_url, server_settings=SESSION)
    try:
        async with conn.transaction():
            owner, lease_s = "bench-explain", 30.0
            out = {"claim": await _explain(conn, SQL.lifecycle_claim, owner, lease_s, False)}
            claims = await conn.fetch(
                "SELECT part, parts, done::text AS done, window_to::text AS window_to "
                "FROM lifecycle_cursors WHERE lease_owner = $1",
                owner,
            )
            parts = [c["part"] for c in claims]
            done, window_to, nparts = claims[0]["done"], claims[0]["window_to"], claims[0]["parts"]
            window = (done, window_to, nparts, parts, 0, 0, batch)
            out["window_page"] = await _explain(conn, SQL.lifecycle_window, *window)
            rows = await conn.fetch(SQL.lifecycle_window, *window)
            runs = list({r["run_id"] for r in rows if r["run_id"] is not None})
            out["run_workflows"] = await _explain(conn, SQL.lifecycle_run_workflows, runs)
            counts = [0] * len(parts)
            out["finish"] = await _explain(conn, SQL.lifecycle_finish, parts, owner, counts, 0.2)
            raise _RolledBack
    except _RolledBack:
        pass
    finally:
        await conn.close()
    return out


class _RolledBack(Exception):
    """Leaves the transaction of the explained updates without committing them."""
