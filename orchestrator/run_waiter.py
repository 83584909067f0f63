"""Wait for runs to end: woken by NOTIFY, confirmed by reading the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from types import TracebackType

from orchestrator.notices import RUNS_CHANNEL
from orchestrator.states import TERMINAL_RUN_STATES, RunState
from orchestrator.store import SQL, Database
from orchestrator.store.listener import Subscription


async def run_states(db: Database, run_ids: Iterable[int]) -> dict[int, RunState]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.run_states, list(run_ids))
    return {r["id"]: RunState(r["state"]) for r in rows}


class RunWaiter:
    """Waits for any number of runs on the process's one LISTEN connection."""

    def __init__(self, db: Database, *, poll_s: float = 0.5) -> None:
        self.db = db
        self.poll_s = poll_s
        self._woken = asyncio.Event()
        self._subscription: Subscription | None = None

    def _on_notify(self, _payload: str) -> None:
        self._woken.set()

    async def start(self) -> None:
        self._subscription = self.db.listener.subscribe(RUNS_CHANNEL, self._on_notify)
        async with asyncio.timeout(10):
            await self._subscription.listening()

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    async def wait(
        self, run_ids: Iterable[int], *, timeout: float | None = None
    ) -> dict[int, RunState]:
        """The final state of every run once all have ended; ``TimeoutError``
        if they have not all ended within ``timeout``."""
        return await self._ended(run_ids, every=True, timeout=timeout)

    async def first_ended(
        self, run_ids: Iterable[int], *, timeout: float | None = None
    ) -> dict[int, RunState]:
        """As soon as at least one of the runs has ended: the final state of
        each that has; ``TimeoutError`` if none has within ``timeout``."""
        return await self._ended(run_ids, every=False, timeout=timeout)

    async def _ended(
        self, run_ids: Iterable[int], *, every: bool, timeout: float | None
    ) -> dict[int, RunState]:
        pending = set(run_ids)
        final: dict[int, RunState] = {}
        async with asyncio.timeout(timeout):
            while pending and (every or not final):
                # Cleared before reading: a NOTIFY sent during the read wakes
                # the next round instead of being lost.
                self._woken.clear()
                for run_id, state in (await run_states(self.db, pending)).items():
                    if state in TERMINAL_RUN_STATES:
                        final[run_id] = state
                        pending.discard(run_id)
                if pending and (every or not final):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_s):
                            await self._woken.wait()
        return final

    async def __aenter__(self) -> RunWaiter:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def wait_for_runs(
    db: Database, run_ids: Iterable[int], *, timeout: float | None = None
) -> dict[int, RunState]:
    async with RunWaiter(db) as waiter:
        return await waiter.wait(run_ids, timeout=timeout)
