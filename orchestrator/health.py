"""Health of one replica, whatever its roles.

Liveness (``/healthz``): the process's loops come round. Each long-running
loop (the worker's claim loop, the triggerer) calls :meth:`Liveness.beat`
every time it comes round; both come round at least every poll interval, idle
or not. A loop that has not beaten for longer than its allowance is stuck
(wedged in a call that never returns, or dead), and ``/healthz`` answers 503
naming it, so a supervisor restarts the process.

Readiness (``/readyz``): this replica can do its work now. The database
answers and its schema is current, and each event source this process runs
can take events (a Kafka consumer assigned or still connecting, a readable
landing zone). Not ready is not restarted, only kept out of traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from orchestrator.clock import monotonic

if TYPE_CHECKING:
    from orchestrator.sources import Source
    from orchestrator.store import Database


class Liveness:
    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self._beats: dict[str, float] = {}

    def beat(self, loop: str) -> None:
        self._beats[loop] = monotonic()

    def forget(self, loop: str) -> None:
        self._beats.pop(loop, None)

    def loops(self) -> list[str]:
        """The loops being watched."""
        return sorted(self._beats)

    def stuck(self) -> list[str]:
        """The loops that have not come round within ``stale_s``."""
        now = monotonic()
        return sorted(name for name, at in self._beats.items() if now - at > self.stale_s)


@dataclass(frozen=True, slots=True)
class Verdict:
    database_down: bool
    """The database did not answer: the only problem worth naming then."""
    problems: list[str]


class Readiness:
    def __init__(self, db: Database, sources: Sequence[Source] = ()) -> None:
        self.db = db
        self.sources = sources

    async def check(self) -> Verdict:
        from orchestrator.store import UNAVAILABLE
        from orchestrator.store.migrate import pending

        try:
            async with self.db.pool.acquire(timeout=2) as conn:
                missing = await pending(conn)
        except (*UNAVAILABLE, asyncpg.PostgresError):
            return Verdict(True, ["the database does not answer"])
        problems = []
        if missing:
            problems.append(
                f"the database lacks migrations {', '.join(missing)}: run `orchestrator migrate`"
            )
        for source in self.sources:
            reason = await source.not_ready()
            if reason is not None:
                problems.append(f"{source.name}: {reason}")
        return Verdict(False, problems)
