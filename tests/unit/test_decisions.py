"""Example-based tests of the pure scheduling decisions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import pytest

from orchestrator import decisions
from orchestrator.decisions import (
    Dag,
    Transition,
    cancel_transitions,
    decide,
    initial_states,
    run_outcome,
)
from orchestrator.errors import IllegalTransitionError, SpecError
from orchestrator.spec import TaskSpec, TriggerRule, WorkflowSpec
from orchestrator.states import TERMINAL_TASK_STATES, RunState, TaskState, is_legal

S = TaskState
R = TriggerRule
NON_TERMINAL = sorted(set(TaskState) - TERMINAL_TASK_STATES)


def targets(transitions: Sequence[Transition]) -> dict[str, TaskState]:
    assert all(t.source == S.SCHEDULED for t in transitions)
    return {t.task_id: t.target for t in transitions}


def chain(*ids: str, rules: Mapping[str, TriggerRule] | None = None) -> Dag:
    return Dag.build({t: ids[i - 1 : i] for i, t in enumerate(ids)}, rules)


# --- trigger rules: a join "j" of upstreams "a" and "b" -----------------------

RULE_CASES: list[tuple[TriggerRule, TaskState, TaskState, TaskState | None]] = [
    (R.ALL_SUCCESS, S.SUCCESS, S.SUCCESS, S.QUEUED),
    (R.ALL_SUCCESS, S.SUCCESS, S.RUNNING, None),
    (R.ALL_SUCCESS, S.UP_FOR_RETRY, S.SUCCESS, None),
    (R.ALL_SUCCESS, S.QUEUED, S.SCHEDULED, None),
    (R.ALL_SUCCESS, S.FAILED, S.RUNNING, S.UPSTREAM_FAILED),
    (R.ALL_SUCCESS, S.SUCCESS, S.DEAD_LETTERED, S.UPSTREAM_FAILED),
    (R.ALL_SUCCESS, S.UPSTREAM_FAILED, S.SUCCESS, S.UPSTREAM_FAILED),
    (R.ALL_SUCCESS, S.SKIPPED, S.RUNNING, S.SKIPPED),
    (R.ALL_SUCCESS, S.SKIPPED, S.FAILED, S.UPSTREAM_FAILED),
    (R.ALL_DONE, S.SUCCESS, S.FAILED, S.QUEUED),
    (R.ALL_DONE, S.SKIPPED, S.UPSTREAM_FAILED, S.QUEUED),
    (R.ALL_DONE, S.DEAD_LETTERED, S.DEAD_LETTERED, S.QUEUED),
    (R.ALL_DONE, S.SUCCESS, S.DEFERRED, None),
    (R.ALL_DONE, S.FAILED, S.UP_FOR_RETRY, None),
    (R.ALL_FAILED, S.FAILED, S.DEAD_LETTERED, S.QUEUED),
    (R.ALL_FAILED, S.UPSTREAM_FAILED, S.FAILED, S.QUEUED),
    (R.ALL_FAILED, S.FAILED, S.RUNNING, None),
    (R.ALL_FAILED, S.SUCCESS, S.RUNNING, S.SKIPPED),
    (R.ALL_FAILED, S.FAILED, S.SKIPPED, S.SKIPPED),
    (R.ONE_SUCCESS, S.SUCCESS, S.RUNNING, S.QUEUED),
    (R.ONE_SUCCESS, S.FAILED, S.SUCCESS, S.QUEUED),
    (R.ONE_SUCCESS, S.FAILED, S.RUNNING, None),
    (R.ONE_SUCCESS, S.SKIPPED, S.QUEUED, None),
    (R.ONE_SUCCESS, S.FAILED, S.SKIPPED, S.UPSTREAM_FAILED),
    (R.ONE_SUCCESS, S.DEAD_LETTERED, S.UPSTREAM_FAILED, S.UPSTREAM_FAILED),
    (R.ONE_SUCCESS, S.SKIPPED, S.SKIPPED, S.SKIPPED),
    (R.ONE_FAILED, S.FAILED, S.RUNNING, S.QUEUED),
    (R.ONE_FAILED, S.SUCCESS, S.DEAD_LETTERED, S.QUEUED),
    (R.ONE_FAILED, S.UPSTREAM_FAILED, S.QUEUED, S.QUEUED),
    (R.ONE_FAILED, S.SUCCESS, S.RUNNING, None),
    (R.ONE_FAILED, S.SUCCESS, S.SKIPPED, S.SKIPPED),
    (R.NONE_FAILED, S.SUCCESS, S.SKIPPED, S.QUEUED),
    (R.NONE_FAILED, S.SKIPPED, S.SKIPPED, S.QUEUED),
    (R.NONE_FAILED, S.SUCCESS, S.RUNNING, None),
    (R.NONE_FAILED, S.FAILED, S.RUNNING, S.UPSTREAM_FAILED),
    (R.NONE_FAILED, S.SUCCESS, S.DEAD_LETTERED, S.UPSTREAM_FAILED),
]


@pytest.mark.parametrize(("rule", "a", "b", "expected"), RULE_CASES)
def test_trigger_rule(
    rule: TriggerRule, a: TaskState, b: TaskState, expected: TaskState | None
) -> None:
    dag = Dag.build({"a": [], "b": [], "j": ["a", "b"]}, {"j": rule})
    for sa, sb in ((a, b), (b, a)):  # upstream order must not matter
        states = {"a": sa, "b": sb, "j": S.SCHEDULED}
        want = {} if expected is None else {"j": expected}
        assert targets(decide(dag, states)) == want
        assert targets(decide(dag, states, changed=["a", "b"])) == want


def test_rule_cases_cover_every_rule_and_outcome() -> None:
    # Which outcomes each rule can produce; the table above must show each.
    possible = {
        R.ALL_SUCCESS: {S.QUEUED, S.SKIPPED, S.UPSTREAM_FAILED, None},
        R.ALL_DONE: {S.QUEUED, None},
        R.ALL_FAILED: {S.QUEUED, S.SKIPPED, None},
        R.ONE_SUCCESS: {S.QUEUED, S.SKIPPED, S.UPSTREAM_FAILED, None},
        R.ONE_FAILED: {S.QUEUED, S.SKIPPED, None},
        R.NONE_FAILED: {S.QUEUED, S.UPSTREAM_FAILED, None},
    }
    assert set(possible) == set(TriggerRule)
    for rule, outcomes in possible.items():
        assert {e for r, _, _, e in RULE_CASES if r == rule} == outcomes, rule


def test_single_upstream_all_success() -> None:
    dag = chain("a", "b")
    assert targets(decide(dag, {"a": S.SUCCESS, "b": S.SCHEDULED})) == {"b": S.QUEUED}
    assert decide(dag, {"a": S.RUNNING, "b": S.SCHEDULED}) == []


# --- cascades -----------------------------------------------------------------


def test_failure_cascades_down_a_chain_in_one_call() -> None:
    dag = chain("a", "b", "c", "d")
    got = decide(dag, {"a": S.FAILED, "b": S.SCHEDULED, "c": S.SCHEDULED, "d": S.SCHEDULED})
    assert got == [
        Transition("b", S.SCHEDULED, S.UPSTREAM_FAILED),
        Transition("c", S.SCHEDULED, S.UPSTREAM_FAILED),
        Transition("d", S.SCHEDULED, S.UPSTREAM_FAILED),
    ]


def test_skip_cascades_down_a_chain_in_one_call() -> None:
    dag = chain("a", "b", "c")
    got = decide(dag, {"a": S.SKIPPED, "b": S.SCHEDULED, "c": S.SCHEDULED}, changed=["a"])
    assert targets(got) == {"b": S.SKIPPED, "c": S.SKIPPED}


def test_queued_task_stops_the_cascade() -> None:
    dag = chain("a", "b", "c", "d", rules={"c": R.ONE_FAILED})
    states = {"a": S.FAILED, "b": S.SCHEDULED, "c": S.SCHEDULED, "d": S.SCHEDULED}
    assert targets(decide(dag, states)) == {"b": S.UPSTREAM_FAILED, "c": S.QUEUED}


def test_cascade_reaches_all_done_cleanup() -> None:
    dag = chain("a", "b", "cleanup", rules={"cleanup": R.ALL_DONE})
    states = {"a": S.FAILED, "b": S.SCHEDULED, "cleanup": S.SCHEDULED}
    assert targets(decide(dag, states, changed=["a"])) == {
        "b": S.UPSTREAM_FAILED,
        "cleanup": S.QUEUED,
    }


def test_diamond_join_is_decided_once_after_both_branches() -> None:
    dag = Dag.build({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    states = {"a": S.FAILED, "b": S.SCHEDULED, "c": S.SCHEDULED, "d": S.SCHEDULED}
    got = decide(dag, states, changed=["a"])
    assert [t.task_id for t in got] == ["b", "c", "d"]
    assert {t.target for t in got} == {S.UPSTREAM_FAILED}


def test_join_waits_for_a_branch_still_running() -> None:
    dag = Dag.build({"a": [], "x": [], "b": ["a"], "j": ["b", "x"]}, {"j": R.ONE_SUCCESS})
    states = {"a": S.FAILED, "x": S.RUNNING, "b": S.SCHEDULED, "j": S.SCHEDULED}
    assert targets(decide(dag, states)) == {"b": S.UPSTREAM_FAILED}


def test_cascade_follows_topological_not_spec_order() -> None:
    dag = Dag.build({"c": ["b"], "b": ["a"], "a": []})
    states = {"a": S.SKIPPED, "b": S.SCHEDULED, "c": S.SCHEDULED}
    assert [t.task_id for t in decide(dag, states, changed=["a"])] == ["b", "c"]


def test_result_is_a_fixed_point() -> None:
    dag = Dag.build(
        {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"]},
        {"c": R.ALL_FAILED, "d": R.NONE_FAILED, "e": R.ONE_SUCCESS},
    )
    states = initial_states(dag) | {"a": S.SUCCESS}
    got = decide(dag, states, changed=["a"])
    assert targets(got) == {"b": S.QUEUED, "c": S.SKIPPED}
    after = states | targets(got)
    assert decide(dag, after) == []


# --- what decide looks at -----------------------------------------------------


def test_changed_restricts_to_downstream_of_changed() -> None:
    dag = Dag.build({"a": [], "b": ["a"], "x": [], "y": ["x"]})
    states = {"a": S.FAILED, "b": S.SCHEDULED, "x": S.SUCCESS, "y": S.SCHEDULED}
    assert targets(decide(dag, states, changed=["a"])) == {"b": S.UPSTREAM_FAILED}
    assert targets(decide(dag, states, changed=iter(["x"]))) == {"y": S.QUEUED}
    assert decide(dag, states, changed=[]) == []
    assert targets(decide(dag, states)) == {"b": S.UPSTREAM_FAILED, "y": S.QUEUED}


def test_changed_cascades_beyond_direct_downstream() -> None:
    dag = chain("a", "b", "c")
    states = {"a": S.FAILED, "b": S.SCHEDULED, "c": S.SCHEDULED}
    assert set(targets(decide(dag, states, changed=["a"]))) == {"b", "c"}


def test_changed_task_that_is_scheduled_is_examined_itself() -> None:
    dag = chain("a", "b")
    assert targets(decide(dag, {"a": S.SUCCESS, "b": S.SCHEDULED}, changed=["b"])) == {
        "b": S.QUEUED
    }


def test_unknown_changed_id_raises() -> None:
    with pytest.raises(KeyError):
        decide(chain("a", "b"), {"a": S.SUCCESS, "b": S.SCHEDULED}, changed=["nope"])


def test_only_scheduled_tasks_are_decided() -> None:
    dag = chain("a", "b", "c")
    for state in sorted(set(TaskState) - {S.SCHEDULED}):
        assert decide(dag, {"a": S.SUCCESS, "b": state, "c": S.SCHEDULED}, ["a"]) == []


def test_roots_are_never_decided() -> None:
    dag = chain("a", "b")
    assert decide(dag, {"a": S.SCHEDULED, "b": S.SCHEDULED}) == []
    assert decide(dag, {"a": S.SCHEDULED, "b": S.SCHEDULED}, changed=["a"]) == []


def test_decide_does_not_mutate_its_input() -> None:
    dag = chain("a", "b", "c")
    states = {"a": S.FAILED, "b": S.SCHEDULED, "c": S.SCHEDULED}
    before = dict(states)
    assert decide(dag, MappingProxyType(states))
    assert states == before


def test_decide_accepts_plain_string_states() -> None:
    dag = chain("a", "b")
    got = decide(dag, {"a": "success", "b": "scheduled"})  # type: ignore[dict-item]
    assert targets(got) == {"b": S.QUEUED}


def test_illegal_transition_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisions, "is_legal", lambda source, target: False)
    with pytest.raises(IllegalTransitionError):
        decide(chain("a", "b"), {"a": S.SUCCESS, "b": S.SCHEDULED})
    with pytest.raises(IllegalTransitionError):
        cancel_transitions({"a": S.RUNNING})


# --- Dag ----------------------------------------------------------------------


def test_from_spec() -> None:
    spec = WorkflowSpec(
        name="wf",
        tasks=(
            TaskSpec(id="extract", handler="noop"),
            TaskSpec(id="load", handler="noop", upstream=("transform", "extract")),
            TaskSpec(id="transform", handler="noop", upstream=("extract",)),
            TaskSpec(id="notify", handler="noop", upstream=("load",), trigger_rule=R.ALL_DONE),
        ),
    )
    dag = Dag.from_spec(spec)
    assert dag.tasks == ("extract", "load", "transform", "notify")
    assert dag.roots == ("extract",)
    assert dict(dag.upstream) == {
        "extract": (),
        "load": ("transform", "extract"),
        "transform": ("extract",),
        "notify": ("load",),
    }
    assert dict(dag.downstream) == {
        "extract": ("load", "transform"),
        "load": ("notify",),
        "transform": ("load",),
        "notify": (),
    }
    assert dict(dag.rules) == {
        "extract": R.ALL_SUCCESS,
        "load": R.ALL_SUCCESS,
        "transform": R.ALL_SUCCESS,
        "notify": R.ALL_DONE,
    }
    assert dag.rank["transform"] < dag.rank["load"] < dag.rank["notify"]


def test_rank_is_a_topological_order() -> None:
    dag = Dag.build({"e": ["d", "a"], "d": ["c"], "c": ["b"], "b": ["a"], "a": []})
    assert sorted(dag.rank.values()) == list(range(5))
    for task, ups in dag.upstream.items():
        assert all(dag.rank[u] < dag.rank[task] for u in ups)


def test_duplicate_upstream_ids_count_once() -> None:
    dag = Dag.build({"a": [], "b": ["a", "a"]})
    assert dag.upstream["b"] == ("a",)
    assert dag.downstream["a"] == ("b",)


def test_dag_mappings_are_read_only() -> None:
    dag = chain("a", "b")
    with pytest.raises(TypeError):
        dag.upstream["b"] = ()  # type: ignore[index]
    with pytest.raises(AttributeError):
        dag.tasks = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("upstream", "rules", "message"),
    [
        ({"a": ["zz"]}, None, "unknown upstream 'zz'"),
        ({"a": ["a"]}, None, "cycle among tasks a"),
        ({"a": [], "b": ["c"], "c": ["b"]}, None, "cycle among tasks b, c"),
        ({"a": []}, {"zz": R.ALL_DONE}, "unknown tasks zz"),
    ],
)
def test_build_rejects_bad_graphs(
    upstream: dict[str, list[str]], rules: dict[str, TriggerRule] | None, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        Dag.build(upstream, rules)


# --- initial states, outcome, cancel ------------------------------------------


def test_initial_states() -> None:
    dag = Dag.build({"b": ["a"], "a": [], "c": [], "d": ["b", "c"]})
    states = initial_states(dag)
    assert list(states) == ["b", "a", "c", "d"]
    assert states == {"b": S.SCHEDULED, "a": S.QUEUED, "c": S.QUEUED, "d": S.SCHEDULED}


@pytest.mark.parametrize("pending", NON_TERMINAL)
def test_run_outcome_is_none_while_a_task_is_unfinished(pending: TaskState) -> None:
    dag = chain("a", "b")
    assert run_outcome(dag, {"a": S.FAILED, "b": pending}) is None


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (S.SUCCESS, S.SUCCESS, RunState.SUCCESS),
        (S.SUCCESS, S.SKIPPED, RunState.SUCCESS),
        (S.SKIPPED, S.SKIPPED, RunState.SUCCESS),
        (S.SUCCESS, S.FAILED, RunState.FAILED),
        (S.SKIPPED, S.UPSTREAM_FAILED, RunState.FAILED),
        (S.DEAD_LETTERED, S.SUCCESS, RunState.FAILED),
    ],
)
def test_run_outcome(a: TaskState, b: TaskState, expected: RunState) -> None:
    assert run_outcome(chain("a", "b"), {"a": a, "b": b}) == expected


def test_cancel_skips_every_unfinished_task() -> None:
    states = {s.value: s for s in TaskState}
    got = cancel_transitions(states)
    assert got == [Transition(s.value, s, S.SKIPPED) for s in TaskState if s in NON_TERMINAL]
    assert all(is_legal(t.source, t.target) for t in got)


def test_cancel_accepts_plain_strings_and_empty_runs() -> None:
    assert cancel_transitions({"a": "running"}) == [  # type: ignore[dict-item]
        Transition("a", S.RUNNING, S.SKIPPED)
    ]
    assert cancel_transitions({"a": S.SUCCESS}) == []
    assert cancel_transitions({}) == []
