"""Operator actions on runs and tasks: clear, cancel, mark, and task holds.

Each action is one transaction: the run's row is locked (as every completion
of its tasks locks it), the pure decisions of
:mod:`orchestrator.operator_decisions` choose the moves, guarded SQL applies
them along the operator edges of :mod:`orchestrator.states` with the actor
and reason in ``transitions``, what follows is decided by the engine's own
planner (:func:`orchestrator.plan.reconsider`), and the action is written to
the audit log. A refused action raises before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from orchestrator import audit
from orchestrator import plan as p
from orchestrator.decisions import Dag, Transition, cancel_transitions
from orchestrator.engine import Engine
from orchestrator.errors import (
    OperationRefusedError,
    OrchestratorError,
    UnknownRunError,
    UnknownTaskError,
    UnknownWorkflowError,
)
from orchestrator.operator_decisions import MARKABLE, after, clear_transitions, mark_transitions
from orchestrator.states import (
    TERMINAL_RUN_STATES,
    RunState,
    TaskState,
    legal_run_sources,
)
from orchestrator.store import SQL

__all__ = [
    "CancelResult",
    "ClearResult",
    "HoldResult",
    "MarkResult",
    "cancel_run",
    "clear_run",
    "mark_task",
    "pause_task",
    "unpause_task",
]

#: The task states a cancel ends (every unfinished one): the engine's
#: cancel edges, as :func:`orchestrator.decisions.cancel_transitions` takes them.
_CANCELLABLE = sorted(t.source.value for t in cancel_transitions({s.value: s for s in TaskState}))


@dataclass(frozen=True, slots=True)
class ClearResult:
    run_id: int
    cleared: list[str]
    """The task ids moved back to ``scheduled``, in topological order."""
    reopened: bool
    """The run had ended and is running again."""
    run_state: RunState


@dataclass(frozen=True, slots=True)
class CancelResult:
    run_id: int
    skipped: list[str]
    """Unfinished tasks that ended ``skipped`` (running ones included)."""
    waits_ended: int


@dataclass(frozen=True, slots=True)
class MarkResult:
    run_id: int
    task_id: str
    state: TaskState
    redecided: list[str]
    """Downstream tasks moved back to ``scheduled`` to be decided again."""
    run_state: RunState


@dataclass(frozen=True, slots=True)
class HoldResult:
    workflow: str
    task: str | None
    """None: every task of the workflow."""
    moved: int
    """Instances held (pause) or released to ``queued`` (unpause) right now."""


def _why(verb: str, actor: str, reason: str) -> str:
    return f"{verb} by {actor}" + (f": {reason}" if reason else "")


async def _lock_run(conn: asyncpg.Connection, run_id: int) -> p.LockedRun:
    row = await conn.fetchrow(SQL.lock_run_for_operation, run_id)
    if row is None:
        raise UnknownRunError(run_id, "`orchestrator runs` lists the runs there are")
    return p.LockedRun(row["id"], row["workflow"], row["version"], RunState(row["state"]))


async def _task_states(conn: asyncpg.Connection, run_id: int) -> dict[str, TaskState]:
    return {
        r["task_id"]: TaskState(r["state"]) for r in await conn.fetch(SQL.run_task_states, [run_id])
    }


async def _apply(
    conn: asyncpg.Connection,
    run_id: int,
    moves: Sequence[Transition],
    actor: str,
    reason: str,
    output: str | None = None,
) -> None:
    """Apply operator moves, each guarded by its source state; all or nothing."""
    moved = await conn.fetch(
        SQL.operator_moves,
        run_id,
        [m.task_id for m in moves],
        [m.source.value for m in moves],
        [m.target.value for m in moves],
        [output if m.target == TaskState.SUCCESS else None for m in moves],
        actor,
        reason,
    )
    if len(moved) != len(moves):
        # Under the run's lock only a claim can move a task meanwhile.
        raise OperationRefusedError(
            f"tasks of run {run_id} changed state while the action was applied; try again",
            run_id=run_id,
        )


async def _reopen(
    conn: asyncpg.Connection, run: p.LockedRun, actor: str, reason: str
) -> p.LockedRun:
    """A finished run runs again (operator edge); a running one is left as is."""
    if run.state not in TERMINAL_RUN_STATES:
        return run
    if (
        await conn.fetchval(
            SQL.reopen_run,
            run.id,
            legal_run_sources(RunState.RUNNING, operator=True),
            actor,
            reason,
        )
        is None
    ):
        raise OperationRefusedError(f"run {run.id} could not be re-opened", run_id=run.id)
    return p.LockedRun(run.id, run.workflow, run.version, RunState.RUNNING)


async def _dag(engine: Engine, conn: asyncpg.Connection, version: str) -> Dag:
    return (await engine.compiled_workflow(version, conn)).dag


async def _run_state(conn: asyncpg.Connection, run_id: int) -> RunState:
    rows = await conn.fetch(SQL.run_states, [run_id])
    return RunState(rows[0]["state"])


# -- clear ------------------------------------------------------------------------------


async def clear_run(
    engine: Engine,
    run_id: int,
    *,
    tasks: Sequence[str] | None = None,
    downstream: bool = False,
    failed_only: bool = False,
    actor: str,
    reason: str = "",
) -> ClearResult:
    """Move tasks of ``run_id`` back to ``scheduled`` in the same run (same
    version, logical date and params) and re-open the run if it had ended;
    the planner then queues what may run. See
    :func:`orchestrator.operator_decisions.clear_transitions` for which tasks.
    Attempt numbers keep counting; earlier attempts stay in ``transitions``.
    """
    why = _why("cleared", actor, reason)
    async with engine.unit() as (conn, notices):
        run = await _lock_run(conn, run_id)
        dag = await _dag(engine, conn, run.version)
        states = await _task_states(conn, run_id)
        moves = clear_transitions(
            dag,
            states,
            run.state,
            run_id=run_id,
            tasks=tasks,
            downstream=downstream,
            failed_only=failed_only,
        )
        reopened = run.state in TERMINAL_RUN_STATES
        run = await _reopen(conn, run, actor, why)
        await _apply(conn, run_id, moves, actor, why)
        cleared = [m.task_id for m in moves]
        await engine.carry_out(
            conn, p.reconsider(run, after(states, moves), cleared), actor=actor, notices=notices
        )
        await audit.record(
            conn,
            audit.Action(
                actor,
                "clear",
                reason,
                workflow=run.workflow,
                run_id=run_id,
                detail={
                    "tasks": cleared,
                    "named": list(tasks or []),
                    "downstream": downstream,
                    "failed_only": failed_only,
                },
            ),
        )
        state = await _run_state(conn, run_id)
    return ClearResult(run_id, cleared, reopened, state)


# -- cancel ---------------------------------------------------------------------------------


async def cancel_run(engine: Engine, run_id: int, *, actor: str, reason: str = "") -> CancelResult:
    """End a queued or running run as ``cancelled``: every unfinished task ends
    ``skipped`` (reason: cancelled by ACTOR), its waits end, running attempts
    lose their lease (their worker cancels the handler at its next heartbeat,
    and a late result is refused like any stale one)."""
    why = _why("cancelled", actor, reason)
    async with engine.unit() as (conn, notices):
        run = await _lock_run(conn, run_id)
        if run.state in TERMINAL_RUN_STATES:
            raise OperationRefusedError(
                f"run {run_id} has already ended ({run.state.value}); only a queued or running "
                "run can be cancelled",
                run_id=run_id,
            )
        rows = await conn.fetch(SQL.cancel_tasks, run_id, _CANCELLABLE, actor, why)
        waits = await conn.fetch(SQL.end_run_waits, run_id, None, "cancelled", actor)
        ended = await conn.fetch(
            SQL.cancel_run, run_id, legal_run_sources(RunState.CANCELLED), actor, why
        )
        if not ended:
            raise OperationRefusedError(f"run {run_id} could not be cancelled", run_id=run_id)
        done = [
            p.EndedRun(r["id"], r["workflow"], r["logical_date"], RunState.CANCELLED) for r in ended
        ]
        await engine.carry_out(conn, p.runs_ended(done), actor=actor, notices=notices)
        skipped = [r["task_id"] for r in rows]
        await audit.record(
            conn,
            audit.Action(
                actor,
                "cancel",
                reason,
                workflow=run.workflow,
                run_id=run_id,
                detail={
                    "skipped": skipped,
                    "running": [r["task_id"] for r in rows if r["source"] == "running"],
                    "waits_ended": len(waits),
                },
            ),
        )
    return CancelResult(run_id, skipped, len(waits))


# -- mark -------------------------------------------------------------------------------------


async def mark_task(
    engine: Engine,
    run_id: int,
    task_id: str,
    state: TaskState | str,
    *,
    output: Any = None,
    actor: str,
    reason: str = "",
) -> MarkResult:
    """Set a task's outcome by hand (``success`` with ``output``, ``failed``
    or ``skipped``) from any state but ``running``; downstream tasks are
    decided again as if it had ended so, and a finished run re-opens while
    they are."""
    try:
        target = TaskState(state)
    except ValueError:
        raise OperationRefusedError(
            f"a task is marked {', '.join(s.value for s in MARKABLE)}, not {state!r}",
            run_id=run_id,
        ) from None
    if output is not None and target != TaskState.SUCCESS:
        raise OperationRefusedError(
            f"only a task marked success has an output (not one marked {target.value})",
            run_id=run_id,
        )
    try:
        output_json = None if output is None else orjson.dumps(output).decode()
    except TypeError as exc:
        raise OrchestratorError(f"the output is not JSON-serialisable: {exc}") from None
    why = _why("marked " + target.value, actor, reason)
    async with engine.unit() as (conn, notices):
        run = await _lock_run(conn, run_id)
        dag = await _dag(engine, conn, run.version)
        if task_id not in dag.upstream:
            raise UnknownTaskError(task_id, f"run {run_id}", dag.tasks)
        if run.state == RunState.QUEUED:
            raise OperationRefusedError(
                f"run {run_id} is queued (waiting for max_active_runs): its tasks do not exist yet",
                run_id=run_id,
                task_id=task_id,
            )
        states = await _task_states(conn, run_id)
        moves = mark_transitions(dag, states, run_id=run_id, task_id=task_id, target=target)
        run = await _reopen(conn, run, actor, why)
        if states[task_id] == TaskState.DEFERRED:
            await conn.fetch(SQL.end_run_waits, run_id, [task_id], "marked", actor)
        await _apply(conn, run_id, moves, actor, why, output_json)
        await engine.carry_out(
            conn,
            p.reconsider(run, after(states, moves), [m.task_id for m in moves]),
            actor=actor,
            notices=notices,
        )
        redecided = [m.task_id for m in moves[1:]]
        await audit.record(
            conn,
            audit.Action(
                actor,
                "mark",
                reason,
                workflow=run.workflow,
                run_id=run_id,
                task_id=task_id,
                detail={
                    "state": target.value,
                    "from": states[task_id].value,
                    "redecided": redecided,
                    **({"output": output} if output is not None else {}),
                },
            ),
        )
        run_state = await _run_state(conn, run_id)
    return MarkResult(run_id, task_id, target, redecided, run_state)


# -- task holds -------------------------------------------------------------------------------


async def _check_task(
    engine: Engine, conn: asyncpg.Connection, workflow: str, task: str | None
) -> None:
    rows = await conn.fetch(SQL.current_versions, [workflow])
    if not rows:
        known = [r["name"] for r in await conn.fetch(SQL.list_workflows)]
        raise UnknownWorkflowError(workflow, known)
    if task is not None:
        dag = await _dag(engine, conn, rows[0]["current_version"])
        if task not in dag.upstream:
            raise UnknownTaskError(task, f"workflow {workflow!r}", dag.tasks)


async def pause_task(
    engine: Engine, workflow: str, task: str | None, *, actor: str, reason: str = ""
) -> HoldResult:
    """Hold ``task`` of ``workflow`` (None: every task): in every run, existing
    and new, an instance that becomes runnable waits ``held`` — no worker
    slot, no timeout — until :func:`unpause_task`; the rest of the run goes
    on. Instances already queued are held now; those running finish."""
    key = task or "*"
    why = _why("held", actor, reason)
    async with engine.unit() as (conn, _notices):
        await _check_task(engine, conn, workflow, task)
        # Under the live runs' locks: a commit deciding their successors has
        # finished (its queued rows are held below) or will see the hold.
        await conn.fetch(SQL.lock_live_runs, workflow)
        if await conn.fetchval(SQL.add_hold, workflow, key, actor, reason) is None:
            what = f"task {task!r} of workflow {workflow!r}" if task else f"workflow {workflow!r}"
            raise OperationRefusedError(f"{what} is held already")
        moved: int = await conn.fetchval(
            SQL.move_held, workflow, key, TaskState.QUEUED.value, TaskState.HELD.value, actor, why
        )
        await audit.record(
            conn,
            audit.Action(
                actor,
                "pause",
                reason,
                workflow=workflow,
                task_id=task,
                detail={"task": key, "held": moved},
            ),
        )
    return HoldResult(workflow, task, moved)


async def unpause_task(
    engine: Engine, workflow: str, task: str | None, *, actor: str, reason: str = ""
) -> HoldResult:
    """Release a hold: every held instance it covered is queued at once
    (unless another hold, e.g. the whole workflow's, still covers it)."""
    key = task or "*"
    why = _why("released", actor, reason)
    async with engine.unit() as (conn, notices):
        await _check_task(engine, conn, workflow, task)
        await conn.fetch(SQL.lock_live_runs, workflow)
        if await conn.fetchval(SQL.remove_hold, workflow, key) is None:
            what = f"task {task!r} of workflow {workflow!r}" if task else f"workflow {workflow!r}"
            raise OperationRefusedError(f"{what} is not held")
        moved: int = await conn.fetchval(
            SQL.move_held, workflow, key, TaskState.HELD.value, TaskState.QUEUED.value, actor, why
        )
        notices.queued += moved
        await audit.record(
            conn,
            audit.Action(
                actor,
                "unpause",
                reason,
                workflow=workflow,
                task_id=task,
                detail={"task": key, "released": moved},
            ),
        )
    return HoldResult(workflow, task, moved)


async def holds(engine: Engine, workflow: str) -> list[dict[str, Any]]:
    """The holds on ``workflow``'s tasks (task ``*``: all of them)."""
    async with engine.db.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(SQL.holds_of_workflow, workflow)]
