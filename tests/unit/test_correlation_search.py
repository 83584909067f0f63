"""Correlation values of events: a plain path of fields is followed directly,
with exactly JMESPath's answers; anything else goes to JMESPath."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest
from hypothesis import given, strategies as st

from orchestrator.routing import search

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "order_id", "x-id"]), inner, max_size=3)
    ),
    max_leaves=12,
)
PATHS = st.lists(st.sampled_from(["a", "b", "order_id", '"x-id"']), min_size=1, max_size=4).map(
    ".".join
)


@given(scope=st.dictionaries(st.sampled_from(["payload", "headers", "meta"]), JSON), tail=PATHS)
def test_a_path_of_fields_finds_what_jmespath_finds(scope: dict[str, Any], tail: str) -> None:
    for expression in (f"payload.{tail}", tail):
        found = search(expression, scope)
        expected = jmespath.search(expression, scope)
        assert found == expected and type(found) is type(expected), expression


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("payload.items[0].id", 7),
        ("payload.items[*].id", [7, 8]),
        ("payload.order_id || payload.id", "A-1"),
        ("length(payload.items)", 2),
    ],
)
def test_other_expressions_are_evaluated_by_jmespath(expression: str, expected: Any) -> None:
    scope = {"payload": {"order_id": "A-1", "items": [{"id": 7}, {"id": 8}]}}
    assert search(expression, scope) == expected
