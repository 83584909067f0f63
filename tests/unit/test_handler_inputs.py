"""A handler's signature is its input model: checked when workflows load (names
and literal values) and before every call (the rendered inputs)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from handlers import builtin_registry
from orchestrator.handler_inputs import input_problems, literal_input_problems
from orchestrator.loader import load_path


def load_errors(tmp_path: Path, yaml_text: str) -> list[str]:
    (tmp_path / "flow.yaml").write_text(dedent(yaml_text))
    result = load_path(tmp_path, base=builtin_registry())
    return [error.describe() for error in result.errors]


def test_an_unknown_argument_of_a_builtin_is_a_load_error_naming_where(tmp_path: Path) -> None:
    errors = load_errors(
        tmp_path,
        """
        name: calls
        tasks:
          - id: fetch
            handler: http.request
            inputs: {url: "https://example.com/", tmeout_s: 5}
        """,
    )
    assert errors == [
        f"{tmp_path / 'flow.yaml'}, workflow 'calls', task 'fetch': inputs: "
        "unexpected argument 'tmeout_s' (did you mean 'timeout_s'?)"
    ]


@pytest.mark.parametrize(
    ("handler", "inputs", "complaint"),
    [
        ("http.request", "{url: 'https://h/', expect_status: ['200']}", "'expect_status[0]'"),
        (
            "http.request",
            "{url: 'https://h/', timeout_s: 0}",
            "'timeout_s': Input should be greater",
        ),
        ("http.request", "{url: 'https://h/', headers: {X: {a: 1}}}", "'headers.X'"),
        ("shell", "{command: 'true', env: {N: 3}}", "'env.N': Input should be a valid string"),
        ("shell", "{command: [echo, null]}", "'command[1]'"),
        ("shell", "{command: 'true', max_output_bytes: 1.5}", "'max_output_bytes'"),
        ("sleep", "{seconds: '5'}", "'seconds': Input should be a valid number"),
        ("sleep", "{seconds: -1}", "'seconds': Input should be greater than or equal to 0"),
        ("fail", "{succeed_on_attempt: '3'}", "'succeed_on_attempt'"),
        (
            "sensor.time",
            "{delay_s: 5, on_timeout: retry}",
            "'on_timeout': Input should be 'failed'",
        ),
        (
            "sensor.poll",
            "{check: noop, jitter: 2}",
            "'jitter': Input should be less",
        ),
        ("sensor.run", "{workflow: w, same_logical_date: 'yes'}", "'same_logical_date'"),
    ],
)
def test_a_literal_of_the_wrong_type_is_a_load_error(
    tmp_path: Path, handler: str, inputs: str, complaint: str
) -> None:
    errors = load_errors(
        tmp_path,
        f"""
        name: typed
        tasks:
          - id: t
            handler: {handler}
            inputs: {inputs}
        """,
    )
    assert len(errors) == 1, errors
    assert "workflow 'typed', task 't': inputs: argument " in errors[0]
    assert complaint in errors[0]


def test_values_holding_templates_are_left_to_the_run(tmp_path: Path) -> None:
    errors = load_errors(
        tmp_path,
        """
        name: templated
        params: {seconds: 1, code: 200}
        tasks:
          - id: nap
            handler: sleep
            inputs: {seconds: "{{ params.seconds }}"}
          - id: fetch
            handler: http.request
            inputs:
              url: "https://h/{{ params.seconds }}"
              expect_status: ["{{ params.code }}"]
        """,
    )
    assert errors == []


def test_error_messages_never_echo_a_string_value(tmp_path: Path) -> None:
    errors = load_errors(
        tmp_path,
        """
        name: secretive
        tasks:
          - id: t
            handler: sleep
            inputs: {seconds: "hunter2-secret"}
        """,
    )
    assert len(errors) == 1 and "got a string" in errors[0]
    assert "hunter2" not in errors[0]


def test_a_user_handler_is_checked_by_its_own_signature(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(
        dedent(
            """
            from orchestrator import handler
            from orchestrator.spec import TaskSpec, WorkflowSpec

            @handler()
            async def resize(ctx, *, width: int, height: int = 100, label: str = ""):
                return {"area": width * height}

            WORKFLOWS = [
                WorkflowSpec(name="images", tasks=[
                    TaskSpec(id="r", handler="resize", inputs={"width": "wide", "heigth": 5}),
                ]),
            ]
            """
        )
    )
    result = load_path(tmp_path, base=builtin_registry())
    assert [error.message for error in result.errors] == [
        "inputs: unexpected argument 'heigth' (did you mean 'height'?)",
        "inputs: argument 'width': Input should be a valid integer, got a string",
    ]


def test_the_examples_fit_the_builtin_handlers(examples_dir: Path) -> None:
    result = load_path(examples_dir, base=builtin_registry())
    assert result.ok, [error.describe() for error in result.errors]


# --------------------------------------------------------------------------- the model


async def typed(
    ctx: Any, *, n: int, ratio: float = 1.0, when: datetime | None = None, anything: Any = None
) -> None:
    return None


def test_run_time_problems_include_missing_arguments_and_rendered_values() -> None:
    assert input_problems(typed, {"n": 1}) == []
    assert input_problems(typed, {}) == ["missing argument 'n'"]
    assert input_problems(typed, {"n": "1"}) == [
        "argument 'n': Input should be a valid integer, got a string"
    ]
    # A missing argument is a run-time problem only: the value may not exist yet.
    assert literal_input_problems(typed, {}) == []
    assert literal_input_problems(typed, {"n": "{{ params.n }}"}) == []


def test_json_types_must_match_but_strings_stand_for_dates() -> None:
    assert input_problems(typed, {"n": 1, "ratio": 2}) == []  # an int is a number
    assert input_problems(typed, {"n": 1, "when": "2026-01-01T00:00:00Z"}) == []
    assert input_problems(typed, {"n": True}) == [
        "argument 'n': Input should be a valid integer, got true"
    ]
    assert input_problems(typed, {"n": 1, "anything": {"x": [None]}}) == []


def test_open_handlers_and_uninspectable_ones_take_anything() -> None:
    async def open_handler(ctx: Any, **inputs: Any) -> None:
        return None

    assert input_problems(open_handler, {"whatever": 1}) == []
    assert input_problems(max, {"whatever": 1}) == []  # no signature to inspect


def test_a_handler_without_a_context_parameter_is_named() -> None:
    def no_context() -> None:
        return None

    assert input_problems(no_context, {}) == ["the handler takes no argument for the task context"]
