from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jmespath
import pytest
from hypothesis import given, strategies as st

from orchestrator.errors import SpecError
from orchestrator.templates import (
    ROOT_FIELDS,
    ROOTS,
    TemplateError,
    build_scope,
    has_templates,
    parse_templates,
    referenced_fields,
    referenced_roots,
    referenced_tasks,
    render,
    renderer,
)


@pytest.fixture
def scope() -> dict[str, Any]:
    return build_scope(
        params={"date": "2026-01-01", "n": 3, "flag": True, "items": [{"id": 1}, {"id": 2}]},
        upstream={
            "extract": {"rows": [1, 2, 3], "source": "crm", "meta": {"ok": True}},
            "a-b": 5,
            "empty": None,
        },
        run_id=42,
        workflow="daily_sales",
        logical_date=None,
        task_id="load",
        attempt=2,
    )


def test_scope_has_every_root_and_exactly_the_fields_validation_allows() -> None:
    # Validation accepts exactly ROOT_FIELDS; the worker renders with build_scope.
    scope = build_scope(
        params={},
        upstream={},
        run_id=1,
        workflow="w",
        task_id="t",
        attempt=1,
        logical_date=datetime(2026, 1, 1, tzinfo=UTC),
        interval_end=datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert set(scope) == ROOTS
    for root, fields in ROOT_FIELDS.items():
        assert set(scope[root]) == fields, root
    assert render("{{ run.interval_start }}..{{ run.interval_end }}", scope) == (
        "2026-01-01T00:00:00+00:00..2026-01-02T00:00:00+00:00"
    )
    assert scope["run"]["logical_date"] == scope["run"]["interval_start"]


def test_scope_of_a_run_without_logical_date_has_null_dates() -> None:
    scope = build_scope(params={}, upstream={}, run_id=1, workflow="w", task_id="t", attempt=1)
    assert render("{{ run.logical_date }}/{{ run.interval_end }}", scope) == "null/null"


# --------------------------------------------------------------------------- render: raw values


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ params.n }}", 3),
        ("{{params.n}}", 3),
        ("  {{ params.n }}\n", 3),
        ("{{ params.flag }}", True),
        ("{{ upstream.extract.rows }}", [1, 2, 3]),
        ("{{ upstream.extract.meta }}", {"ok": True}),
        ('{{ upstream."a-b" }}', 5),
        ("{{ upstream.empty }}", None),
        ("{{ params.missing }}", None),
        ("{{ upstream.nope.deeper[0] }}", None),
        ("{{ run.id }}", 42),
        ("{{ run.logical_date }}", None),
        ("{{ run.workflow }}", "daily_sales"),
        ("{{ task.attempt }}", 2),
        ("{{ task.id }}", "load"),
        ("{{ length(upstream.extract.rows) }}", 3),
        ("{{ params.items[?id > `1`].id }}", [2]),
        ("{{ {x: {y: params.n}} }}", {"x": {"y": 3}}),
        ("{{ '}}' }}", "}}"),
        ("{{ `[1, 2]` }}", [1, 2]),
    ],
)
def test_whole_template_keeps_json_type(
    scope: dict[str, Any], template: str, expected: Any
) -> None:
    assert render(template, scope) == expected


def test_raw_value_type_is_exact(scope: dict[str, Any]) -> None:
    assert type(render("{{ params.n }}", scope)) is int
    assert type(render("{{ params.flag }}", scope)) is bool


# --------------------------------------------------------------------------- render: interpolation


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("date={{ params.date }}", "date=2026-01-01"),
        ("n={{ params.n }}!", "n=3!"),
        ("flag={{ params.flag }}", "flag=true"),
        ("missing={{ params.missing }}", "missing=null"),
        ("rows={{ upstream.extract.rows }}", "rows=[1,2,3]"),
        ("meta={{ upstream.extract.meta }}", 'meta={"ok":true}'),
        ("{{ params.n }}{{ params.n }}", "33"),
        ("{{ params.date }} / {{ run.id }} / {{ task.attempt }}", "2026-01-01 / 42 / 2"),
        ("x {{ '}}' }} y", "x }} y"),
    ],
)
def test_interpolation(scope: dict[str, Any], template: str, expected: str) -> None:
    assert render(template, scope) == expected


def test_nested_structures_render_recursively(scope: dict[str, Any]) -> None:
    value = {
        "plain": "no templates here",
        "number": 7,
        "nothing": None,
        "list": ["{{ params.n }}", "v{{ params.n }}", [{"deep": "{{ upstream.extract.source }}"}]],
        "tuple": ("{{ params.flag }}",),
        "{{ params.n }}": "keys are left alone",
    }
    assert render(value, scope) == {
        "plain": "no templates here",
        "number": 7,
        "nothing": None,
        "list": [3, "v3", [{"deep": "crm"}]],
        "tuple": [True],
        "{{ params.n }}": "keys are left alone",
    }


def test_render_does_not_mutate_input(scope: dict[str, Any]) -> None:
    value = {"a": ["{{ params.n }}"]}
    render(value, scope)
    assert value == {"a": ["{{ params.n }}"]}


def test_string_without_template_is_returned_as_is(scope: dict[str, Any]) -> None:
    text = "just text with { braces } and }} closers"
    assert render(text, scope) is text


def test_evaluation_error_names_expression_and_task(scope: dict[str, Any]) -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ length(params.n) }}", scope)
    assert info.value.expression == "length(params.n)"
    assert info.value.task == "load"
    assert "length(params.n)" in str(info.value)
    assert "task 'load'" in str(info.value)


def test_render_rejects_bad_template(scope: dict[str, Any]) -> None:
    with pytest.raises(TemplateError, match=r"a\.\.b"):
        render({"x": "{{ a..b }}"}, scope)


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "{{ params.n }}",
        "  {{ upstream.extract.rows }}  ",
        "v{{ params.n }} of {{ run.id }}",
        "{{ length(upstream.extract.rows) }}",
        {"a": "{{ params.date }}", "b": ["{{ params.flag }}", 3, None], "c": {"d": "x"}},
        ("{{ params.n }}", "{{ upstream.missing.field }}"),
        7,
        None,
    ],
)
def test_a_renderer_renders_as_render_does(scope: dict[str, Any], value: Any) -> None:
    assert renderer(value)(scope) == render(value, scope)


def test_a_renderer_of_a_bad_template_raises_when_called(scope: dict[str, Any]) -> None:
    render_bad = renderer({"x": "{{ a..b }}"})  # made without complaint
    with pytest.raises(TemplateError, match=r"a\.\.b"):
        render_bad(scope)


def test_a_renderer_makes_a_new_mapping_each_time(scope: dict[str, Any]) -> None:
    render_params = renderer({"n": "{{ params.n }}"})
    first = render_params(scope)
    first["n"] = 0
    assert render_params(scope) == {"n": 3}


def test_template_error_is_a_spec_error() -> None:
    assert issubclass(TemplateError, SpecError)


def test_has_templates() -> None:
    assert has_templates({"a": ["x", {"b": "{{ params.x }}"}]})
    assert not has_templates({"a": ["x", 1, None, {"b": "y"}]})


@given(st.text().filter(lambda s: "{{" not in s))
def test_plain_strings_unchanged(text: str) -> None:
    assert render(text, {}) == text


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_whole_template_round_trips_any_json_value(value: Any) -> None:
    assert render("{{ params.v }}", {"params": {"v": value}}) == value


# --------------------------------------------------------------------------- parse_templates


def test_parse_templates_lists_expressions_in_order() -> None:
    value = {
        "a": "{{ params.x }} and {{upstream.b.c}}",
        "b": ["plain", {"c": " {{ run.id }} "}],
        "n": 1,
    }
    assert parse_templates(value) == ["params.x", "upstream.b.c", "run.id"]
    assert parse_templates("no templates") == []


def test_parse_templates_syntax_error_names_the_expression() -> None:
    with pytest.raises(TemplateError) as info:
        parse_templates({"x": ["ok {{ params.a }}", "bad {{ upstream.a..b }}"]})
    assert info.value.expression == "upstream.a..b"
    assert "invalid template expression 'upstream.a..b'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ params.x", "unclosed template"),
        ("a {{ params.x } b", "unclosed template"),
        ("{{ }}", "empty template"),
        ("{{ params[ }}", "invalid template expression 'params['"),
        ("{{ a $ b }}", "invalid template expression 'a $ b'"),
        ("{{ lenght(params.x) }}", "unknown function 'lenght'; did you mean 'length'?"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("[", r"\[").replace("$", r"\$")):
        parse_templates(text)


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("template", "tasks"),
    [
        ("{{ upstream.a }}", {"a"}),
        ("{{ upstream.a.b.c }}", {"a"}),
        ('{{ upstream."a-b" }}', {"a-b"}),
        ('{{ upstream."a-b".rows[0] }}', {"a-b"}),
        ("{{ upstream.a[0] }}", {"a"}),
        ("{{ upstream.a[*].x }}", {"a"}),
        ("{{ upstream.a[1:2] }}", {"a"}),
        ("{{ upstream.a[] }}", {"a"}),
        ("{{ upstream.[a, b] }}", {"a", "b"}),
        ("{{ upstream.{x: a, y: b.c} }}", {"a", "b"}),
        ("{{ upstream | a }}", {"a"}),
        ("{{ (upstream).a }}", {"a"}),
        ("{{ @.upstream.a }}", {"a"}),
        ("{{ length(upstream.a) }}", {"a"}),
        ("{{ sort_by(upstream.a, &upstream.b) }}", {"a"}),
        ("{{ upstream.a || upstream.b }}", {"a", "b"}),
        ("{{ upstream.a && params.b }}", {"a"}),
        ("{{ [upstream.a, params.x] }}", {"a"}),
        ("{{ {p: params.x, u: upstream.z} }}", {"z"}),
        ("{{ upstream.a.rows[?id == upstream.b] }}", {"a"}),  # b is read per element
        ("{{ params.items[?id == upstream.z] }}", set()),
        ("{{ a.upstream.b }}", set()),
        ("{{ !upstream.a }}", set()),  # parsed as (!upstream).a
        ("{{ upstream }}", set()),
        ("{{ upstream.* }}", set()),
        ("{{ keys(upstream) }}", set()),
        ("{{ upstream[0] }}", set()),
        ('{{ `{"upstream": 1}` }}', set()),
        ("{{ 'upstream.a' }}", set()),
        ("upstream.a without braces", set()),
        ("{{ upstream.a }} and {{ upstream.b.x }}", {"a", "b"}),
    ],
)
def test_referenced_tasks(template: str, tasks: set[str]) -> None:
    assert referenced_tasks(template) == tasks


def test_referenced_tasks_walks_nested_inputs() -> None:
    inputs = {"x": ["{{ upstream.a }}", {"y": "n={{ upstream.b.n }}"}], "z": 3}
    assert referenced_tasks(inputs) == {"a", "b"}


def test_referenced_roots() -> None:
    assert referenced_roots("{{ params.x }} {{ upstream.a }}") == {"params", "upstream"}
    assert referenced_roots("{{ run.id }}-{{ task.attempt }}") == {"run", "task"}
    assert referenced_roots("{{ parms.x }}") == {"parms"}
    assert referenced_roots("{{ @ }}") == set()
    assert referenced_roots("{{ `1` }}") == set()
    assert referenced_roots("{{ params.items[?upstream.x] }}") == {"params"}
    assert referenced_roots("{{ params.x }}") <= ROOTS


def test_referenced_fields() -> None:
    assert referenced_fields("{{ run.date }} {{ params }}") == {
        ("run", None),
        ("run", "date"),
        ("params", None),
    }


def test_references_raise_on_bad_syntax() -> None:
    with pytest.raises(TemplateError):
        referenced_tasks("{{ upstream.a..b }}")
    with pytest.raises(TemplateError):
        referenced_roots("{{ upstream.a..b }}")


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c-d"]),
        st.recursive(
            st.none() | st.integers() | st.text(max_size=3),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["a", "b", "c-d"]), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=3,
    ),
    st.lists(st.sampled_from(["a", "b", '"c-d"']), min_size=1, max_size=4),
)
def test_field_chain_fast_path_matches_jmespath(scope: dict[str, Any], keys: list[str]) -> None:
    expression = ".".join(keys)
    assert render(f"{{{{ {expression} }}}}", scope) == jmespath.search(expression, scope)
