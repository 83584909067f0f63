"""Declared run params: the schema syntax, checking values, and the errors a person reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from handlers import builtin_registry
from orchestrator.errors import ParamsError
from orchestrator.loader import load_path
from orchestrator.params import ParamsSchema
from orchestrator.spec import ParamSpec, TaskSpec, WorkflowSpec
from orchestrator.validation import collect_errors
from sources.models import KafkaTrigger

HANDLERS = {"echo", "noop"}

DAILY_YAML = """
name: daily
params:
  date: {type: string, format: date, required: true, description: The day to load.}
  limit: {type: integer, default: 10, minimum: 1}
  mode: {enum: [full, delta], default: delta}
  region: emea
tasks:
  - id: load
    handler: echo
    inputs: {date: "{{ params.date }}", limit: "{{ params.limit }}", mode: "{{ params.mode }}"}
"""


def spec_with(params: dict[str, Any], **kw: Any) -> WorkflowSpec:
    return WorkflowSpec(name="wf", tasks=(TaskSpec(id="t", handler="noop"),), params=params, **kw)


@pytest.fixture
def daily(tmp_path: Path) -> WorkflowSpec:
    (tmp_path / "daily.yaml").write_text(DAILY_YAML)
    result = load_path(tmp_path, base=builtin_registry())
    assert result.errors == []
    return result.workflows["daily"]


def schema(spec: WorkflowSpec) -> ParamsSchema:
    assert spec.param_schema is not None
    return spec.param_schema


def refused(spec: WorkflowSpec, given: dict[str, Any]) -> ParamsError:
    with pytest.raises(ParamsError) as caught:
        schema(spec).check(given, workflow=spec.name)
    return caught.value


def test_yaml_schema_entries_and_plain_defaults_fill_in_defaults(daily: WorkflowSpec) -> None:
    checked = schema(daily).check({"date": "2026-02-01"}, workflow="daily")
    assert checked == {"date": "2026-02-01", "limit": 10, "mode": "delta", "region": "emea"}
    given = {"date": "2026-02-01", "limit": 3, "mode": "full", "region": {"any": "value"}}
    assert schema(daily).check(given, workflow="daily") == given
    assert daily.param_defaults == {"limit": 10, "mode": "delta", "region": "emea"}


def test_an_unknown_param_is_named_with_a_suggestion_and_the_declared_ones(
    daily: WorkflowSpec,
) -> None:
    error = refused(daily, {"dat": "2026-02-01"})
    assert ("dat", "is not a declared param (did you mean 'date'?)") in error.problems
    assert error.declared == ["date", "limit", "mode", "region"]
    text = str(error)
    assert "workflow 'daily'" in text and "'dat' is not a declared param" in text
    assert "Declared params: date (string, date, required)" in text
    assert 'mode (one of "full", "delta", default "delta")' in text


@pytest.mark.parametrize(
    ("given", "param", "message"),
    [
        ({"date": 20260201}, "date", "should be a valid string, got 20260201"),
        ({"date": "2026-02-30"}, "date", "should be a date, YYYY-MM-DD"),
        ({"date": "yesterday"}, "date", "should be a date, YYYY-MM-DD"),
        ({"limit": "10"}, "limit", 'should be a valid integer, got "10"'),
        ({"limit": True}, "limit", "should be a valid integer, got true"),
        ({"limit": 2.5}, "limit", "should be a valid integer"),
        ({"limit": 0}, "limit", "should be at least 1, got 0"),
        ({"mode": "half"}, "mode", 'should be one of "full", "delta", got "half"'),
    ],
)
def test_wrong_values_are_named_with_what_was_expected(
    daily: WorkflowSpec, given: dict[str, Any], param: str, message: str
) -> None:
    error = refused(daily, {"date": "2026-02-01", **given})
    assert [p for p, _ in error.problems] == [param]
    assert message in error.problems[0][1]


def test_required_params_and_null(daily: WorkflowSpec) -> None:
    missing = refused(daily, {})
    assert missing.problems == [("date", "is required but not given")]
    # A template over a missing event field renders null: that is not a value.
    null = refused(daily, {"date": None})
    assert null.problems == [("date", "is required but was null")]
    # For an optional typed param, null means "use the default".
    checked = schema(daily).check({"date": "2026-02-01", "limit": None}, workflow="daily")
    assert checked["limit"] == 10


def test_every_problem_is_reported_at_once(daily: WorkflowSpec) -> None:
    error = refused(daily, {"dat": "x", "limit": "ten", "mode": "half"})
    assert sorted(p for p, _ in error.problems) == ["dat", "date", "limit", "mode"]


def test_plain_defaults_declare_the_allowed_keys_but_take_any_value() -> None:
    spec = spec_with({"date": "2026-01-01", "region": "emea"})
    assert schema(spec).check({"date": 7}, workflow="wf") == {"date": 7, "region": "emea"}
    error = refused(spec, {"regoin": "amer"})
    assert error.problems == [("regoin", "is not a declared param (did you mean 'region'?)")]
    assert 'Declared params: date (default "2026-01-01"), region (default "emea")' in str(error)


def test_no_params_declared_accepts_anything() -> None:
    spec = spec_with({})
    assert spec.param_schema is None and spec.param_defaults == {}


def test_types_formats_and_patterns() -> None:
    spec = spec_with(
        {
            "n": {"type": "number", "maximum": 1.5},
            "flag": {"type": "boolean"},
            "ids": {"type": "array"},
            "cfg": {"type": "object"},
            "at": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "pattern": "^[A-Z]-\\d+$"},
            "anything": {"required": True},
        }
    )
    ok = {
        "n": 1,
        "flag": False,
        "ids": [1],
        "cfg": {"a": 1},
        "at": "2026-02-01T02:00:00+01:00",
        "code": "A-1001",
        "anything": [None],
    }
    assert schema(spec).check(ok, workflow="wf") == ok
    error = refused(
        spec,
        {
            "n": 2,
            "flag": "yes",
            "ids": "1,2",
            "cfg": [],
            "at": "tomorrow",
            "code": "a-1",
            "anything": 0,
        },
    )
    messages = dict(error.problems)
    assert messages["n"].startswith("should be at most 1.5")
    assert messages["flag"].startswith("should be a valid boolean")
    assert messages["ids"].startswith("should be a valid list")
    assert messages["cfg"].startswith("should be a valid dictionary")
    assert messages["at"].startswith("should be an ISO 8601 date-time")
    assert messages["code"].startswith("should match ^[A-Z]-\\d+$")
    assert "anything" not in messages
    assert dict(refused(spec, {"n": True, "anything": 1}).problems)["n"].startswith(
        "should be a number"
    )


def test_a_dict_default_is_a_default_unless_it_has_a_schema_key() -> None:
    spec = spec_with({"options": {"fast": True}, "shape": {"default": {"type": "square"}}})
    assert spec.param_defaults == {"options": {"fast": True}, "shape": {"type": "square"}}
    assert schema(spec).entries["options"] is None
    assert schema(spec).entries["shape"] is not None


def test_python_param_spec_is_the_same_as_the_mapping_form() -> None:
    typed = spec_with({"limit": ParamSpec(type="integer", default=10)})
    mapping = spec_with({"limit": {"type": "integer", "default": 10}})
    assert typed.params == {"limit": {"type": "integer", "default": 10}}
    assert typed.version == mapping.version
    assert typed.version != spec_with({"limit": {"type": "integer", "default": 11}}).version
    # The plain-defaults form is stored exactly as written (its version is unchanged).
    assert b'"params":{"date":"2026-01-01"}' in spec_with({"date": "2026-01-01"}).canonical_json()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "strng"}, "type: should be 'string', 'integer'"),
        (
            {"type": "string", "requird": True},
            "unknown keyword 'requird' (did you mean 'required'?)",
        ),
        ({"type": "integer", "default": "ten"}, 'default "ten" should be a valid integer'),
        ({"required": True, "default": 1}, "a required param cannot have a default"),
        ({"type": "integer", "enum": [1, "two"]}, 'enum value "two" should be a valid integer'),
        ({"type": "string", "enum": []}, "enum: List should have at least 1 item"),
        ({"type": "integer", "format": "date"}, "'format' applies to strings"),
        ({"type": "string", "minimum": 1}, "'minimum' applies to numbers"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum 5 is above maximum 1"),
        ({"type": "string", "pattern": "("}, "'pattern' is not a valid regular expression"),
        ({"type": "string", "default": "x", "pattern": "^\\d+$"}, 'default "x" should match'),
        ({"required": "yes"}, "required: should be a valid boolean"),
    ],
)
def test_a_bad_schema_entry_is_a_spec_error_naming_the_param(
    entry: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError) as caught:
        spec_with({"limit": entry})
    [error] = caught.value.errors()
    assert error["loc"] == ("params", "limit")
    assert message in error["msg"]

    # Through the loader: file, workflow and param path are named.
    body = "".join(f"\n    {k}: {v!r}" for k, v in entry.items()).replace("'", '"')
    (tmp_path / "wf.yaml").write_text(
        f"name: wf\nparams:\n  limit:{body}\ntasks:\n  - {{id: t, handler: noop}}\n"
    )
    result = load_path(tmp_path)
    assert len(result.errors) == 1
    described = result.errors[0].describe()
    assert "wf.yaml" in described and "workflow 'wf'" in described
    assert "params.limit: " in described


def test_triggers_and_templates_must_use_declared_params() -> None:
    spec = WorkflowSpec(
        name="orders",
        params={"order_id": {"type": "string", "required": True}, "total": 0},
        tasks=(TaskSpec(id="t", handler="echo", inputs={"id": "{{ params.order }}"}),),
        triggers=(
            KafkaTrigger(topic="orders", params={"totl": "{{ payload.total }}"}),
            KafkaTrigger(topic="more", params={"order_id": "{{ payload.id }}"}),
        ),
    )
    messages = [e.message for e in collect_errors(spec, HANDLERS)]
    assert messages == [
        "inputs.id: template uses param 'order', which is not declared; "
        "did you mean 'order_id'? (declared: order_id, total)",
        "triggers[0] (kafka) params: 'totl' is not a declared param; did you mean 'total'? "
        "(declared: order_id, total; add it to the workflow's params)",
        "triggers[0] (kafka) params: required param 'order_id' is not mapped, so every "
        "event would be refused; map it from the event or make it optional",
    ]
    # Without declared params, templates and triggers may use any.
    assert collect_errors(spec.model_copy(update={"params": {}}), HANDLERS) == []
