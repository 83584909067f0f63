"""The SQL that cannot take its states as parameters must still mirror states.py."""

from __future__ import annotations

import re

from orchestrator.states import CLAIMABLE_TASK_STATES, TERMINAL_TASK_STATES, TaskState, is_legal
from orchestrator.store.migrate import available
from orchestrator.store.queries import queries


def _in_list(sql: str) -> set[str]:
    match = re.search(r"state IN \(([^)]*)\)", sql)
    assert match, sql
    return {s.strip().strip("'") for s in match.group(1).split(",")}


def _statement(name: str) -> str:
    """A named query's SQL; for one that calls a function of its own name
    (apply_decisions), the latest migration's definition of that function."""
    sql = queries()[name]
    if f"FROM {name}(" not in sql:
        return sql
    defined = [m.sql for m in available() if f"FUNCTION {name}(" in m.sql]
    assert defined, name
    return defined[-1].split(f"FUNCTION {name}(", 1)[1]


def test_claims_read_exactly_the_claimable_states() -> None:
    # Literal lists (not $n parameters) so the partial indexes can serve them.
    expected = {s.value for s in CLAIMABLE_TASK_STATES}
    for name in ("claim", "claim_mixed", "apply_decisions"):
        assert _in_list(_statement(name).split("FROM task_instances", 1)[1]) == expected
    assert all(is_legal(s, TaskState.RUNNING) for s in CLAIMABLE_TASK_STATES)


def test_partial_indexes_match_the_claim_predicate() -> None:
    schema = "\n".join(m.sql for m in available())
    expected = {s.value for s in CLAIMABLE_TASK_STATES}
    indexes = re.findall(r"CREATE INDEX task_instances_claimable\w* ON [^;]*", schema)
    assert len(indexes) == 2
    for index in indexes:
        assert _in_list(index) == expected


def test_enum_labels_are_the_python_states() -> None:
    schema = "\n".join(m.sql for m in available())
    match = re.search(r"CREATE TYPE task_state AS ENUM \(([^)]*)\)", schema)
    assert match
    labels = [s.strip().strip("'") for s in match.group(1).replace("\n", " ").split(",")]
    # Later migrations append labels, in order.
    labels += re.findall(r"ALTER TYPE task_state ADD VALUE (?:IF NOT EXISTS )?'(\w+)'", schema)
    assert labels == [s.value for s in TaskState]


def test_operator_sql_guards_take_their_sources_from_the_table() -> None:
    from orchestrator.operations import _CANCELLABLE

    # A cancel ends exactly the unfinished states, each along a legal edge.
    assert set(_CANCELLABLE) == {s.value for s in TaskState} - {
        s.value for s in TERMINAL_TASK_STATES
    }
    assert all(is_legal(TaskState(s), TaskState.SKIPPED) for s in _CANCELLABLE)
    for name in ("reopen_runs", "cancel_run", "operator_moves"):
        assert "state = ANY($2::run_state[])" in queries()[name] or name == "operator_moves"
    assert "t.state = i.source" in queries()["operator_moves"]


def test_every_named_query_is_unique_and_non_empty() -> None:
    found = queries()
    assert {"claim", "record_attempts", "apply_decisions", "lock_runs"} <= set(found)
    assert all(sql.strip() for sql in found.values())
