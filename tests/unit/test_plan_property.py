"""Property tests of the commit plan against a store modelled in memory.

Random workflows (random DAGs, some with ``max_active_runs``) get random
runs; random batches of attempts end (success, failure, retry, deferral on
an event or on another run), random waits end, sometimes twice, and new runs
arrive. The planner (:mod:`orchestrator.plan`) is driven exactly as the
engine drives it, but each request is answered by the model below, which
applies the same guards as the SQL. After every step the model is checked
against rules written out again here:

- no workflow runs more than its limit; a workflow with room has no queued
  runs, and runs start oldest first;
- a run has ended exactly when all its tasks are final, in the state
  ``run_outcome`` gives;
- a wait ends at most once, its task moving to the state its outcome says
  (``resume="handler"``: queued again with what woke it);
- every task and run moves only along the edges of ``orchestrator.states``;
- the plan reports every run it ended and every task it queued (what the
  notifications are made of).
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from hypothesis import given, settings, strategies as st

from orchestrator import plan as p
from orchestrator.decisions import Dag, cancel_transitions, initial_states, run_outcome
from orchestrator.deferral import Defer, Resolution, run_key
from orchestrator.errors import OperationRefusedError
from orchestrator.operator_decisions import MARKABLE, after, clear_transitions, mark_transitions
from orchestrator.spec import TriggerRule
from orchestrator.states import (
    TERMINAL_RUN_STATES,
    TERMINAL_TASK_STATES,
    RunState,
    TaskState,
    is_legal,
    is_legal_run,
)

S = TaskState
OWNER = "worker-1"


@dataclass
class Run:
    id: int
    workflow: str
    version: str
    state: RunState


@dataclass
class Task:
    id: int
    run_id: int
    task_id: str
    state: TaskState = S.SCHEDULED
    attempt: int = 0
    owner: str | None = None
    output: Any = None
    resumed: Any = None


@dataclass
class Wait:
    id: int
    task: Task
    attempt: int
    key: str | None
    resume: str
    awaits: tuple[str, RunState] | None = None
    """A wait on a run: the workflow and the state its latest run must end in."""
    waiting: bool = True


@dataclass
class Model:
    """The tables, and the guards of the named SQL that answers each request."""

    dags: dict[str, Dag]
    limits: dict[str, int | None]
    runs: dict[int, Run] = field(default_factory=dict)
    tasks: dict[int, Task] = field(default_factory=dict)
    waits: dict[int, Wait] = field(default_factory=dict)
    wait_ends: Counter[int] = field(default_factory=Counter)
    ended_runs: list[int] = field(default_factory=list)
    queued_moves: int = 0
    started_order: dict[str, list[int]] = field(default_factory=dict)
    expected: dict[int, tuple[int, Resolution, str]] = field(default_factory=dict)
    """By task instance: the attempt, resolution and resume rule of its ended wait."""

    # -- rows ---------------------------------------------------------------------

    reopened: set[int] = field(default_factory=set)
    """Runs an operator re-opened: they run beside the workflow's limit."""

    def move(self, task: Task, target: TaskState, *, operator: bool = False) -> None:
        assert is_legal(task.state, target, operator=operator), (task, target)
        task.state = target
        if target == S.QUEUED:
            self.queued_moves += 1

    def move_run(self, run: Run, target: RunState, *, operator: bool = False) -> None:
        assert is_legal_run(run.state, target, operator=operator), (run, target)
        if operator and target == RunState.RUNNING:
            self.reopened.add(run.id)
        elif target == RunState.RUNNING:
            self.started_order.setdefault(run.workflow, []).append(run.id)
        run.state = target
        if target in TERMINAL_RUN_STATES:
            self.ended_runs.append(run.id)

    def run_tasks(self, run_id: int) -> list[Task]:
        return [t for t in self.tasks.values() if t.run_id == run_id]

    def insert_tasks(self, run: Run) -> None:
        for task_id, state in initial_states(self.dags[run.version]).items():
            task = Task(len(self.tasks) + 1, run.id, task_id, state)
            self.tasks[task.id] = task
            self.queued_moves += state == S.QUEUED

    def running(self, workflow: str, *, reopened: bool = True) -> int:
        return sum(
            1
            for r in self.runs.values()
            if r.workflow == workflow
            and r.state == RunState.RUNNING
            and (reopened or r.id not in self.reopened)
        )

    def create_runs(self, workflows: Sequence[str]) -> None:
        """What ``create_runs_in`` does, with the planner's admission rule."""
        room = {
            w: p.room_left(p.ActiveRuns(limit, self.running(w)))
            for w in sorted(set(workflows))
            if (limit := self.limits[w]) is not None
        }
        for workflow, start in zip(workflows, p.admit_new(workflows, room), strict=True):
            run = Run(len(self.runs) + 1, workflow, workflow, RunState.QUEUED)
            self.runs[run.id] = run
            if start:
                self.move_run(run, RunState.RUNNING)
                self.insert_tasks(run)

    # -- answering the planner -------------------------------------------------------

    def drive(self, planning: p.Planning) -> p.Plan:
        answer: Any = None
        while True:
            try:
                request = planning.send(answer)
            except StopIteration as stop:
                done: p.Plan = stop.value
                return done
            answer = self.answer(request)

    def locked(self, run_ids: list[int]) -> dict[int, p.LockedRun]:
        return {
            i: p.LockedRun(i, self.runs[i].workflow, self.runs[i].version, self.runs[i].state)
            for i in run_ids
            if i in self.runs
        }

    def answer(self, request: p.Ask[Any]) -> Any:
        match request:
            case p.LockKeys():
                return None
            case p.LockRuns(run_ids):
                return self.locked(run_ids)
            case p.Dags(versions):
                return {v: self.dags[v] for v in versions}
            case p.RecordAttempts(run_ids, outcomes, candidates):
                runs = self.locked(run_ids)
                # The statement returns task states as of its snapshot: before
                # the batch, of the candidates still running.
                before = self.task_states(
                    [i for i in candidates if i in runs and runs[i].state == RunState.RUNNING]
                )
                accepted = set()
                for o in outcomes:
                    t = self.tasks[o.id]
                    if t.state == S.RUNNING and t.attempt == o.attempt and t.owner == o.owner:
                        self.move(t, o.target)
                        t.owner = None
                        accepted.add((o.id, o.attempt))
                return p.Recorded(runs, frozenset(accepted), before)
            case p.ApplyMoves(moves):
                queued = 0
                for m in moves:
                    t = self.task(m.run_id, m.task_id)
                    if t.state == m.source:
                        self.move(t, m.target)
                        queued += m.target == S.QUEUED
                return queued
            case p.FinishRuns(ends):
                done = []
                for run_id, state in ends.items():
                    run = self.runs[run_id]
                    if run.state == RunState.RUNNING:
                        self.move_run(run, state)
                        done.append(p.EndedRun(run_id, run.workflow, None, state))
                return done
            case p.CountActive(workflow):
                limit = self.limits[workflow]
                return None if limit is None else p.ActiveRuns(limit, self.running(workflow))
            case p.TakeQueued(workflow, limit):
                queued_ids = sorted(
                    r.id
                    for r in self.runs.values()
                    if r.workflow == workflow and r.state == RunState.QUEUED
                )
                return [p.QueuedRun(i, self.runs[i].version) for i in queued_ids[:limit]]
            case p.StartRuns(run_ids):
                started = set()
                for i in run_ids:
                    if self.runs[i].state == RunState.QUEUED:
                        self.move_run(self.runs[i], RunState.RUNNING)
                        started.add(i)
                return frozenset(started)
            case p.InsertTasks(runs):
                for r in runs:
                    self.insert_tasks(self.runs[r.id])
                return None
            case p.WaitsOn(keys):
                return [
                    p.WaitOnRun(w.id, w.key)
                    for w in self.waits.values()
                    if w.waiting and w.key is not None and w.key in keys
                ]
            case p.RecordWaits(outcomes):
                return self.record_waits(outcomes)
            case p.RunsOfWaits(wait_ids):
                return sorted({self.waits[i].task.run_id for i in wait_ids if i in self.waits})
            case p.EndWaits(resolutions):
                ended = []
                for resolution in resolutions:
                    w = self.waits[resolution.deferral_id]
                    if w.waiting:
                        w.waiting = False
                        self.wait_ends[w.id] += 1
                        self.expect_wait_end(w, resolution)
                        ended.append(
                            p.EndedWait(
                                w.id, w.task.id, w.task.run_id, w.task.task_id, w.attempt, w.resume
                            )
                        )
                return ended
            case p.EndDeferredTasks(moves):
                moved = []
                for deferred in moves:
                    t = self.tasks[deferred.task_instance_id]
                    if t.state == S.DEFERRED and t.attempt == deferred.attempt:
                        self.move(t, deferred.target)
                        t.output, t.resumed = deferred.output, deferred.resumed
                        moved.append(p.MovedTask(t.run_id, t.task_id, t.state))
                return moved
            case p.TaskStates(run_ids):
                return self.task_states(run_ids)
        raise AssertionError(f"unexpected request {request!r}")

    def task(self, run_id: int, task_id: str) -> Task:
        (found,) = [t for t in self.run_tasks(run_id) if t.task_id == task_id]
        return found

    def task_states(self, run_ids: Sequence[int]) -> dict[int, dict[str, TaskState]]:
        states: dict[int, dict[str, TaskState]] = {}
        for t in self.tasks.values():
            if t.run_id in run_ids:
                states.setdefault(t.run_id, {})[t.task_id] = t.state
        return states

    def record_waits(self, outcomes: Sequence[p.Outcome]) -> list[Resolution]:
        early = []
        for o in outcomes:
            assert o.deferral is not None
            wait = Wait(
                len(self.waits) + 1,
                self.tasks[o.id],
                o.attempt,
                o.deferral.match_key,
                o.deferral.resume,
            )
            self.waits[wait.id] = wait
            if o.deferral.kind == "run":
                wait.awaits = (o.deferral.config["workflow"], o.deferral.config["state"])
                # Has the awaited workflow's latest run (not this one) ended so?
                latest = self.latest_run(wait)
                if latest is not None and latest.state == wait.awaits[1]:
                    early.append(Resolution(wait.id, "success", {"run_id": latest.id}))
        return early

    def latest_run(self, wait: Wait) -> Run | None:
        assert wait.awaits is not None
        return max(
            (
                r
                for r in self.runs.values()
                if r.workflow == wait.awaits[0] and r.id != wait.task.run_id
            ),
            key=lambda r: r.id,
            default=None,
        )

    def expect_wait_end(self, wait: Wait, resolution: Resolution) -> None:
        """The oracle for how a wait's end moves its task, checked when it moves."""
        self.expected[wait.task.id] = (wait.attempt, resolution, wait.resume)


def check(model: Model, plan: p.Plan, ended_before: int, queued_before: int) -> None:
    for workflow, limit in model.limits.items():
        runs = sorted(
            (r for r in model.runs.values() if r.workflow == workflow), key=lambda r: r.id
        )
        queued = [r.id for r in runs if r.state == RunState.QUEUED]
        if limit is not None:
            assert model.running(workflow, reopened=False) <= limit
            if model.running(workflow) < limit:
                assert not queued, f"{workflow} has room but runs {queued} wait"
        started = model.started_order.get(workflow, [])
        assert started == sorted(started), f"{workflow} started out of order: {started}"
        if queued:
            assert all(i > s for s in started for i in queued), (started, queued)
    for run in model.runs.values():
        tasks = model.run_tasks(run.id)
        if run.state == RunState.QUEUED:
            assert not tasks
            continue
        states = {t.task_id: t.state for t in tasks}
        final = all(s in TERMINAL_TASK_STATES for s in states.values())
        assert final == (run.state in TERMINAL_RUN_STATES), (run, states)
        if final and run.state != RunState.CANCELLED:  # cancelled: ended by an operator
            assert run.state == run_outcome(model.dags[run.version], states)
    assert all(n == 1 for n in model.wait_ends.values())
    for wait in model.waits.values():
        if wait.waiting and wait.awaits is not None:
            latest = model.latest_run(wait)
            assert latest is None or latest.state != wait.awaits[1], (wait, latest)
    for task_id, (attempt, resolution, resume) in model.expected.items():
        task = model.tasks[task_id]
        if task.attempt != attempt or task.state == S.RUNNING:
            continue  # resumed and claimed again since
        if resolution.outcome == "failed":
            assert task.state == S.FAILED
        elif resolution.outcome == "skipped":
            assert task.state == S.SKIPPED
        elif resume == "handler":
            assert task.state in (S.QUEUED, S.RUNNING)
            assert task.resumed == resolution.payload
        else:
            assert task.state == S.SUCCESS
            assert task.output == resolution.payload
    assert sorted(plan.ended_runs) == sorted(model.ended_runs[ended_before:])
    assert plan.queued == model.queued_moves - queued_before


@st.composite
def dags(draw: st.DrawFn) -> Dag:
    n = draw(st.integers(min_value=1, max_value=5))
    names = [f"t{i}" for i in range(n)]
    upstream = {
        names[i]: [names[u] for u in draw(st.lists(st.integers(0, i - 1), max_size=2, unique=True))]
        if i
        else []
        for i in range(n)
    }
    rules = {t: draw(st.sampled_from(TriggerRule)) for t in names}
    return Dag.build(upstream, rules)


RESUMES: tuple[Literal["success", "handler"], ...] = ("success", "handler")
TARGETS = (S.SUCCESS, S.SUCCESS, S.FAILED, S.DEAD_LETTERED, S.UP_FOR_RETRY, S.DEFERRED)


T = TypeVar("T")


class Draw(Protocol):
    """What draws a value: ``data.draw`` of a test as well as a composite's ``draw``."""

    def __call__(self, strategy: st.SearchStrategy[T], /) -> T: ...


def outcome_for(draw: Draw, model: Model, task: Task) -> p.Outcome:
    target = draw(st.sampled_from(TARGETS))
    deferral = None
    if target == S.DEFERRED:
        resume = draw(st.sampled_from(RESUMES))
        timeout = draw(st.sampled_from([None, 30.0]))
        if draw(st.booleans()):
            workflow = draw(st.sampled_from(sorted(model.limits)))
            state = draw(st.sampled_from([RunState.SUCCESS, RunState.FAILED]))
            deferral = Defer(
                "run",
                f"run of {workflow}",
                match_key=run_key(workflow, None, state),
                config={"workflow": workflow, "state": state},
                resume=resume,
                timeout_s=timeout,
            )
        else:
            deferral = Defer(
                "callback",
                "a callback",
                match_key=f"callback:{task.id}",
                resume=resume,
                timeout_s=timeout,
            )
    # Now and then a late result of an older attempt, which the guard rejects.
    attempt = task.attempt - draw(st.sampled_from([0, 0, 0, 1]))
    return p.Outcome(
        id=task.id,
        run_id=task.run_id,
        task_id=task.task_id,
        attempt=attempt,
        owner=OWNER,
        target=target,
        output='{"ok": true}' if target == S.SUCCESS else None,
        delay_s=1.0 if target == S.UP_FOR_RETRY else None,
        deferral=deferral,
    )


def operate(draw: Draw, model: Model, action: str) -> p.Plan | None:
    """An operator action, as orchestrator/operations.py carries it out: the
    pure choice of moves, the guarded writes, then the planner."""
    live = sorted(i for i, r in model.runs.items() if r.state != RunState.QUEUED)
    if not live:
        return None
    run = model.runs[draw(st.sampled_from(live))]
    dag = model.dags[run.version]
    tasks = {t.task_id: t for t in model.run_tasks(run.id)}
    states = {k: t.state for k, t in tasks.items()}
    if action == "cancel":
        if run.state in TERMINAL_RUN_STATES:
            return None
        for t in cancel_transitions(states):
            model.move(tasks[t.task_id], S.SKIPPED)
            tasks[t.task_id].owner = None
            model.expected.pop(tasks[t.task_id].id, None)
        for w in model.waits.values():
            if w.waiting and w.task.run_id == run.id:
                w.waiting = False
        model.move_run(run, RunState.CANCELLED)
        return model.drive(p.runs_ended([p.EndedRun(run.id, run.workflow, None, run.state)]))
    try:
        if action == "clear":
            named = draw(st.lists(st.sampled_from(dag.tasks), max_size=2, unique=True))
            moves = clear_transitions(
                dag,
                states,
                run.state,
                run_id=run.id,
                tasks=named or None,
                downstream=bool(named) and draw(st.booleans()),
                failed_only=draw(st.booleans()),
            )
        else:
            target = draw(st.sampled_from(MARKABLE))
            task_id = draw(st.sampled_from(dag.tasks))
            moves = mark_transitions(dag, states, run_id=run.id, task_id=task_id, target=target)
    except OperationRefusedError:
        return None  # refused before anything was written
    if run.state in TERMINAL_RUN_STATES:
        model.move_run(run, RunState.RUNNING, operator=True)
    for m in moves:
        task = tasks[m.task_id]
        if task.state == S.DEFERRED:
            for w in model.waits.values():
                if w.waiting and w.task is task:
                    w.waiting = False
        model.move(task, m.target, operator=True)
        task.owner = None
        model.expected.pop(task.id, None)
    locked = p.LockedRun(run.id, run.workflow, run.version, run.state)
    return model.drive(
        p.reconsider(
            {run.id: locked}, {run.id: after(states, moves)}, {run.id: [m.task_id for m in moves]}
        )
    )


def step(draw: Draw, model: Model) -> None:
    action = draw(
        st.sampled_from(["work", "work", "work", "waits", "create", "clear", "mark", "cancel"])
    )
    ended_before, queued_before = len(model.ended_runs), model.queued_moves
    if action in ("clear", "mark", "cancel"):
        done = operate(draw, model, action)
        if done is not None:
            check(model, done, ended_before, queued_before)
        return
    if action == "create":
        model.create_runs(draw(st.lists(st.sampled_from(sorted(model.limits)), max_size=3)))
        return
    if action == "waits":
        ids = sorted(model.waits)
        if not ids:
            return
        chosen = draw(st.lists(st.sampled_from(ids), max_size=4, unique=True))
        # Intake and the triggerer read each wait's run with it; others do not.
        with_runs = draw(st.booleans())
        resolutions = [
            Resolution(
                i,
                draw(st.sampled_from(["success", "failed", "skipped"])),
                {"woke": i},
                error="no" if draw(st.booleans()) else None,
                run_id=model.waits[i].task.run_id if with_runs else None,
            )
            for i in chosen
        ]
        done = model.drive(p.end_waits(resolutions))
        check(model, done, ended_before, queued_before)
        return
    for t in model.tasks.values():
        if t.state in (S.QUEUED, S.UP_FOR_RETRY) and draw(st.booleans()):
            model.move(t, S.RUNNING)
            t.attempt += 1
            t.owner = OWNER
    running = sorted(i for i, t in model.tasks.items() if t.state == S.RUNNING)
    if not running:
        return
    chosen = draw(st.lists(st.sampled_from(running), min_size=1, max_size=6, unique=True))
    outcomes = [outcome_for(draw, model, model.tasks[i]) for i in chosen]
    done = model.drive(p.commit(outcomes))
    assert {(o.id, o.attempt) for o in done.accepted} | {
        (o.id, o.attempt) for o in done.rejected
    } == {(o.id, o.attempt) for o in outcomes}
    assert done.timed_waits == any(
        o.deferral is not None and o.deferral.timeout_s is not None for o in done.accepted
    )
    check(model, done, ended_before, queued_before)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_workloads_keep_every_rule(data: st.DataObject) -> None:
    names = [f"w{i}" for i in range(data.draw(st.integers(1, 3)))]
    model = Model(
        dags={w: data.draw(dags()) for w in names},
        limits={w: data.draw(st.sampled_from([None, 1, 2])) for w in names},
    )
    model.create_runs(data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=6)))
    for _ in range(data.draw(st.integers(1, 30))):
        step(data.draw, model)


def test_admission_takes_the_room_first_come_first_served() -> None:
    assert p.admit_new(["a", "b", "a", "a", "b"], {"a": 2}) == [True, True, True, False, True]
    assert p.admit_new(["a", "a"], {"a": 0}) == [False, False]
    assert p.room_left(p.ActiveRuns(limit=2, running=5)) == 0


def test_a_handler_that_deferred_mid_work_is_resumed_with_what_woke_it() -> None:
    woke = Resolution(7, "success", {"event": 1}, reason="event arrived")
    wait = p.EndedWait(7, 70, 1, "t", 2, resume="handler")
    move = p.deferred_move(wait, woke)
    assert (move.target, move.resumed, move.output) == (S.QUEUED, {"event": 1}, None)
    plain = p.deferred_move(p.EndedWait(7, 70, 1, "t", 2, resume="success"), woke)
    assert (plain.target, plain.resumed, plain.output) == (S.SUCCESS, None, {"event": 1})
    failed = p.deferred_move(wait, Resolution(7, "failed", error="boom"))
    assert (failed.target, failed.error, failed.resumed) == (S.FAILED, "boom", None)


def _imports(module: str) -> set[str]:
    path = Path(__file__).resolve().parents[2] / "orchestrator" / f"{module}.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_planner_does_no_io_and_waits_do_not_import_the_engine() -> None:
    planner = _imports("plan")
    assert not {m for m in planner if m.startswith(("asyncpg", "orchestrator.store"))}
    assert "orchestrator.engine" not in planner
    assert "orchestrator.engine" not in _imports("waits")
