"""The transition table's invariants, which decisions and SQL guards rely on."""

from __future__ import annotations

import pytest

from orchestrator.states import (
    CLAIMABLE_TASK_STATES,
    FAILED_TASK_STATES,
    OPERATOR_RUN_TRANSITIONS,
    OPERATOR_TASK_TRANSITIONS,
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    TERMINAL_RUN_STATES,
    TERMINAL_TASK_STATES,
    RunState,
    TaskState,
    is_legal,
    is_legal_run,
    legal_run_sources,
    legal_sources,
)

T = TaskState


def test_every_state_has_a_row() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskState)
    assert set(RUN_TRANSITIONS) == set(RunState)


def test_terminal_task_states_are_exactly_the_final_results() -> None:
    assert {T.SUCCESS, T.FAILED, T.SKIPPED, T.UPSTREAM_FAILED, T.DEAD_LETTERED} == (
        TERMINAL_TASK_STATES
    )


@pytest.mark.parametrize("state", sorted(TERMINAL_TASK_STATES))
def test_terminal_task_states_have_no_outgoing_edges(state: TaskState) -> None:
    assert TASK_TRANSITIONS[state] == frozenset()
    assert not any(is_legal(state, target) for target in TaskState)


def test_terminal_run_states() -> None:
    assert {RunState.SUCCESS, RunState.FAILED, RunState.CANCELLED} == TERMINAL_RUN_STATES
    for state in TERMINAL_RUN_STATES:
        assert not any(is_legal_run(state, target) for target in RunState)


def test_failed_states_are_terminal_and_claimable_are_not() -> None:
    assert FAILED_TASK_STATES <= TERMINAL_TASK_STATES
    assert T.SUCCESS not in FAILED_TASK_STATES
    assert T.SKIPPED not in FAILED_TASK_STATES
    assert not CLAIMABLE_TASK_STATES & TERMINAL_TASK_STATES


def test_no_self_loops() -> None:
    for state, targets in TASK_TRANSITIONS.items():
        assert state not in targets


def test_nothing_moves_back_to_scheduled() -> None:
    # decide() only ever looks at scheduled tasks; a task leaving scheduled
    # is therefore decided at most once -- unless an operator clears it.
    assert legal_sources(T.SCHEDULED) == []
    assert legal_sources(T.SCHEDULED, operator=True) == sorted(
        s.value for s in TERMINAL_TASK_STATES
    )


def test_operator_edges_are_apart_from_the_engine_table() -> None:
    assert set(OPERATOR_TASK_TRANSITIONS) == set(TaskState)
    assert set(OPERATOR_RUN_TRANSITIONS) == set(RunState)
    # Clear: every finished task may be scheduled again, never a running one.
    for state in TERMINAL_TASK_STATES:
        assert is_legal(state, T.SCHEDULED, operator=True)
        assert not is_legal(state, T.SCHEDULED)
    assert OPERATOR_TASK_TRANSITIONS[T.RUNNING] == frozenset()
    assert not is_legal(T.RUNNING, T.SCHEDULED, operator=True)
    # Mark: any state but running reaches each markable outcome.
    for state in set(TaskState) - {T.RUNNING}:
        for target in (T.SUCCESS, T.FAILED, T.SKIPPED):
            assert state == target or is_legal(state, target, operator=True), (state, target)
    # Holds: queued <-> held only by an operator; scheduled -> held by a decision.
    assert is_legal(T.SCHEDULED, T.HELD)
    assert is_legal(T.QUEUED, T.HELD, operator=True) and not is_legal(T.QUEUED, T.HELD)
    assert is_legal(T.HELD, T.QUEUED, operator=True) and not is_legal(T.HELD, T.QUEUED)
    for state in OPERATOR_TASK_TRANSITIONS:
        assert state not in OPERATOR_TASK_TRANSITIONS[state]


def test_operator_run_edges_reopen_finished_runs() -> None:
    assert legal_run_sources(RunState.RUNNING) == ["queued"]
    assert legal_run_sources(RunState.RUNNING, operator=True) == [
        "cancelled",
        "failed",
        "queued",
        "success",
    ]
    assert not is_legal_run(RunState.FAILED, RunState.RUNNING)
    assert is_legal_run(RunState.FAILED, RunState.RUNNING, operator=True)


@pytest.mark.parametrize("state", sorted(set(TaskState) - TERMINAL_TASK_STATES))
def test_every_unfinished_state_can_be_cancelled(state: TaskState) -> None:
    assert is_legal(state, T.SKIPPED)


def test_every_state_reaches_a_terminal_state() -> None:
    for start in TaskState:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TASK_TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & TERMINAL_TASK_STATES, start


@pytest.mark.parametrize("operator", [False, True])
@pytest.mark.parametrize("target", list(TaskState))
def test_legal_sources_matches_the_table(target: TaskState, operator: bool) -> None:
    got = legal_sources(target, operator=operator)
    assert got == sorted(got)
    assert all(type(s) is str for s in got)  # plain values, as SQL parameters
    assert set(got) == {s.value for s in TaskState if is_legal(s, target, operator=operator)}


def test_legal_sources_examples() -> None:
    assert legal_sources(T.QUEUED) == ["deferred", "scheduled", "up_for_retry"]
    assert legal_sources(T.RUNNING) == ["queued", "up_for_retry"]
    assert legal_sources(T.UP_FOR_RETRY) == ["running"]


@pytest.mark.parametrize("target", list(RunState))
def test_legal_run_sources_matches_the_table(target: RunState) -> None:
    assert set(legal_run_sources(target)) == {s.value for s in RunState if is_legal_run(s, target)}


def test_is_legal_examples() -> None:
    assert is_legal(T.SCHEDULED, T.QUEUED)
    assert not is_legal(T.SCHEDULED, T.RUNNING)
    assert not is_legal(T.SUCCESS, T.QUEUED)
    assert is_legal_run(RunState.RUNNING, RunState.CANCELLED)
    assert not is_legal_run(RunState.SUCCESS, RunState.RUNNING)
