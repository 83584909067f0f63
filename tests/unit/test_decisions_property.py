"""Property tests: random DAGs run to completion against an independent oracle.

Each task gets a drawn outcome (success, failed or dead_lettered) that it ends
in if it is ever run. The simulation applies decide() and runs whatever is
queued until nothing changes, then checks the final states against the trigger
rule definitions written out again here, without reusing decide().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import given, settings, strategies as st

from orchestrator.decisions import (
    Dag,
    Transition,
    cleared_roots,
    decide,
    initial_states,
    run_outcome,
)
from orchestrator.errors import OperationRefusedError
from orchestrator.operator_decisions import MARKABLE, clear_transitions, mark_transitions
from orchestrator.spec import TriggerRule
from orchestrator.states import RunState, TaskState, is_legal

S = TaskState
R = TriggerRule
OUTCOMES = (S.SUCCESS, S.FAILED, S.DEAD_LETTERED)
FAILED_ISH = {S.FAILED, S.UPSTREAM_FAILED, S.DEAD_LETTERED}
FINAL = FAILED_ISH | {S.SUCCESS, S.SKIPPED}


@dataclass
class Case:
    dag: Dag
    outcome: dict[str, TaskState]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(min_value=1, max_value=25))
    names = [f"t{i}" for i in range(n)]
    upstream: dict[str, list[str]] = {}
    # Edges only go from lower to higher index (acyclic); the spec order is a
    # random permutation so ranks differ from spec order.
    for i in draw(st.permutations(range(n))):
        ups = draw(st.lists(st.integers(0, i - 1), max_size=min(i, 4), unique=True)) if i else []
        upstream[names[i]] = [names[u] for u in ups]
    rules = {t: draw(st.sampled_from(TriggerRule)) for t in names}
    outcome = {t: draw(st.sampled_from(OUTCOMES)) for t in names}
    return Case(Dag.build(upstream, rules), outcome)


def satisfied(rule: TriggerRule, ups: Sequence[TaskState]) -> bool:
    """Whether final upstream states ``ups`` let a task with ``rule`` run."""
    if rule is R.ALL_SUCCESS:
        return all(s is S.SUCCESS for s in ups)
    if rule is R.ALL_DONE:
        return set(ups) <= FINAL
    if rule is R.ALL_FAILED:
        return set(ups) <= FAILED_ISH
    if rule is R.ONE_SUCCESS:
        return S.SUCCESS in ups
    if rule is R.ONE_FAILED:
        return bool(FAILED_ISH & set(ups))
    assert rule is R.NONE_FAILED
    return set(ups) <= {S.SUCCESS, S.SKIPPED}


def allowed_instead_of_running(rule: TriggerRule, ups: Sequence[TaskState]) -> set[TaskState]:
    """Which of skipped/upstream_failed a task that did not run may end in."""
    failed, skipped = bool(FAILED_ISH & set(ups)), S.SKIPPED in ups
    if rule is R.ALL_SUCCESS:
        # Decided as soon as the first failure or skip is seen: either may win.
        return ({S.UPSTREAM_FAILED} if failed else set()) | ({S.SKIPPED} if skipped else set())
    if rule is R.ALL_DONE:
        return set()
    if rule in (R.ALL_FAILED, R.ONE_FAILED):
        return {S.SKIPPED}
    if rule is R.ONE_SUCCESS:
        return {S.UPSTREAM_FAILED} if failed else {S.SKIPPED}
    return {S.UPSTREAM_FAILED}


class Sim:
    def __init__(self, case: Case) -> None:
        self.dag = case.dag
        self.outcome = case.outcome
        self.states = initial_states(case.dag)
        self.ran: list[str] = []

    def move(self, task: str, target: TaskState) -> None:
        assert is_legal(self.states[task], target), (task, self.states[task], target)
        self.states[task] = target

    def apply(self, transitions: Sequence[Transition]) -> None:
        for t in transitions:
            assert t.source is self.states[t.task_id]
            self.move(t.task_id, t.target)

    def run_queued(self) -> set[str]:
        queued = {t for t, s in self.states.items() if s is S.QUEUED}
        for t in sorted(queued):
            self.move(t, S.RUNNING)
            self.move(t, self.outcome[t])
            self.ran.append(t)
        return queued

    def run(self, changed: set[str] | None = None) -> None:
        dag = self.dag
        if changed is None:
            changed = set(dag.roots)  # what initial_states moved
        for _ in range(2 * len(dag.tasks) + 2):
            before = dict(self.states)
            full = decide(dag, self.states)
            assert self.states == before, "decide mutated its input"
            assert decide(dag, self.states, changed) == full
            self.apply(full)
            assert decide(dag, self.states) == [], "decide did not reach a fixed point"
            changed = {t.task_id for t in full} | self.run_queued()
            if not changed:
                return
        raise AssertionError("simulation did not settle")


@settings(max_examples=300, deadline=None)
@given(cases())
def test_random_workflows_settle_and_obey_trigger_rules(case: Case) -> None:
    sim = Sim(case)
    sim.run()
    dag, final = sim.dag, sim.states

    assert set(final.values()) <= FINAL
    assert len(sim.ran) == len(set(sim.ran))
    outcome = run_outcome(dag, final)
    assert outcome is not None
    assert (outcome is RunState.SUCCESS) == (set(final.values()) <= {S.SUCCESS, S.SKIPPED})

    ran = set(sim.ran)
    assert set(dag.roots) <= ran
    for task in dag.tasks:
        if not dag.upstream[task]:
            continue
        ups = [final[u] for u in dag.upstream[task]]
        rule = dag.rules[task]
        if task in ran:
            assert final[task] is case.outcome[task]
            assert satisfied(rule, ups), (task, rule, ups)
        else:
            assert not satisfied(rule, ups), (task, rule, ups)
            assert final[task] in allowed_instead_of_running(rule, ups), (task, rule, ups)


@settings(max_examples=200, deadline=None)
@given(cases(), st.data())
def test_clear_and_mark_of_an_ended_run_settle_it_again(case: Case, data: st.DataObject) -> None:
    """After random clears and marks (each followed by the ordinary decisions
    and runs, with new outcomes drawn), the run settles again, along legal
    edges only, and every task a trigger rule decided agrees with its
    upstreams as they ended up."""
    sim = Sim(case)
    sim.run()
    dag = sim.dag
    marked: set[str] = set()
    for _ in range(data.draw(st.integers(1, 4))):
        sim.outcome = {t: data.draw(st.sampled_from(OUTCOMES)) for t in dag.tasks}
        run_state = run_outcome(dag, sim.states)
        assert run_state is not None
        try:
            if data.draw(st.booleans()):
                named = data.draw(st.lists(st.sampled_from(dag.tasks), max_size=2, unique=True))
                moves = clear_transitions(
                    dag,
                    sim.states,
                    run_state,
                    run_id=1,
                    tasks=named or None,
                    downstream=bool(named) and data.draw(st.booleans()),
                    failed_only=data.draw(st.booleans()),
                )
                assert {m.target for m in moves} == {S.SCHEDULED}
                marked -= {m.task_id for m in moves}
            else:
                task = data.draw(st.sampled_from(dag.tasks))
                target = data.draw(st.sampled_from(MARKABLE))
                moves = mark_transitions(dag, sim.states, run_id=1, task_id=task, target=target)
                marked = (marked - {m.task_id for m in moves}) | {task}
        except OperationRefusedError:
            continue
        for m in moves:
            assert m.source is sim.states[m.task_id]
            assert is_legal(m.source, m.target, operator=True), m
            sim.states[m.task_id] = m.target
        changed = {m.task_id for m in moves}
        roots = cleared_roots(dag, sim.states, sorted(changed))
        sim.apply(roots)
        sim.run(changed | sim.run_queued())
        final = sim.states
        assert set(final.values()) <= FINAL
        assert run_outcome(dag, final) is not None
        for t in dag.tasks:
            if t in marked or not dag.upstream[t] or final[t] not in (S.SKIPPED, S.UPSTREAM_FAILED):
                continue
            ups = [final[u] for u in dag.upstream[t]]
            assert not satisfied(dag.rules[t], ups), (t, dag.rules[t], ups)
            assert final[t] in allowed_instead_of_running(dag.rules[t], ups), (t, ups)
