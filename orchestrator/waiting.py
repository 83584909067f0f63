"""Wait for runs to end: woken by NOTIFY, confirmed by reading the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from orchestrator.engine import RUNS_CHANNEL
from orchestrator.states import TERMINAL_RUN_STATES, RunState
from orchestrator.store import SQL, Database, Listener


async def run_states(db: Database, run_ids: Iterable[int]) -> dict[int, RunState]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.run_states, list(run_ids))
    return {r["id"]: RunState(r["state"]) for r in rows}


async def wait_for_runs(
    db: Database,
    run_ids: Iterable[int],
    *,
    timeout: float | None = None,
    poll_s: float = 0.5,
) -> dict[int, RunState]:
    """Return the final state of every run once all have ended.

    Raises ``TimeoutError`` if they have not all ended within ``timeout``.
    """
    pending = set(run_ids)
    final: dict[int, RunState] = {}
    woken = asyncio.Event()

    def on_notify(payload: str) -> None:
        if not payload or any(int(p) in pending for p in payload.split(",") if p):
            woken.set()

    listener = Listener(db.url, {RUNS_CHANNEL: on_notify})
    listener.start()
    try:
        async with asyncio.timeout(timeout):
            while pending:
                woken.clear()
                for run_id, state in (await run_states(db, pending)).items():
                    if state in TERMINAL_RUN_STATES:
                        final[run_id] = state
                        pending.discard(run_id)
                if pending:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(poll_s):
                            await woken.wait()
    finally:
        await listener.stop()
    return final
