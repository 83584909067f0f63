"""The commit plan: everything that follows from finished attempts and ended
waits, decided without I/O.

One batch of outcomes sets off a cascade: successors are queued or skipped
(:func:`orchestrator.decisions.decide`), runs whose tasks are all final end,
queued runs of their workflows start under ``max_active_runs``, waits on the
ended runs (``sensor.run``) end, the tasks of those waits move on, and so on
until nothing changes. The planner walks that cascade to a fixed point as a
sans-IO coroutine: a generator that yields what it needs the store to read or
write (the :class:`Ask` requests below) and is sent back the answer. The
engine answers each request with named SQL inside its transaction; the
property tests answer them from a model in memory.

Writes are guarded in SQL (a row moves only from the state it was read in,
a wait ends once), and their answers say what the guard let through, so each
next decision rests on what really happened. The requests come in the same
order, and no more of them, than a hand-written sequence of queries would
need: the hot path (attempts that end, successors queued) is three
statements.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from orchestrator.decisions import Dag, cleared_roots, decide, run_outcome
from orchestrator.deferral import Resolution, run_key
from orchestrator.plan_facts import (
    ActiveRuns as ActiveRuns,
    EndedRun as EndedRun,
    EndedWait as EndedWait,
    Happened as Happened,
    LockedRun as LockedRun,
    MovedTask as MovedTask,
    Outcome as Outcome,
    QueuedRun as QueuedRun,
    Recorded as Recorded,
    WaitOnRun as WaitOnRun,
)
from orchestrator.states import TERMINAL_TASK_STATES, RunState, TaskState

A = TypeVar("A")


# -- what the planner asks of the store ------------------------------------------------


class Ask(Generic[A]):
    """A read or a guarded write; ``A`` is the type of its answer."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class LockKeys(Ask[None]):
    """Take the correlation keys' locks (intake takes them in the same order)."""

    keys: list[str]


@dataclass(frozen=True, slots=True)
class LockRuns(Ask[Mapping[int, LockedRun]]):
    """Lock the runs' rows (decisions are serialised per run) and read them."""

    run_ids: list[int]


@dataclass(frozen=True, slots=True)
class Dags(Ask[Mapping[str, Dag]]):
    versions: list[str]


@dataclass(frozen=True, slots=True)
class RecordAttempts(Ask[Recorded]):
    """Lock the runs (as :class:`LockRuns`), then record the attempts: one
    round trip for a completion's first two steps."""

    run_ids: list[int]
    outcomes: Sequence[Outcome]
    candidates: list[int]
    """Runs whose task states the answer carries, of those still running."""


@dataclass(frozen=True, slots=True)
class Move:
    run_id: int
    task_id: str
    source: TaskState
    target: TaskState
    reason: str


@dataclass(frozen=True, slots=True)
class ApplyMoves(Ask[int]):
    """Move successors, each guarded by its source state; answers how many were queued."""

    moves: list[Move]


@dataclass(frozen=True, slots=True)
class FinishRuns(Ask[list[EndedRun]]):
    ends: Mapping[int, RunState]


@dataclass(frozen=True, slots=True)
class CountActive(Ask[ActiveRuns | None]):
    """Lock the workflow row and count its running runs; None without a limit."""

    workflow: str


@dataclass(frozen=True, slots=True)
class TakeQueued(Ask[list[QueuedRun]]):
    """The oldest ``limit`` queued runs of ``workflow``, locked."""

    workflow: str
    limit: int


@dataclass(frozen=True, slots=True)
class StartRuns(Ask[frozenset[int]]):
    """Move queued runs to running (guarded); answers those that moved."""

    run_ids: list[int]


@dataclass(frozen=True, slots=True)
class InsertTasks(Ask[None]):
    runs: list[QueuedRun]


@dataclass(frozen=True, slots=True)
class WaitsOn(Ask[list[WaitOnRun]]):
    """Waiting waits keyed on any of ``keys``."""

    keys: list[str]


@dataclass(frozen=True, slots=True)
class RecordWaits(Ask[list[Resolution]]):
    """Write the waits of attempts that deferred; answers how those whose
    event (or awaited run) is already there end."""

    outcomes: list[Outcome]


@dataclass(frozen=True, slots=True)
class RunsOfWaits(Ask[list[int]]):
    wait_ids: list[int]


@dataclass(frozen=True, slots=True)
class EndWaits(Ask[list[EndedWait]]):
    """End waits still waiting (guarded: once each)."""

    resolutions: list[Resolution]


@dataclass(frozen=True, slots=True)
class DeferredMove:
    task_instance_id: int
    attempt: int
    target: TaskState
    output: Any
    """The task's output (a wait that succeeded), or None."""
    error: str | None
    resumed: Any
    """What a resumed handler receives, or None."""
    reason: str


@dataclass(frozen=True, slots=True)
class EndDeferredTasks(Ask[list[MovedTask]]):
    """Move tasks out of ``deferred`` (guarded by state and attempt)."""

    moves: list[DeferredMove]


@dataclass(frozen=True, slots=True)
class TaskStates(Ask[Mapping[int, Mapping[str, TaskState]]]):
    run_ids: list[int]


# -- the plan ---------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    """What a commit did, for the caller and for the notifications it sends."""

    accepted: list[Outcome] = field(default_factory=list)
    rejected: list[Outcome] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    queued: int = 0
    """Task instances made claimable."""
    ended_runs: dict[int, RunState] = field(default_factory=dict)
    started_runs: list[int] = field(default_factory=list)
    ended_waits: list[int] = field(default_factory=list)
    timed_waits: bool = False
    """A wait with a wake time or a deadline was recorded (the triggerer arms it)."""
    happened: list[Happened] = field(default_factory=list)
    """What alert rules may be set on (only the kinds they know are noted)."""
    succeeded: list[tuple[int, str, str]] = field(default_factory=list)
    """(run id, task id, version) of the tasks this commit moved to success:
    those with outlets record their dataset updates in the same commit."""


Planning = Generator[Ask[Any], Any, Plan]
_Steps = Generator[Ask[Any], Any, A]


def ask(request: Ask[A]) -> _Steps[A]:
    answer = yield request
    return cast(A, answer)


# -- pure decisions -----------------------------------------------------------------------

WAIT_TARGETS: Mapping[str, TaskState] = {
    "success": TaskState.SUCCESS,
    "failed": TaskState.FAILED,
    "skipped": TaskState.SKIPPED,
    "resume": TaskState.QUEUED,
}
"""How a wait's outcome moves its deferred task."""


def room_left(active: ActiveRuns) -> int:
    return max(0, active.limit - active.running)


def admit_new(workflows: Sequence[str], room: Mapping[str, int]) -> list[bool]:
    """Which new runs (of ``workflows``, in request order) start now: those of
    a workflow with a limit take its ``room`` first come, first served; the
    rest wait queued. Workflows not in ``room`` have no limit."""
    left = dict(room)
    starts: list[bool] = []
    for name in workflows:
        if name in left:
            starts.append(left[name] > 0)
            left[name] -= int(starts[-1])
        else:
            starts.append(True)
    return starts


def with_resume_rule(wanted: Resolution, resume: str) -> Resolution:
    """A handler that deferred mid-work (``resume="handler"``) is called
    again with what woke it instead of taking the wait's result as its own;
    failures and skips end it either way."""
    if wanted.outcome == "success" and resume == "handler":
        return Resolution(
            wanted.deferral_id, "resume", wanted.payload, wanted.reason, wanted.event_id
        )
    return wanted


def deferred_move(ended: EndedWait, wanted: Resolution) -> DeferredMove:
    chosen = with_resume_rule(wanted, ended.resume)
    return DeferredMove(
        task_instance_id=ended.task_instance_id,
        attempt=ended.attempt,
        target=WAIT_TARGETS[chosen.outcome],
        output=chosen.payload if chosen.outcome == "success" else None,
        error=chosen.error,
        resumed=chosen.payload if chosen.outcome == "resume" else None,
        reason=chosen.reason or f"wait ended: {chosen.outcome}",
    )


def ended_run_keys(run: EndedRun) -> tuple[str, str]:
    """The keys ``sensor.run`` waits on: this run's date, and "the latest run"."""
    return run_key(run.workflow, run.logical_date, run.state), run_key(
        run.workflow, None, run.state
    )


def waits_ended_by(runs: Sequence[EndedRun], waiting: Sequence[WaitOnRun]) -> list[Resolution]:
    if not waiting:
        return []
    ended = {key: r.id for r in runs for key in ended_run_keys(r)}
    return [
        Resolution(w.id, "success", {"run_id": ended[w.key]}, reason=f"run {ended[w.key]} ended")
        for w in waiting
    ]


# -- the cascade ------------------------------------------------------------------------------


def commit(outcomes: Sequence[Outcome]) -> Planning:
    """Record finished attempts and everything that follows from them."""
    plan = Plan()
    # Same lock order as intake (correlation keys, then runs): a sensor
    # deferring while its event arrives cannot deadlock with it.
    keys = sorted(
        {o.deferral.match_key for o in outcomes if o.deferral is not None and o.deferral.match_key}
    )
    if keys:
        yield from ask(LockKeys(keys))
    # Only runs still running can have successors to decide: the answer
    # carries the task states of those of the candidates.
    candidates = sorted({o.run_id for o in outcomes if o.target in TERMINAL_TASK_STATES})
    recorded = yield from ask(
        RecordAttempts(sorted({o.run_id for o in outcomes}), outcomes, candidates)
    )
    runs = recorded.runs
    # By attempt too: a late result of an older attempt may share the batch.
    for o in outcomes:
        (plan.accepted if (o.id, o.attempt) in recorded.accepted else plan.rejected).append(o)
    plan.happened += [
        Happened(
            "task_dead_lettered",
            o.run_id,
            runs[o.run_id].workflow,
            runs[o.run_id].version,
            o.task_id,
            o.attempt,
            o.error,
        )
        for o in plan.accepted
        if o.target == TaskState.DEAD_LETTERED and o.run_id in runs
    ]
    plan.succeeded += [
        (o.run_id, o.task_id, runs[o.run_id].version)
        for o in plan.accepted
        if o.target == TaskState.SUCCESS and o.run_id in runs
    ]
    states = {run_id: dict(s) for run_id, s in recorded.states.items()}
    changed: dict[int, list[str]] = defaultdict(list)
    for o in plan.accepted:
        if o.run_id in states:
            states[o.run_id][o.task_id] = o.target
            if o.target in TERMINAL_TASK_STATES:
                changed[o.run_id].append(o.task_id)
    yield from _settle(plan, runs, states, changed, [])
    deferred = [o for o in plan.accepted if o.deferral is not None]
    if deferred:
        plan.timed_waits = any(
            o.deferral is not None
            and (o.deferral.wake_at is not None or o.deferral.timeout_s is not None)
            for o in deferred
        )
        early = yield from ask(RecordWaits(deferred))
        yield from _settle(plan, {}, {}, {}, early)
    return plan


def end_waits(resolutions: Sequence[Resolution]) -> Planning:
    """End waits (each at most once) and everything that follows."""
    plan = Plan()
    yield from _settle(plan, {}, {}, {}, list(resolutions))
    return plan


def reconsider(
    runs: Mapping[int, LockedRun],
    states: Mapping[int, Mapping[str, TaskState]],
    changed: Mapping[int, Sequence[str]],
) -> Planning:
    """An operator moved the ``changed`` tasks of running ``runs`` (cleared
    back to scheduled, or marked): decide what follows exactly as after a
    completion -- successors queued or skipped, runs ended once every task is
    final, and what their end sets off. Cleared roots are queued first."""
    plan = Plan()
    yield from _redecide(plan, runs, states, changed)
    return plan


def _redecide(
    plan: Plan,
    runs: Mapping[int, LockedRun],
    states: Mapping[int, Mapping[str, TaskState]],
    changed: Mapping[int, Sequence[str]],
) -> _Steps[None]:
    now = {run_id: dict(s) for run_id, s in states.items()}
    dags = yield from ask(Dags(sorted({runs[i].version for i in changed})))
    moves: list[Move] = []
    for run_id, tasks in changed.items():
        for t in cleared_roots(dags[runs[run_id].version], now[run_id], tasks):
            moves.append(Move(run_id, t.task_id, t.source, t.target, "cleared"))
            now[run_id][t.task_id] = t.target
    if moves:
        plan.queued += yield from ask(ApplyMoves(moves))
        plan.moves += moves
    yield from _settle(plan, runs, now, {i: list(t) for i, t in changed.items()}, [])


def runs_ended(done: Sequence[EndedRun]) -> Planning:
    """Runs an operator ended (cancel): what their end sets off."""
    plan = Plan()
    plan.ended_runs.update({r.id: r.state for r in done})
    resolutions = yield from _after_ends(plan, done)
    yield from _settle(plan, {}, {}, {}, resolutions)
    return plan


def _settle(
    plan: Plan,
    runs: Mapping[int, LockedRun],
    states: dict[int, dict[str, TaskState]],
    changed: Mapping[int, list[str]],
    resolutions: list[Resolution],
) -> _Steps[None]:
    """Alternate the two halves of the cascade until neither has work left:
    tasks that ended decide successors and end runs (whose waiters end), and
    waits that end move tasks (which may end more runs)."""
    while changed or resolutions:
        if changed:
            resolutions = yield from _advance(plan, runs, states, changed)
            changed = {}
        if resolutions:
            runs, states, changed = yield from _end_waits(plan, resolutions)
            resolutions = []


def _advance(
    plan: Plan,
    runs: Mapping[int, LockedRun],
    states: dict[int, dict[str, TaskState]],
    changed: Mapping[int, list[str]],
) -> _Steps[list[Resolution]]:
    """Decide successors and run outcomes for runs whose tasks just ended;
    end the runs, start queued runs in the room they leave, and return how
    the waits on the ended runs end."""
    dags = yield from ask(Dags(sorted({runs[run_id].version for run_id in changed})))
    moves: list[Move] = []
    finished: dict[int, RunState] = {}
    for run_id, ended in changed.items():
        dag = dags[runs[run_id].version]
        run_states = states[run_id]
        for t in decide(dag, run_states, ended):
            moves.append(
                Move(
                    run_id,
                    t.task_id,
                    t.source,
                    t.target,
                    f"trigger rule {dag.rules[t.task_id].value}",
                )
            )
            run_states[t.task_id] = t.target
        outcome = run_outcome(dag, run_states)
        if outcome is not None:
            finished[run_id] = outcome
    if moves:
        plan.queued += yield from ask(ApplyMoves(moves))
        plan.moves += moves
    if not finished:
        return []
    done = yield from ask(FinishRuns(finished))
    plan.ended_runs.update(finished)
    plan.happened += [
        Happened(_RUN_ENDS[r.state], r.id, r.workflow, r.version)
        for r in done
        if r.state in _RUN_ENDS
    ]
    return (yield from _after_ends(plan, done))


_RUN_ENDS: Mapping[RunState, str] = {
    RunState.FAILED: "run_failed",
    RunState.SUCCESS: "run_succeeded",
}


def _after_ends(plan: Plan, done: Sequence[EndedRun]) -> _Steps[list[Resolution]]:
    """Runs ended: start queued runs in the room they leave, and say how the
    waits on them end."""
    for name in sorted({r.workflow for r in done}):
        yield from _admit(plan, name)
    # Runs that others wait for (sensor.run): end those waits in this commit.
    keys = sorted({key for r in done for key in ended_run_keys(r)})
    if not keys:
        return []
    waiting = yield from ask(WaitsOn(keys))
    return waits_ended_by(done, waiting)


def _admit(plan: Plan, workflow: str) -> _Steps[None]:
    """Start the oldest queued runs of ``workflow`` that fit under its limit."""
    active = yield from ask(CountActive(workflow))
    if active is None:
        return
    room = room_left(active)
    if room <= 0:
        return
    waiting = yield from ask(TakeQueued(workflow, room))
    if not waiting:
        return
    started = yield from ask(StartRuns([r.id for r in waiting]))
    batch = [r for r in waiting if r.id in started]
    if not batch:
        return
    plan.started_runs += [r.id for r in batch]
    fresh = [r for r in batch if not r.reopened]
    if fresh:
        dags = yield from ask(Dags(sorted({r.version for r in fresh})))
        yield from ask(InsertTasks(fresh))
        plan.queued += sum(len(dags[r.version].roots) for r in fresh)
    reopened = {r.id: LockedRun(r.id, workflow, r.version, RunState.RUNNING) for r in batch}
    for r in fresh:
        del reopened[r.id]
    if reopened:
        # Their cleared tasks wait scheduled: decided now, as at the clear.
        states = yield from ask(TaskStates(sorted(reopened)))
        scheduled = {
            i: [t for t, s in states.get(i, {}).items() if s == TaskState.SCHEDULED]
            for i in reopened
        }
        yield from _redecide(plan, reopened, states, scheduled)


def _end_waits(
    plan: Plan, resolutions: list[Resolution]
) -> _Steps[tuple[Mapping[int, LockedRun], dict[int, dict[str, TaskState]], dict[int, list[str]]]]:
    """End waits still waiting and move their tasks out of ``deferred``;
    returns the runs, task states and ended tasks to decide next."""
    by_id = {r.deferral_id: r for r in resolutions}
    known = {r.run_id for r in resolutions}
    if None in known:
        run_ids = yield from ask(RunsOfWaits(list(by_id)))
    else:
        run_ids = cast(list[int], list(known))  # read with the waits by their callers
    runs = yield from ask(LockRuns(sorted(run_ids)))
    ended = yield from ask(EndWaits(list(by_id.values())))
    if not ended:
        return runs, {}, {}
    plan.ended_waits += [w.id for w in ended]
    moved = yield from ask(EndDeferredTasks([deferred_move(w, by_id[w.id]) for w in ended]))
    plan.happened += [
        Happened(
            "sensor_timed_out",
            w.run_id,
            runs[w.run_id].workflow,
            runs[w.run_id].version,
            w.task_id,
            w.attempt,
            by_id[w.id].error,
            by_id[w.id].reason,
        )
        for w in ended
        if by_id[w.id].timed_out and w.run_id in runs
    ]
    plan.queued += sum(1 for m in moved if m.state == TaskState.QUEUED)
    plan.succeeded += [
        (m.run_id, m.task_id, runs[m.run_id].version)
        for m in moved
        if m.state == TaskState.SUCCESS and m.run_id in runs
    ]
    changed: dict[int, list[str]] = defaultdict(list)
    for m in moved:
        if m.state in TERMINAL_TASK_STATES:
            changed[m.run_id].append(m.task_id)
    live = [i for i in changed if i in runs and runs[i].state == RunState.RUNNING]
    if not live:
        return runs, {}, {}
    loaded = yield from ask(TaskStates(live))
    states = {run_id: dict(loaded.get(run_id, {})) for run_id in live}
    return runs, states, {i: changed[i] for i in live}
