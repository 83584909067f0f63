"""Pure decisions of operator actions: which tasks a clear, a mark or a
cancel moves, given a run's task states. No I/O.

Each returns transitions along the operator edges of
:mod:`orchestrator.states` (checked, like the engine's own decisions); what
becomes runnable afterwards is not decided here but by the same planner that
decides every other completion (:func:`orchestrator.plan.reconsider`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from orchestrator.decisions import Dag, Transition
from orchestrator.errors import IllegalTransitionError, OperationRefusedError, UnknownTaskError
from orchestrator.states import FAILED_TASK_STATES, RunState, TaskState, is_legal

T = TaskState

#: Tasks whose attempt is under way or about to be: never cleared or marked by hand.
BUSY_TASK_STATES = frozenset({T.QUEUED, T.RUNNING, T.DEFERRED, T.UP_FOR_RETRY})
#: Outcomes a trigger rule decided without running the task: decided again
#: when what they were decided from changes.
RULE_DECIDED = frozenset({T.UPSTREAM_FAILED, T.SKIPPED})
#: What an operator may mark a task as.
MARKABLE = (T.SUCCESS, T.FAILED, T.SKIPPED)


def _operator_edge(task_id: str, source: TaskState, target: TaskState) -> Transition:
    if not is_legal(source, target, operator=True):
        raise IllegalTransitionError(f"task {task_id!r}", target, f"no edge from {source.value!r}")
    return Transition(task_id, source, target)


def _check_known(dag: Dag, tasks: Iterable[str], run_id: int) -> None:
    for t in tasks:
        if t not in dag.upstream:
            raise UnknownTaskError(t, f"run {run_id}", dag.tasks)


def decided_by(dag: Dag, states: Mapping[str, TaskState], seeds: Iterable[str]) -> list[str]:
    """Tasks downstream of ``seeds`` whose outcome a trigger rule decided from
    theirs (upstream_failed, skipped), through chains of such tasks."""
    found: list[str] = []
    seen = set(seeds)
    todo = list(seen)
    while todo:
        for d in dag.downstream[todo.pop()]:
            if d not in seen and states[d] in RULE_DECIDED:
                seen.add(d)
                found.append(d)
                todo.append(d)
    return found


def _all_downstream(dag: Dag, seeds: Iterable[str]) -> list[str]:
    seen = set(seeds)
    todo = list(seen)
    found: list[str] = []
    while todo:
        for d in dag.downstream[todo.pop()]:
            if d not in seen:
                seen.add(d)
                found.append(d)
                todo.append(d)
    return found


def clear_transitions(
    dag: Dag,
    states: Mapping[str, TaskState],
    run_state: RunState,
    *,
    run_id: int,
    tasks: Sequence[str] | None = None,
    downstream: bool = False,
    failed_only: bool = False,
) -> list[Transition]:
    """Which tasks a clear moves back to ``scheduled``, in topological order.

    Without ``tasks``: every failed, upstream_failed and dead_lettered task,
    and the tasks skipped because of them (in a cancelled run, every skipped
    task: the cancel decided those). With ``tasks``: those, their downstream
    tasks with ``downstream``, and the tasks their old outcome decided.
    ``failed_only`` keeps only failed-like tasks of that choice. Refuses a
    choice that includes a task whose attempt is under way, and a clear that
    would change nothing.
    """
    if run_state == RunState.QUEUED:
        raise OperationRefusedError(
            f"run {run_id} is queued (waiting for max_active_runs): it has no tasks to clear yet",
            run_id=run_id,
        )
    if tasks:
        _check_known(dag, tasks, run_id)
        chosen = list(dict.fromkeys(tasks))
        if downstream:
            chosen += [t for t in _all_downstream(dag, chosen) if t not in chosen]
        busy = [t for t in chosen if states[t] in BUSY_TASK_STATES]
        if busy:
            listed = ", ".join(f"{t!r} is {states[t].value}" for t in busy)
            raise OperationRefusedError(
                f"cannot clear run {run_id}: {listed}; a task is cleared only once it has "
                "ended (cancel the run, or wait for the attempt to end)",
                run_id=run_id,
                task_id=busy[0],
            )
        chosen = [t for t in chosen if states[t] not in (T.SCHEDULED, T.HELD)]
    else:
        chosen = [t for t in dag.tasks if states[t] in FAILED_TASK_STATES]
        if run_state == RunState.CANCELLED:
            chosen += [t for t in dag.tasks if states[t] == T.SKIPPED]
    chosen += [t for t in decided_by(dag, states, chosen) if t not in chosen]
    if failed_only:
        chosen = [t for t in chosen if states[t] in FAILED_TASK_STATES]
    if not chosen:
        what = "of the named tasks " if tasks else ""
        raise OperationRefusedError(
            f"nothing to clear in run {run_id} ({run_state.value}): none {what}is in a state "
            "that clearing changes (failed, upstream_failed, dead_lettered, skipped"
            + ("" if failed_only else ", or success when named")
            + ")",
            run_id=run_id,
        )
    order = sorted(set(chosen), key=dag.rank.__getitem__)
    return [_operator_edge(t, states[t], T.SCHEDULED) for t in order]


def mark_transitions(
    dag: Dag,
    states: Mapping[str, TaskState],
    *,
    run_id: int,
    task_id: str,
    target: TaskState,
) -> list[Transition]:
    """The marked task's move to ``target``, then the tasks downstream that its
    old outcome decided, back to ``scheduled`` to be decided again."""
    _check_known(dag, [task_id], run_id)
    if target not in MARKABLE:
        raise OperationRefusedError(
            f"a task is marked success, failed or skipped, not {target.value!r}", run_id=run_id
        )
    source = states[task_id]
    if source == T.RUNNING:
        raise OperationRefusedError(
            f"cannot mark task {task_id!r} of run {run_id}: an attempt is running; "
            "cancel the run or wait for the attempt to end",
            run_id=run_id,
            task_id=task_id,
        )
    if source == target:
        raise OperationRefusedError(
            f"task {task_id!r} of run {run_id} is {target.value} already",
            run_id=run_id,
            task_id=task_id,
        )
    moves = [_operator_edge(task_id, source, target)]
    again = sorted(decided_by(dag, states, [task_id]), key=dag.rank.__getitem__)
    return moves + [_operator_edge(t, states[t], T.SCHEDULED) for t in again]


def after(states: Mapping[str, TaskState], moves: Iterable[Transition]) -> dict[str, TaskState]:
    """``states`` with ``moves`` applied."""
    out = dict(states)
    for m in moves:
        out[m.task_id] = m.target
    return out
