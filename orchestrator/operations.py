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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from orchestrator import audit, plan as p
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
    TASK_STATE_BY_NAME,
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
    "clear_runs",
    "mark_task",
    "pause_task",
    "unpause_task",
]

#: The task states a cancel ends (every unfinished one): the engine's
#: cancel edges, as :func:`orchestrator.decisions.cancel_transitions` takes them.
_CANCELLABLE = sorted(t.source.value for t in cancel_transitions(TASK_STATE_BY_NAME))


@dataclass(frozen=True, slots=True)
class ClearResult:
    run_id: int
    cleared: list[str]
    """The task ids moved back to ``scheduled``, in topological order."""
    reopened: bool
    """The run had ended and runs again (queued while max_active_runs leaves no room)."""
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


async def _lock_runs(conn: asyncpg.Connection, run_ids: Sequence[int]) -> dict[int, p.LockedRun]:
    """Lock the runs' rows, in id order (as completions lock them), and read them."""
    found = {
        r["id"]: p.LockedRun(r["id"], r["workflow"], r["version"], RunState(r["state"]))
        for r in await conn.fetch(SQL.lock_runs, sorted(set(run_ids)))
    }
    for run_id in run_ids:
        if run_id not in found:
            raise UnknownRunError(run_id, "`orchestrator runs` lists the runs there are")
    return found


async def _lock_run(conn: asyncpg.Connection, run_id: int) -> p.LockedRun:
    return (await _lock_runs(conn, [run_id]))[run_id]


async def _task_states(
    conn: asyncpg.Connection, run_ids: Sequence[int]
) -> dict[int, dict[str, TaskState]]:
    states: dict[int, dict[str, TaskState]] = {run_id: {} for run_id in run_ids}
    for r in await conn.fetch(SQL.run_task_states, list(run_ids)):
        states[r["run_id"]][r["task_id"]] = TASK_STATE_BY_NAME[r["state"]]
    return states


async def _apply(
    conn: asyncpg.Connection,
    moves: Mapping[int, Sequence[Transition]],
    actor: str,
    reason: str,
    output: str | None = None,
) -> None:
    """Apply operator moves, each guarded by its source state; all or nothing."""
    flat = [(run_id, m) for run_id, ms in moves.items() for m in ms]
    moved = await conn.fetchval(
        SQL.operator_moves,
        [run_id for run_id, _ in flat],
        [m.task_id for _, m in flat],
        [m.source.value for _, m in flat],
        [m.target.value for _, m in flat],
        [output if m.target == TaskState.SUCCESS else None for _, m in flat],
        actor,
        reason,
    )
    if moved != len(flat):
        # Under the runs' locks only a claim can move a task meanwhile.
        raise OperationRefusedError(
            "tasks changed state while the action was applied; nothing was changed, try again"
        )


async def _reopen(
    conn: asyncpg.Connection, runs: Mapping[int, p.LockedRun], actor: str, reason: str
) -> dict[int, p.LockedRun]:
    """Finished runs run again (operator edges), within their workflow's
    ``max_active_runs``: those beyond it wait ``queued`` and start, their
    tasks decided then, when room opens. Unfinished runs are left as they are."""
    now = dict(runs)
    by_workflow: dict[str, list[int]] = {}
    for run in sorted(runs.values(), key=lambda r: r.id):
        if run.state in TERMINAL_RUN_STATES:
            by_workflow.setdefault(run.workflow, []).append(run.id)
    for workflow, ended in sorted(by_workflow.items()):
        room = await _room(conn, workflow)
        start, wait = (ended, []) if room is None else (ended[:room], ended[room:])
        for ids, target in ((start, RunState.RUNNING), (wait, RunState.QUEUED)):
            if not ids:
                continue
            rows = await conn.fetch(
                SQL.reopen_runs,
                ids,
                legal_run_sources(target, operator=True),
                actor,
                reason,
                target.value,
            )
            if len(rows) != len(ids):
                raise OperationRefusedError(f"runs {ids} could not all be re-opened")
            for i in ids:
                r = runs[i]
                now[i] = p.LockedRun(r.id, r.workflow, r.version, target)
    return now


async def _room(conn: asyncpg.Connection, workflow: str) -> int | None:
    """How many more runs of ``workflow`` may run (None: no limit), under its
    row lock (held to commit), as when runs are created or started."""
    [row] = await conn.fetch(SQL.current_versions, [workflow])
    limit: int | None = row["max_active_runs"]
    if limit is None:
        return None
    await conn.execute(SQL.lock_workflow, workflow)
    running: int = await conn.fetchval(SQL.count_running_runs, workflow)
    return max(0, limit - running)


def _deciding(
    runs: Mapping[int, p.LockedRun], changed: Mapping[int, list[str]]
) -> dict[int, list[str]]:
    """Only running runs decide now; a queued one decides when it starts."""
    return {i: tasks for i, tasks in changed.items() if runs[i].state == RunState.RUNNING}


async def _dag(engine: Engine, conn: asyncpg.Connection, version: str) -> Dag:
    return (await engine.compiled_workflow(version, conn)).dag


async def _run_states(conn: asyncpg.Connection, run_ids: Sequence[int]) -> dict[int, RunState]:
    return {r["id"]: RunState(r["state"]) for r in await conn.fetch(SQL.run_states, list(run_ids))}


async def _record_per_run(conn: asyncpg.Connection, actions: Sequence[audit.Action]) -> None:
    """One audit entry per run of a batch action, in one statement."""
    if len(actions) == 1:
        await audit.record(conn, actions[0])
        return
    first = actions[0]
    await conn.execute(
        SQL.record_audits,
        first.actor,
        first.action,
        [a.workflow for a in actions],
        [a.run_id for a in actions],
        first.reason,
        [orjson.dumps(dict(a.detail)).decode() for a in actions],
    )


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
    [result] = await clear_runs(
        engine,
        [run_id],
        tasks=tasks,
        downstream=downstream,
        failed_only=failed_only,
        actor=actor,
        reason=reason,
    )
    return result


async def clear_runs(
    engine: Engine,
    run_ids: Sequence[int],
    *,
    tasks: Sequence[str] | None = None,
    downstream: bool = False,
    failed_only: bool = False,
    actor: str,
    reason: str = "",
) -> list[ClearResult]:
    """:func:`clear_run` for many runs in one transaction (a backfill that
    reprocesses failed dates, or a bench): all of them, or, if any one is
    refused, none. Results in the order of ``run_ids``."""
    if not run_ids:
        return []
    why = _why("cleared", actor, reason)
    async with engine.unit() as (conn, notices):
        runs = await _lock_runs(conn, run_ids)
        states = await _task_states(conn, list(runs))
        moves: dict[int, list[Transition]] = {}
        for run_id, run in runs.items():
            moves[run_id] = clear_transitions(
                await _dag(engine, conn, run.version),
                states[run_id],
                run.state,
                run_id=run_id,
                tasks=tasks,
                downstream=downstream,
                failed_only=failed_only,
            )
        reopened = {i for i, r in runs.items() if r.state in TERMINAL_RUN_STATES}
        running = await _reopen(conn, runs, actor, why)
        await _apply(conn, moves, actor, why)
        cleared = {i: [m.task_id for m in ms] for i, ms in moves.items()}
        await engine.carry_out(
            conn,
            p.reconsider(
                running, {i: after(states[i], moves[i]) for i in runs}, _deciding(running, cleared)
            ),
            actor=actor,
            notices=notices,
        )
        await _record_per_run(
            conn,
            [
                audit.Action(
                    actor,
                    "clear",
                    reason,
                    workflow=runs[i].workflow,
                    run_id=i,
                    detail={
                        "tasks": cleared[i],
                        "named": list(tasks or []),
                        "downstream": downstream,
                        "failed_only": failed_only,
                    },
                )
                for i in run_ids
            ],
        )
        now = await _run_states(conn, list(runs))
    return [ClearResult(i, cleared[i], i in reopened, now[i]) for i in run_ids]


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
        states = (await _task_states(conn, [run_id]))[run_id]
        if not states:
            raise OperationRefusedError(
                f"run {run_id} is queued (waiting for max_active_runs): its tasks do not exist yet",
                run_id=run_id,
                task_id=task_id,
            )
        moves = mark_transitions(dag, states, run_id=run_id, task_id=task_id, target=target)
        running = await _reopen(conn, {run_id: run}, actor, why)
        if states[task_id] == TaskState.DEFERRED:
            await conn.fetch(SQL.end_run_waits, run_id, [task_id], "marked", actor)
        await _apply(conn, {run_id: moves}, actor, why, output_json)
        await engine.carry_out(
            conn,
            p.reconsider(
                running,
                {run_id: after(states, moves)},
                _deciding(running, {run_id: [m.task_id for m in moves]}),
            ),
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
        run_state = (await _run_states(conn, [run_id]))[run_id]
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
    on. Instances already queued or waiting to retry are held now (a retry
    keeps its delay); those running finish, and held instead of retried if
    they fail; a wait that ends by resuming the handler resumes it held."""
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
            SQL.move_held,
            workflow,
            key,
            [TaskState.QUEUED.value, TaskState.UP_FOR_RETRY.value],
            TaskState.HELD.value,
            actor,
            why,
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
            SQL.move_held, workflow, key, [TaskState.HELD.value], TaskState.QUEUED.value, actor, why
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
