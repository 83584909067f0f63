"""Moving finished landing-zone files (``on_done: move``).

A pending move is written in the transaction that records its file's event
(:mod:`sources.files`). Once every run the event started has ended, the file
goes to ``processed/<path>`` (all succeeded) or ``failed/<path>``, if its
content is still what the event was about.

A pass takes a batch of due moves in three steps, each one statement or one
thread call whatever the batch size: the targets are chosen and stored before
any file moves (after a crash in between, the next pass finishes the same
moves instead of choosing again), the files are moved, and their outcomes are
recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from orchestrator.states import TERMINAL_RUN_STATES
from orchestrator.store import Database
from sources.landing_fs import choose_target, move_file
from sources.queries import SQL

__all__ = ["move_finished"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Move:
    event_id: int
    path: str
    sha256: str
    target: str


async def move_finished(db: Database, root: str, limit: int) -> list[str]:
    """Move up to ``limit`` files whose runs have all ended; returns the paths moved."""
    terminal = sorted(s.value for s in TERMINAL_RUN_STATES)
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.landing_moves_due, terminal, limit)
    # One move per path a pass: a later event of the same path chooses its
    # target once the earlier move is done (both would pick the same name).
    due: dict[str, asyncpg.Record] = {}
    for row in rows:
        due.setdefault(row["path"], row)
    if not due:
        return []
    wanted = [
        (r["event_id"], r["path"], r["target"], "processed" if r["succeeded"] else "failed")
        for r in due.values()
    ]
    proposed = await asyncio.to_thread(_choose_targets, root, wanted)
    async with db.pool.acquire() as conn:
        stored = await conn.fetch(SQL.landing_move_targets, [w[0] for w in wanted], proposed)
    target_of = {r["event_id"]: r["target"] for r in stored}
    moves = [
        _Move(r["event_id"], r["path"], r["sha256"], target_of[r["event_id"]])
        for r in due.values()
        if r["event_id"] in target_of  # the rest were finished (or are held) elsewhere
    ]
    outcomes = await asyncio.to_thread(_move_all, root, moves)
    done = [(m, result) for m, result in zip(moves, outcomes, strict=True) if result is not None]
    if done:
        async with db.pool.acquire() as conn:
            await conn.execute(
                SQL.landing_moves_done,
                [m.event_id for m, _ in done],
                [m.target.split("/", 1)[0] if r == "moved" else "skipped" for m, r in done],
            )
    moved = []
    for move, result in done:
        if result == "moved":
            moved.append(move.path)
            log.info(
                "landing zone: moved %s to %s (event %d)", move.path, move.target, move.event_id
            )
        else:
            log.warning(
                "landing zone: left %s in place (event %d): %s", move.path, move.event_id, result
            )
    return moved


def _choose_targets(root: str, wanted: Sequence[tuple[int, str, str | None, str]]) -> list[str]:
    return [
        target or choose_target(root, path, outcome, event_id)
        for event_id, path, target, outcome in wanted
    ]


def _move_all(root: str, moves: Sequence[_Move]) -> list[str | None]:
    """Each move's outcome; None when it failed (it stays pending and the next
    pass tries again), without holding up the others."""
    outcomes: list[str | None] = []
    for move in moves:
        try:
            outcomes.append(move_file(root, move.path, move.sha256, move.target))
        except OSError as exc:
            log.warning(
                "landing zone: moving %s to %s failed (event %d), retrying: %s",
                move.path,
                move.target,
                move.event_id,
                exc,
            )
            outcomes.append(None)
    return outcomes
