from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
from loader_support import (
    SIMPLE_YAML,
    handler_file,
    messages,
    py,
    write,
)

from orchestrator.loader import MODULE_PREFIX, load_path
from orchestrator.registry import HandlerRegistry, handler
from orchestrator.spec import TriggerRule

# --------------------------------------------------------------------------- YAML


def test_yaml_list_form(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(tmp_path / "simple.yaml", SIMPLE_YAML)
    result = load_path(tmp_path, base=base)
    assert result.ok, messages(result)
    spec = result.workflows["simple"]
    assert [t.id for t in spec.tasks] == ["a", "b"]
    assert spec.task("b").upstream == ("a",)
    assert result.workflow_files == {"simple": str(f)}
    (loaded,) = result.files
    assert loaded.path == str(f) and loaded.error is None and loaded.workflows == [spec]


def test_yaml_mapping_form_equals_list_form(tmp_path: Path, base: HandlerRegistry) -> None:
    write(tmp_path / "list.yaml", SIMPLE_YAML)
    as_mapping = write(
        tmp_path / "other" / "mapping.yml",
        """
        name: simple
        params: {date: "2026-01-01"}
        tasks:
          a:
            handler: echo
            inputs: {d: "{{ params.date }}"}
          b: {handler: noop, upstream: [a]}
        """,
    )
    from_list = load_path(tmp_path / "list.yaml", base=base).workflows["simple"]
    from_mapping = load_path(as_mapping, base=base).workflows["simple"]
    assert from_mapping == from_list
    assert from_mapping.version == from_list.version


def test_yaml_all_fields(tmp_path: Path, base: HandlerRegistry) -> None:
    write(
        tmp_path / "full.yaml",
        """
        name: full
        description: every field
        max_active_runs: 2
        default_timeout_s: 60
        default_retry: {max_attempts: 5, initial_delay_s: 0.5}
        params: {day: 2026-01-01, n: 3}
        tasks:
          - id: a
            handler: shell
            retry: {max_attempts: 1, non_retryable: [ValueError], dead_letter: true}
            timeout_s: 5
            trigger_rule: all_done
            pool: io
            priority: 7
            max_concurrency: 2
        """,
    )
    result = load_path(tmp_path, base=base)
    assert result.ok, messages(result)
    spec = result.workflows["full"]
    task = spec.task("a")
    assert spec.max_active_runs == 2 and spec.default_retry.max_attempts == 5
    assert spec.params == {"day": "2026-01-01", "n": 3}  # dates stay strings
    assert task.trigger_rule is TriggerRule.ALL_DONE
    assert task.retry is not None and task.retry.non_retryable == ("ValueError",)
    assert (task.pool, task.priority, task.max_concurrency, task.timeout_s) == ("io", 7, 2, 5)


def test_yaml_several_documents(tmp_path: Path, base: HandlerRegistry) -> None:
    write(
        tmp_path / "many.yaml",
        """
        name: one
        tasks: [{id: a, handler: echo}]
        ---
        name: two
        tasks: [{id: a, handler: noop}]
        ---
        """,
    )
    result = load_path(tmp_path, base=base)
    assert result.ok, messages(result)
    assert sorted(result.workflows) == ["one", "two"]
    assert [w.name for w in result.files[0].workflows] == ["one", "two"]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(
        tmp_path / "broken.yaml",
        """
        name: broken
        tasks:
          - id: a
            handler: echo
           upstream: [x]
        """,
    )
    result = load_path(tmp_path, base=base)
    (error,) = result.errors
    assert error.file == str(f)
    assert str(error).startswith(f"{f}: line 5, column 4: invalid YAML:")
    assert result.workflows == {}


def test_yaml_duplicate_task_key_is_an_error(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(
        tmp_path / "dup.yaml",
        """
        name: dup
        tasks:
          a: {handler: echo}
          b: {handler: echo}
          a: {handler: noop}
        """,
    )
    (error,) = load_path(f, base=base).errors
    assert "line 5, column 3: invalid YAML: found duplicate key 'a'" in str(error)


def test_yaml_merge_keys_may_override(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(
        tmp_path / "merge.yaml",
        """
        name: merge
        tasks:
          - &base {id: a, handler: echo, priority: 1}
          - <<: *base
            id: b
            priority: 2
        """,
    )
    result = load_path(f, base=base)
    assert result.ok, messages(result)
    assert [(t.id, t.priority) for t in result.workflows["merge"].tasks] == [("a", 1), ("b", 2)]


def test_yaml_field_error_names_workflow_task_and_path(
    tmp_path: Path, base: HandlerRegistry
) -> None:
    f = write(
        tmp_path / "bad.yaml",
        """
        name: sales
        tasks:
          - {id: a, handler: echo}
          - {id: b, handler: echo}
          - {id: load, handler: echo, retry: {max_attempts: 0}}
        """,
    )
    (error,) = load_path(f, base=base).errors
    assert (error.file, error.workflow, error.task) == (str(f), "sales", "load")
    assert str(error) == (
        f"{f}, workflow 'sales', task 'load': "
        "tasks.2.retry.max_attempts: Input should be greater than or equal to 1"
    )


def test_yaml_field_errors_in_mapping_form_and_multi_doc(
    tmp_path: Path, base: HandlerRegistry
) -> None:
    f = write(
        tmp_path / "bad.yaml",
        """
        name: ok
        tasks: [{id: a, handler: echo}]
        ---
        name: sales
        tasks:
          extract: {handler: echo, hanlder: x}
        """,
    )
    result = load_path(f, base=base)
    (error,) = result.errors
    assert (error.workflow, error.task) == ("sales", "extract")
    assert error.message == (
        "document 2: tasks.0.hanlder: Extra inputs are not permitted; did you mean 'handler'?"
    )
    # Nothing half-loaded: the valid first document is not loaded either.
    assert result.workflows == {} and result.files[0].workflows == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just\n- a list\n", "expected a mapping with 'name' and 'tasks', got list"),
        ("name: x\ntasks:\n  a: [1]\n", "tasks.a: expected a mapping of task fields, got list"),
        ("name: x\ntasks:\n  a: {id: b, handler: echo}\n", "tasks.a: id 'b' differs from its key"),
        ("name: x\ntasks: []\n", "tasks: Tuple should have at least 1 item"),
        ("name: x\ntasks: [{id: a, handler: echo}]\ntrigger: y\n", "trigger: Extra inputs"),
    ],
)
def test_yaml_shape_errors(tmp_path: Path, base: HandlerRegistry, text: str, message: str) -> None:
    f = tmp_path / "shape.yaml"
    f.write_text(text)
    result = load_path(f, base=base)
    assert len(result.errors) == 1, messages(result)
    assert message in str(result.errors[0])
    assert str(result.errors[0]).startswith(str(f))


def test_empty_yaml_file_defines_nothing(tmp_path: Path, base: HandlerRegistry) -> None:
    write(tmp_path / "empty.yaml", "# nothing yet\n")
    result = load_path(tmp_path, base=base)
    assert result.ok and result.workflows == {} and len(result.files) == 1


# --------------------------------------------------------------------------- Python


def test_python_workflows_and_handlers(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(
        tmp_path / "flows.py",
        py(
            """
        @handler("greet")
        async def greet(ctx, *, name):
            return {"message": f"hi {name}"}

        @handler()
        def shout(ctx, *, text):
            return text.upper()

        first = WorkflowSpec(name="first", tasks=[TaskSpec(id="g", handler="greet")])
        alias = first
        _second = WorkflowSpec(
            name="second",
            tasks=[
                TaskSpec(id="g", handler="greet", inputs={"name": "{{ params.who }}"}),
                TaskSpec(id="s", handler="shout", upstream=["g"],
                         inputs={"text": "{{ upstream.g.message }}"}),
            ],
        )
        WORKFLOWS = [first, _second]
        """
        ),
    )
    result = load_path(tmp_path, base=base)
    assert result.ok, messages(result)
    assert sorted(result.workflows) == ["first", "second"]
    assert result.workflow_files == {"first": str(f), "second": str(f)}
    (loaded,) = result.files
    assert loaded.handlers == ["greet", "shout"]
    assert {"greet", "shout", "echo", "noop"} <= set(result.handlers.names())
    assert result.handlers.is_async("greet") and not result.handlers.is_async("shout")
    # Nothing written next to user files.
    assert not (tmp_path / "__pycache__").exists()


def test_handler_defined_in_another_file(tmp_path: Path, base: HandlerRegistry) -> None:
    write(
        tmp_path / "b_handlers.py",
        """
        from orchestrator.registry import handler

        @handler("custom.thing")
        async def thing(ctx):
            return 1
        """,
    )
    write(tmp_path / "a_flow.yaml", "name: uses\ntasks: [{id: t, handler: custom.thing}]\n")
    result = load_path(tmp_path, base=base)
    assert result.ok, messages(result)
    assert "uses" in result.workflows


def test_python_import_error_names_file_and_line(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(tmp_path / "broken.py", "import os\n\nimport no_such_module_xyz\n")
    result = load_path(tmp_path, base=base)
    (error,) = result.errors
    assert error.file == str(f)
    assert str(error) == (f"{f}: line 3: ModuleNotFoundError: No module named 'no_such_module_xyz'")
    assert result.files[0].error is error
    assert not any(name.startswith(f"{MODULE_PREFIX}.broken_") for name in sys.modules)


def test_python_syntax_error_names_line(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(tmp_path / "syntax.py", "x = 1\ndef oops(:\n    pass\n")
    (error,) = load_path(tmp_path, base=base).errors
    assert str(error).startswith(f"{f}: line 2: ")


def test_python_runtime_error_names_innermost_line_in_file(
    tmp_path: Path, base: HandlerRegistry
) -> None:
    f = write(
        tmp_path / "boom.py",
        """
        def helper():
            raise RuntimeError("kaput")

        helper()
        """,
    )
    (error,) = load_path(tmp_path, base=base).errors
    assert str(error) == f"{f}: line 2: RuntimeError: kaput"


def test_python_system_exit_is_contained(tmp_path: Path, base: HandlerRegistry) -> None:
    write(tmp_path / "exits.py", "import sys\nsys.exit(3)\n")
    (error,) = load_path(tmp_path, base=base).errors
    assert "line 2: SystemExit: 3" in str(error)


def test_python_spec_field_error_names_line_and_path(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(
        tmp_path / "badspec.py",
        py(
            """
        flow = WorkflowSpec(
            name="flow",
            tasks=[TaskSpec(id="a", handler="echo", retry=RetryPolicy(max_attempts=0))],
        )
        """
        ),
    )
    (error,) = load_path(tmp_path, base=base).errors
    assert str(error) == (
        f"{f}: line 6: RetryPolicy.max_attempts: Input should be greater than or equal to 1"
    )


def test_bad_workflows_list(tmp_path: Path, base: HandlerRegistry) -> None:
    write(tmp_path / "listed.py", "WORKFLOWS = ['not a spec']\n")
    write(tmp_path / "listed2.py", "WORKFLOWS = 3\n")
    result = load_path(tmp_path, base=base)
    assert [e.message for e in result.errors] == [
        "WORKFLOWS[0] is not a WorkflowSpec (got str)",
        "WORKFLOWS must be a list or tuple of WorkflowSpec, got int",
    ]


def test_two_different_specs_with_one_name_in_a_file(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(
        tmp_path / "twice.py",
        py(
            """
        a = WorkflowSpec(name="same", tasks=[TaskSpec(id="a", handler="echo")])
        b = WorkflowSpec(name="same", tasks=[TaskSpec(id="b", handler="echo")])
        c = WorkflowSpec(name="other", tasks=[TaskSpec(id="b", handler="echo")])
        """
        ),
    )
    result = load_path(tmp_path, base=base)
    (error,) = result.errors
    assert str(error) == f"{f}, workflow 'same': two different workflows with this name in one file"
    assert result.workflows == {}


def test_handler_name_clash_across_files(tmp_path: Path, base: HandlerRegistry) -> None:
    code = handler_file("dup")
    first = write(tmp_path / "a.py", code)
    second = write(tmp_path / "b.py", code + "\nfrom orchestrator.spec import *\n")
    result = load_path(tmp_path, base=base)
    (error,) = result.errors
    assert error.file == str(second)
    assert f"handler 'dup' is already registered by {first}" in str(error)
    assert result.files[0].handlers == ["dup"] and result.files[1].handlers == []


def test_handler_may_not_shadow_a_base_handler(tmp_path: Path, base: HandlerRegistry) -> None:
    write(
        tmp_path / "mine.py",
        handler_file("echo"),
    )
    (error,) = load_path(tmp_path, base=base).errors
    assert "handler 'echo' is already registered by builtin" in str(error)


def test_reimporting_a_base_handler_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @handler("shared")
    async def shared(ctx: Any) -> None:
        return None

    reg = HandlerRegistry()
    reg.register("shared", shared, origin="builtin")
    library = types.ModuleType("_loader_test_library")
    library.shared = shared  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "_loader_test_library", library)
    write(tmp_path / "uses.py", "from _loader_test_library import shared\n")
    result = load_path(tmp_path, base=reg)
    assert result.ok, messages(result)
    assert result.files[0].handlers == ["shared"]
