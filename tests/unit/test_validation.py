from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.errors import SpecError
from orchestrator.registry import HandlerRegistry
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.templates import TemplateError
from orchestrator.validation import (
    ancestors,
    collect_errors,
    errors_from_pydantic,
    find_cycles,
    needed_outputs,
    validate_workflow,
)

FILE = "flows/sales.yaml"


async def _dummy(ctx: Any, **inputs: Any) -> None:
    return None


@pytest.fixture
def registry() -> HandlerRegistry:
    reg = HandlerRegistry()
    for name in ("noop", "echo", "fail", "shell", "http.request"):
        reg.register(name, _dummy, origin="builtin")
    return reg


def wf(*tasks: dict[str, Any], name: str = "sales") -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"name": name, "tasks": [{"handler": "echo", **task} for task in tasks]}
    )


def errors_of(spec: WorkflowSpec, registry: HandlerRegistry) -> list[SpecError]:
    return collect_errors(spec, registry, file=FILE)


def only_error(spec: WorkflowSpec, registry: HandlerRegistry) -> SpecError:
    errors = errors_of(spec, registry)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def assert_names(error: SpecError, task: str | None) -> None:
    assert error.file == FILE
    assert error.workflow == "sales"
    assert error.task == task
    text = str(error)
    assert FILE in text
    assert "workflow 'sales'" in text
    if task:
        assert f"task {task!r}" in text


# --------------------------------------------------------------------------- valid specs


def test_valid_workflow_has_no_errors(registry: HandlerRegistry) -> None:
    spec = wf(
        {"id": "a", "inputs": {"d": "{{ params.date }}"}},
        {"id": "b", "handler": "http.request", "inputs": {"x": "{{ upstream.a.x }}"}},
        {"id": "c", "upstream": ["a"], "inputs": {"x": "{{ upstream.a }}"}},
        {"id": "d", "upstream": ["c", "b"], "inputs": {"x": "{{ upstream.a.y }} {{ upstream.b }}"}},
        {"id": "e", "handler": "noop", "inputs": {"r": "{{ run.id }} {{ task.attempt }}"}},
    )
    # b references a without depending on it: that is the only expected error.
    errors = errors_of(spec, registry)
    assert [e.task for e in errors] == ["b"]

    fixed = wf(
        {"id": "a", "inputs": {"d": "{{ params.date }}"}},
        {"id": "b", "upstream": ["a"], "inputs": {"x": "{{ upstream.a.x }}"}},
        {"id": "c", "upstream": ["a"], "inputs": {"x": "{{ upstream.a }}"}},
        {"id": "d", "upstream": ["c", "b"], "inputs": {"x": "{{ upstream.a.y }}"}},
        {"id": "e", "handler": "noop", "inputs": {"r": "{{ run.logical_date }}"}},
    )
    assert errors_of(fixed, registry) == []
    validate_workflow(fixed, registry)


def test_handlers_may_be_any_container() -> None:
    spec = wf({"id": "a"}, {"id": "b", "handler": "noop", "upstream": ["a"]})
    assert collect_errors(spec, {"echo", "noop"}) == []
    assert [e.task for e in collect_errors(spec, frozenset({"echo"}))] == ["b"]


# --------------------------------------------------------------------------- graph errors


def test_duplicate_task_id(registry: HandlerRegistry) -> None:
    error = only_error(wf({"id": "a"}, {"id": "b"}, {"id": "a"}), registry)
    assert_names(error, "a")
    assert "duplicate task id 'a' (at tasks.0, tasks.2)" in str(error)


def test_unknown_upstream_names_missing_id_and_task(registry: HandlerRegistry) -> None:
    error = only_error(wf({"id": "extract"}, {"id": "load", "upstream": ["extrct"]}), registry)
    assert_names(error, "load")
    assert "unknown upstream 'extrct'" in error.message
    assert "did you mean 'extract'?" in error.message


def test_task_listing_itself_as_upstream(registry: HandlerRegistry) -> None:
    error = only_error(wf({"id": "a", "upstream": ["a"]}), registry)
    assert_names(error, "a")
    assert "lists itself as upstream" in error.message


def test_upstream_listed_twice(registry: HandlerRegistry) -> None:
    error = only_error(wf({"id": "a"}, {"id": "b", "upstream": ["a", "a"]}), registry)
    assert_names(error, "b")
    assert "upstream 'a' is listed twice" in error.message


def test_cycle_path_is_printed(registry: HandlerRegistry) -> None:
    spec = wf(
        {"id": "a", "upstream": ["c"]},
        {"id": "b", "upstream": ["a"]},
        {"id": "c", "upstream": ["b"]},
    )
    error = only_error(spec, registry)
    assert_names(error, "a")
    assert error.message == "cycle: a -> b -> c -> a"
    assert str(error) == f"{FILE}, workflow 'sales', task 'a': cycle: a -> b -> c -> a"


def test_two_task_cycle_with_a_tail(registry: HandlerRegistry) -> None:
    spec = wf(
        {"id": "start"},
        {"id": "x", "upstream": ["start", "y"]},
        {"id": "y", "upstream": ["x"]},
        {"id": "end", "upstream": ["y"]},
    )
    error = only_error(spec, registry)
    assert error.message == "cycle: x -> y -> x"
    assert error.task == "x"


def test_each_separate_cycle_is_reported(registry: HandlerRegistry) -> None:
    spec = wf(
        {"id": "p", "upstream": ["q"]},
        {"id": "q", "upstream": ["p"]},
        {"id": "ok"},
        {"id": "r", "upstream": ["s", "ok"]},
        {"id": "s", "upstream": ["t"]},
        {"id": "t", "upstream": ["r"]},
    )
    messages = [e.message for e in errors_of(spec, registry)]
    assert messages == ["cycle: p -> q -> p", "cycle: r -> t -> s -> r"]


def test_cycle_reports_a_shortest_loop_through_its_first_task(registry: HandlerRegistry) -> None:
    # a -> b -> c -> a and a -> c -> a share a strongly connected group.
    spec = wf(
        {"id": "a", "upstream": ["c"]},
        {"id": "b", "upstream": ["a"]},
        {"id": "c", "upstream": ["b", "a"]},
    )
    assert find_cycles(spec) == [["a", "c", "a"]]


def test_long_chain_does_not_hit_recursion_limit(registry: HandlerRegistry) -> None:
    n = 3000
    tasks = [{"id": "t0", "upstream": [f"t{n - 1}"]}]
    tasks += [{"id": f"t{i}", "upstream": [f"t{i - 1}"]} for i in range(1, n)]
    spec = wf(*tasks)
    cycles = find_cycles(spec)
    assert len(cycles) == 1 and len(cycles[0]) == n + 1


def test_unknown_handler_suggests_closest(registry: HandlerRegistry) -> None:
    error = only_error(wf({"id": "a", "handler": "ecko"}), registry)
    assert_names(error, "a")
    assert "unknown handler 'ecko'; did you mean 'echo'?" in error.message
    assert "registered: echo, fail, http.request, noop, shell" in error.message


def test_unknown_handler_without_close_match(registry: HandlerRegistry) -> None:
    error = only_error(wf({"id": "a", "handler": "zzzzzz"}), registry)
    assert "did you mean" not in error.message
    assert "unknown handler 'zzzzzz'" in error.message


def test_unknown_handler_with_empty_registry() -> None:
    (error,) = collect_errors(wf({"id": "a"}), HandlerRegistry())
    assert error.message == "unknown handler 'echo'"


def test_all_errors_are_collected_in_order(registry: HandlerRegistry) -> None:
    spec = wf(
        {"id": "a", "handler": "nope", "upstream": ["a"]},
        {"id": "b", "upstream": ["ghost"], "inputs": {"x": "{{ parms.x }}"}},
    )
    messages = [(e.task, e.message.split(":")[0]) for e in errors_of(spec, registry)]
    assert messages == [
        ("a", "task lists itself as upstream"),
        ("a", "unknown handler 'nope'; did you mean 'noop'? (registered"),
        ("b", "unknown upstream 'ghost'"),
        ("b", "inputs.x"),
    ]


def test_validate_workflow_raises_the_first_error(registry: HandlerRegistry) -> None:
    spec = wf({"id": "a", "upstream": ["b"]}, {"id": "b", "upstream": ["a"]})
    with pytest.raises(SpecError) as info:
        validate_workflow(spec, registry, file=FILE)
    assert str(info.value) == f"{FILE}, workflow 'sales', task 'a': cycle: a -> b -> a"


# --------------------------------------------------------------------------- template errors


def test_template_syntax_error(registry: HandlerRegistry) -> None:
    spec = wf({"id": "a", "inputs": {"headers": {"auth": "Bearer {{ params..token }}"}}})
    error = only_error(spec, registry)
    assert isinstance(error, TemplateError)
    assert_names(error, "a")
    assert error.expression == "params..token"
    assert error.message.startswith("inputs.headers.auth: invalid template expression")


def test_template_unknown_root(registry: HandlerRegistry) -> None:
    error = only_error(wf({"id": "a", "inputs": {"items": ["x", "{{ parms.x }}"]}}), registry)
    assert_names(error, "a")
    assert error.message.startswith(
        "inputs.items[1]: template uses unknown name 'parms'; did you mean 'params'?"
    )
    assert "params, run, secrets, task, upstream" in error.message


def test_template_unknown_run_field(registry: HandlerRegistry) -> None:
    error = only_error(wf({"id": "a", "inputs": {"d": "{{ run.date }}"}}), registry)
    assert_names(error, "a")
    assert "unknown field 'run.date'" in error.message
    assert "run has: id, interval_end, interval_start, logical_date, workflow" in error.message


def test_template_reference_to_missing_task(registry: HandlerRegistry) -> None:
    error = only_error(
        wf({"id": "a"}, {"id": "b", "inputs": {"x": "{{ upstream.ghost }}"}}), registry
    )
    assert_names(error, "b")
    assert "references task 'ghost', which is not a task of this workflow" in error.message


def test_template_reference_to_non_ancestor(registry: HandlerRegistry) -> None:
    spec = wf(
        {"id": "x"},
        {"id": "y", "inputs": {"v": 'n={{ upstream."x".count }}'}},
    )
    error = only_error(spec, registry)
    assert_names(error, "y")
    assert "inputs.v: template references task 'x' which is not upstream of 'y'" in error.message


def test_template_reference_to_downstream_task(registry: HandlerRegistry) -> None:
    spec = wf(
        {"id": "a", "inputs": {"v": "{{ upstream.b }}"}},
        {"id": "b", "upstream": ["a"]},
    )
    error = only_error(spec, registry)
    assert "references task 'b' which is not upstream of 'a'" in error.message


def test_template_reference_to_own_output(registry: HandlerRegistry) -> None:
    error = only_error(wf({"id": "a", "inputs": {"v": "{{ upstream.a }}"}}), registry)
    assert "references the task's own output" in error.message


def test_template_reference_to_transitive_ancestor_is_fine(registry: HandlerRegistry) -> None:
    spec = wf(
        {"id": "a"},
        {"id": "b", "upstream": ["a"]},
        {"id": "c", "upstream": ["b"], "inputs": {"v": "{{ [upstream.a, upstream.b] }}"}},
    )
    assert errors_of(spec, registry) == []


# --------------------------------------------------------------------------- graph helpers


def test_ancestors_of_a_diamond() -> None:
    spec = wf(
        {"id": "a"},
        {"id": "b", "upstream": ["a"]},
        {"id": "c", "upstream": ["a"]},
        {"id": "d", "upstream": ["b", "c"]},
    )
    assert ancestors(spec) == {
        "a": frozenset(),
        "b": frozenset({"a"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a", "b", "c"}),
    }


def test_ancestors_terminate_on_cycles_and_ignore_unknown_ids() -> None:
    spec = wf({"id": "a", "upstream": ["b", "ghost"]}, {"id": "b", "upstream": ["a"]})
    assert ancestors(spec) == {"a": frozenset({"b"}), "b": frozenset({"a"})}


def test_needed_outputs_is_direct_upstream_plus_template_references() -> None:
    spec = wf(
        {"id": "a"},
        {"id": "b", "upstream": ["a"]},
        {"id": "z", "upstream": ["b"]},
        {
            "id": "c",
            "upstream": ["z"],
            "inputs": {"v": "{{ upstream.a.x }}", "w": ["{{ upstream.c }}", "{{ upstream.q }}"]},
        },
    )
    assert needed_outputs(spec) == {"a": (), "b": ("a",), "z": ("b",), "c": ("a", "z")}


# --------------------------------------------------------------------------- pydantic errors


def test_pydantic_errors_name_path_workflow_and_task() -> None:
    data = {
        "name": "sales",
        "tasks": [
            {"id": "a", "handler": "echo"},
            {"id": "b", "handler": "echo"},
            {"id": "load", "handler": "echo", "retry": {"max_attempts": 0}},
        ],
    }
    with pytest.raises(ValidationError) as info:
        WorkflowSpec.model_validate(data)
    (error,) = errors_from_pydantic(info.value, data, file=FILE)
    assert_names(error, "load")
    assert error.message == "tasks.2.retry.max_attempts: Input should be greater than or equal to 1"


def test_pydantic_errors_several_and_without_task() -> None:
    data = {
        "name": "sales",
        "default_timeout_s": 0,
        "tasks": [{"id": "a", "hanlder": "echo"}, {"id": "bad id!", "handler": "echo"}],
    }
    with pytest.raises(ValidationError) as info:
        WorkflowSpec.model_validate(data)
    errors = errors_from_pydantic(info.value, data, file=FILE)
    by_message = {e.message.split(":")[0]: e for e in errors}
    assert set(by_message) == {
        "tasks.0.handler",
        "tasks.0.hanlder",
        "tasks.1.id",
        "default_timeout_s",
    }
    assert by_message["default_timeout_s"].task is None
    assert by_message["tasks.0.handler"].message == "tasks.0.handler: Field required"
    assert by_message["tasks.0.hanlder"].message == (
        "tasks.0.hanlder: Extra inputs are not permitted; did you mean 'handler'?"
    )
    assert by_message["tasks.0.hanlder"].task == "a"
    assert by_message["tasks.1.id"].task == "bad id!"
    assert by_message["tasks.1.id"].message == (
        "tasks.1.id: 'bad id!' is not a valid name: use letters, digits, '_' and '-', "
        "starting with a letter or '_'"
    )
    assert all(e.workflow == "sales" and e.file == FILE for e in errors)


def test_pydantic_model_validator_error() -> None:
    data = {
        "name": "sales",
        "default_retry": {"initial_delay_s": 10, "max_delay_s": 1, "max_atempts": 2},
        "tasks": [{"id": "a", "handler": "echo"}],
    }
    with pytest.raises(ValidationError) as info:
        WorkflowSpec.model_validate(data)
    messages = [e.message for e in errors_from_pydantic(info.value, data)]
    assert messages == [
        "default_retry.max_atempts: Extra inputs are not permitted; did you mean 'max_attempts'?"
    ]


def test_pydantic_error_of_a_nested_model_built_alone() -> None:
    with pytest.raises(ValidationError) as info:
        TaskSpec(id="a", handler="echo", retry=RetryPolicy(max_attempts=0))
    (error,) = errors_from_pydantic(info.value, file="x.py", prefix="line 3: ")
    assert error.message == (
        "line 3: RetryPolicy.max_attempts: Input should be greater than or equal to 1"
    )
    assert str(error).startswith("x.py: line 3:")
