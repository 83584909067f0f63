"""NOTIFY: the channels, and what one unit of work tells its listeners.

A transaction collects what it queued, ended or deferred in a
:class:`Notices` and sends it once, as its last statement (PostgreSQL
delivers at commit): at most one small notification per channel, and only
when someone may be idle waiting for it. A NOTIFY takes a global lock at
commit, so one per task would serialise commits.

Notifications only wake: listeners re-read the database and poll on a timer
as the safety net, so a payload is a hint, never the truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from orchestrator.store.queries import SQL

if TYPE_CHECKING:
    from orchestrator.engine_types import HandOver

TASKS_CHANNEL = "orchestrator_tasks"
"""Task instances became claimable. Payload: empty."""
RUNS_CHANNEL = "orchestrator_runs"
"""Runs ended. Payload: their ids, comma-separated; empty means "re-check every run"."""
DEFERRALS_CHANNEL = "orchestrator_deferrals"
"""A wait with a wake time or a deadline was recorded. Payload: empty."""

ALERTS_CHANNEL = "orchestrator_alerts"
"""Alerts were raised (the relays deliver them). Payload: empty."""

CHANNELS = (TASKS_CHANNEL, RUNS_CHANNEL, DEFERRALS_CHANNEL, ALERTS_CHANNEL)

PAYLOAD_MAX = 7900
"""PostgreSQL caps a payload just under 8000 bytes."""


@dataclass(slots=True)
class Notices:
    queued: int = 0
    """Task instances left for idle workers (those the committer claims itself are not)."""
    ended_runs: list[int] = field(default_factory=list)
    timed_waits: bool = False
    alerts: bool = False
    hand_over: HandOver | None = None
    """What the unit claims for the worker of its own process, if it has one."""

    def claimed_here(self, claimed: int, asked: int, limited_waiting: bool) -> None:
        """The committer claimed ``claimed`` of ``asked`` tasks for its own
        worker: only what may be left is announced to the others."""
        if limited_waiting:
            return  # the claim took nothing: the claim loops order limited work
        if claimed < asked:
            self.queued = 0  # it took every claimable task there was
        else:
            self.queued = max(1, self.queued - claimed)  # more may wait, older than these

    def runs_ended(self, run_ids: Iterable[int]) -> None:
        self.ended_runs.extend(run_ids)

    def messages(self) -> list[tuple[str, str]]:
        """(channel, payload) to send, at most one per channel."""
        out: list[tuple[str, str]] = []
        if self.queued > 0:
            out.append((TASKS_CHANNEL, ""))
        if self.ended_runs:
            payload = ",".join(str(i) for i in dict.fromkeys(self.ended_runs))
            out.append((RUNS_CHANNEL, payload if len(payload) <= PAYLOAD_MAX else ""))
        if self.timed_waits:
            out.append((DEFERRALS_CHANNEL, ""))
        if self.alerts:
            out.append((ALERTS_CHANNEL, ""))
        return out

    async def send(self, conn: asyncpg.Connection) -> None:
        """Queue the notifications in ``conn``'s transaction, in one statement."""
        messages = self.messages()
        if messages:
            await conn.execute(
                SQL.notify, [c for c, _ in messages], [payload for _, payload in messages]
            )
