"""Wait for runs to end: woken by NOTIFY, confirmed by reading the database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType

from orchestrator.clock import monotonic
from orchestrator.notices import RUNS_CHANNEL
from orchestrator.states import RUN_STATE_BY_NAME, TERMINAL_RUN_STATES, RunState
from orchestrator.store import SQL, Database
from orchestrator.store.listener import Subscription


async def run_states(db: Database, run_ids: Iterable[int]) -> dict[int, RunState]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.run_states, list(run_ids))
    return {r["id"]: RUN_STATE_BY_NAME[r["state"]] for r in rows}


_FINAL = sorted(s.value for s in TERMINAL_RUN_STATES)


async def ended_run_states(db: Database, run_ids: Iterable[int]) -> dict[int, RunState]:
    """The final state of each of ``run_ids`` that has ended (the rest are left out)."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.ended_run_states, list(run_ids), _FINAL)
    return {r["id"]: RUN_STATE_BY_NAME[r["state"]] for r in rows}


class _Inbox:
    """What notifications said since one waiting call last read the database."""

    def __init__(self) -> None:
        self.named: set[int] = set()
        self.unnamed = False
        """A notification named no runs (too many for its payload): read them all."""
        self.woken = asyncio.Event()

    def take(self) -> set[int] | None:
        """The runs named since the last take (None: read every pending run)."""
        self.woken.clear()
        named, self.named = self.named, set()
        unnamed, self.unnamed = self.unnamed, False
        return None if unnamed else named


class RunWaiter:
    """Waits for any number of runs on the process's one LISTEN connection.

    A run that ends is named in its commit's notification, so a round reads
    only the pending runs that were named: waiting for N runs costs what
    ended, not N per ended run. Every run still pending is read at the start,
    whenever a notification names none, when none comes for ``poll_s``, and
    at least every ``full_read_s``: a payload is a hint, never the truth, and
    a notification can be lost while the listener reconnects."""

    def __init__(self, db: Database, *, poll_s: float = 0.5, full_read_s: float = 2.0) -> None:
        self.db = db
        self.poll_s = poll_s
        self.full_read_s = max(full_read_s, poll_s)
        self._inboxes: list[_Inbox] = []
        self._subscription: Subscription | None = None

    def _on_notify(self, payload: str) -> None:
        named: list[int] = []
        try:
            named = [int(part) for part in payload.split(",")] if payload else []
        except ValueError:
            named = []
        for inbox in self._inboxes:
            if named:
                inbox.named.update(named)
            else:
                inbox.unnamed = True
            inbox.woken.set()

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
        inbox = _Inbox()
        self._inboxes.append(inbox)
        try:
            async with asyncio.timeout(timeout):
                read_all, read_all_at = True, monotonic()
                while pending and (every or not final):
                    # Taken before reading: a notification sent during the
                    # read is kept for the next round instead of being lost.
                    named = inbox.take()
                    if named is None or monotonic() - read_all_at >= self.full_read_s:
                        read_all = True
                    wanted = pending if read_all or named is None else pending & named
                    if read_all:
                        read_all_at = monotonic()
                    read_all = False
                    if wanted:
                        ended = await ended_run_states(self.db, wanted)
                        final.update(ended)
                        pending.difference_update(ended)
                    if pending and (every or not final):
                        try:
                            async with asyncio.timeout(self.poll_s):
                                await inbox.woken.wait()
                        except TimeoutError:
                            read_all = True  # quiet for a while: look at them all
        finally:
            self._inboxes.remove(inbox)
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
