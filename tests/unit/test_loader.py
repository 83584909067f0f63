from __future__ import annotations

import os
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from orchestrator.loader import MODULE_PREFIX, LoadResult, format_errors, load_path
from orchestrator.registry import HandlerRegistry, handler
from orchestrator.spec import TriggerRule, WorkflowSpec
from orchestrator.templates import build_scope, render
from orchestrator.validation import needed_outputs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def _dummy(ctx: Any, **inputs: Any) -> Any:
    return inputs


@pytest.fixture
def base() -> HandlerRegistry:
    reg = HandlerRegistry()
    for name in ("noop", "echo", "fail", "shell", "http.request"):
        reg.register(name, _dummy, origin="builtin")
    return reg


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def modules_from(path: Path) -> list[str]:
    """Names in sys.modules of modules imported from ``path``."""
    target = str(path.resolve())
    return [n for n, m in list(sys.modules.items()) if getattr(m, "__file__", None) == target]


def messages(result: LoadResult) -> list[str]:
    return [str(e) for e in result.errors]


SIMPLE_YAML = """
name: simple
params: {date: "2026-01-01"}
tasks:
  - id: a
    handler: echo
    inputs: {d: "{{ params.date }}"}
  - id: b
    handler: noop
    upstream: [a]
"""

PY_HEADER = """
from orchestrator.registry import handler
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
"""


def py(body: str) -> str:
    return PY_HEADER + textwrap.dedent(body)


def handler_file(name: str, body: str = "pass") -> str:
    """A Python file defining one sync handler called ``name``."""
    header = "from orchestrator.registry import handler\n\n"
    return f"{header}@handler({name!r})\ndef f(ctx):\n    {body}\n"


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


# --------------------------------------------------------------------------- across files


def test_duplicate_workflow_across_files_names_both(tmp_path: Path, base: HandlerRegistry) -> None:
    first = write(tmp_path / "a.yaml", SIMPLE_YAML)
    second = write(
        tmp_path / "b.py",
        PY_HEADER
        + '\nsimple = WorkflowSpec(name="simple", tasks=[TaskSpec(id="x", handler="echo")])\n',
    )
    result = load_path(tmp_path, base=base)
    (error,) = result.errors
    assert error.file == str(second) and error.workflow == "simple"
    assert f"workflow is defined in both {first} and {second}" in str(error)
    assert result.workflow_files == {"simple": str(first)}
    assert [t.id for t in result.workflows["simple"].tasks] == ["a", "b"]


def test_nothing_half_loaded(tmp_path: Path, base: HandlerRegistry) -> None:
    good = write(tmp_path / "good.yaml", SIMPLE_YAML)
    bad = write(
        tmp_path / "mixed.py",
        py(
            """
        @handler("from_mixed")
        async def h(ctx):
            pass

        fine = WorkflowSpec(name="fine", tasks=[TaskSpec(id="a", handler="echo")])
        cyclic = WorkflowSpec(name="cyclic", tasks=[
            TaskSpec(id="a", handler="echo", upstream=["b"]),
            TaskSpec(id="b", handler="nope", upstream=["a"]),
        ])
        """
        ),
    )
    result = load_path(tmp_path, base=base)
    assert [(e.file, e.workflow, e.task) for e in result.errors] == [
        (str(bad), "cyclic", "b"),
        (str(bad), "cyclic", "a"),
    ]
    assert "cycle: a -> b -> a" in str(result.errors[1])
    assert list(result.workflows) == ["simple"]
    assert result.workflow_files == {"simple": str(good)}
    by_path = {f.path: f for f in result.files}
    assert by_path[str(bad)].workflows == [] and by_path[str(bad)].error is result.errors[0]
    assert len(by_path[str(bad)].errors) == 2
    # Its handlers did import cleanly, so other files could use them.
    assert "from_mixed" in result.handlers


def test_skipped_names_and_other_suffixes(tmp_path: Path, base: HandlerRegistry) -> None:
    broken = "this is not valid python (\n"
    write(tmp_path / "_private.py", broken)
    write(tmp_path / ".hidden.yaml", "[:")
    write(tmp_path / ".git" / "x.py", broken)
    write(tmp_path / "_build" / "x.py", broken)
    write(tmp_path / "__pycache__" / "x.py", broken)
    write(tmp_path / "notes.txt", broken)
    write(tmp_path / "deep" / "er" / "flow.yaml", SIMPLE_YAML)
    result = load_path(tmp_path, base=base)
    assert result.ok, messages(result)
    assert [f.path for f in result.files] == [str(tmp_path / "deep" / "er" / "flow.yaml")]


def test_files_load_in_sorted_order(tmp_path: Path, base: HandlerRegistry) -> None:
    for name in ("b.yaml", "a.yaml", "sub/c.yaml", "a1.yml"):
        write(tmp_path / name, "")
    result = load_path(tmp_path, base=base)
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in result.files] == [
        "a.yaml",
        "a1.yml",
        "b.yaml",
        "sub/c.yaml",
    ]


def test_single_file_and_bad_paths(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(tmp_path / "simple.yaml", SIMPLE_YAML)
    assert list(load_path(str(f), base=base).workflows) == ["simple"]

    missing = load_path(tmp_path / "nope", base=base)
    assert messages(missing) == [f"{tmp_path / 'nope'}: no such file or directory"]

    txt = write(tmp_path / "x.txt", "")
    assert "not a workflow file" in messages(load_path(txt, base=base))[0]


def test_default_base_is_empty(tmp_path: Path) -> None:
    write(tmp_path / "simple.yaml", SIMPLE_YAML)
    result = load_path(tmp_path)
    assert [e.message for e in result.errors] == [
        "unknown handler 'echo'",
        "unknown handler 'noop'",
    ]


def test_base_registry_is_not_modified(tmp_path: Path, base: HandlerRegistry) -> None:
    write(
        tmp_path / "h.py",
        handler_file("mine"),
    )
    result = load_path(tmp_path, base=base)
    assert "mine" in result.handlers and "mine" not in base


def test_format_errors(tmp_path: Path, base: HandlerRegistry) -> None:
    write(tmp_path / "a.yaml", "name: a\ntasks: [{id: t, handler: ecko}]\n")
    write(tmp_path / "b.py", "raise ValueError('nope')\n")
    result = load_path(tmp_path, base=base)
    assert format_errors(result.errors).splitlines() == [
        f"{tmp_path / 'a.yaml'}, workflow 'a', task 't': unknown handler 'ecko'; "
        "did you mean 'echo'? (registered: echo, fail, http.request, noop, shell)",
        f"{tmp_path / 'b.py'}: line 1: ValueError: nope",
    ]
    assert format_errors([]) == ""


# --------------------------------------------------------------------------- reload


def test_reload_yaml_gives_new_version(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(tmp_path / "simple.yaml", SIMPLE_YAML)
    before = load_path(tmp_path, base=base).workflows["simple"]
    f.write_text(f.read_text().replace("2026-01-01", "2026-02-02"))
    after = load_path(tmp_path, base=base).workflows["simple"]
    assert after.params == {"date": "2026-02-02"}
    assert after.version != before.version


def test_reload_python_same_size_same_second(tmp_path: Path, base: HandlerRegistry) -> None:
    """Stale bytecode must never be used, even when size and mtime are unchanged."""
    code = (
        PY_HEADER + '\nflow = WorkflowSpec(name="flow", tasks=[TaskSpec(id="a", handler="{h}")])\n'
    )
    f = write(tmp_path / "flow.py", code.format(h="echo"))
    stat = f.stat()
    before = load_path(tmp_path, base=base)
    assert before.workflows["flow"].task("a").handler == "echo"

    write(tmp_path / "flow.py", code.format(h="noop"))
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = load_path(tmp_path, base=base)
    assert after.workflows["flow"].task("a").handler == "noop"
    assert after.workflows["flow"].version != before.workflows["flow"].version


def test_reload_python_handler_code(tmp_path: Path, base: HandlerRegistry) -> None:
    write(tmp_path / "h.py", handler_file("h", "return 1"))
    first = load_path(tmp_path, base=base).handlers.get("h")
    write(tmp_path / "h.py", handler_file("h", "return 2"))
    second = load_path(tmp_path, base=base).handlers.get("h")
    assert (first(None), second(None)) == (1, 2)


def test_reload_broken_file_reports_error_and_keeps_module(
    tmp_path: Path, base: HandlerRegistry
) -> None:
    code = (
        PY_HEADER + '\nflow = WorkflowSpec(name="flow", tasks=[TaskSpec(id="a", handler="echo")])\n'
    )
    f = write(tmp_path / "flow.py", code)
    assert load_path(tmp_path, base=base).ok
    (name,) = modules_from(f)
    assert name.startswith(f"{MODULE_PREFIX}.flow_")
    module = sys.modules[name]

    write(tmp_path / "flow.py", code + "\n1 / 0\n")
    result = load_path(tmp_path, base=base)
    (error,) = result.errors
    assert str(error).startswith(f"{f}: line ") and "ZeroDivisionError" in str(error)
    assert result.workflows == {}
    # The previous good module stays registered under its stable name.
    assert sys.modules[name] is module

    write(tmp_path / "flow.py", code.replace('"a"', '"b"'))
    fixed = load_path(tmp_path, base=base)
    assert fixed.ok and fixed.workflows["flow"].tasks[0].id == "b"
    assert modules_from(f) == [name]
    assert sys.modules[name] is not module


def test_reload_broken_yaml(tmp_path: Path, base: HandlerRegistry) -> None:
    f = write(tmp_path / "simple.yaml", SIMPLE_YAML)
    assert load_path(tmp_path, base=base).ok
    f.write_text(SIMPLE_YAML.replace("upstream: [a]", "upstream: [a"))
    result = load_path(tmp_path, base=base)
    assert len(result.errors) == 1 and "invalid YAML" in str(result.errors[0])
    assert result.workflows == {}


# --------------------------------------------------------------------------- examples


def test_examples_load_without_errors(base: HandlerRegistry) -> None:
    result = load_path(EXAMPLES, base=base)
    assert result.ok, format_errors(result.errors)
    assert {"daily_sales", "hello"} <= set(result.workflows)
    assert result.workflow_files["daily_sales"].endswith("daily_sales.yaml")
    assert result.workflow_files["hello"].endswith("hello.py")
    assert "greet" in result.handlers


def test_daily_sales_dag(base: HandlerRegistry) -> None:
    spec = load_path(EXAMPLES, base=base).workflows["daily_sales"]
    assert {t.id: set(t.upstream) for t in spec.tasks} == {
        "extract_crm": set(),
        "extract_erp": set(),
        "join_sources": {"extract_crm", "extract_erp"},
        "validate_data": {"join_sources"},
        "transform_revenue": {"join_sources"},
        "load_warehouse": {"validate_data", "transform_revenue"},
        "notify_team": {"load_warehouse"},
    }
    assert {t.handler for t in spec.tasks} <= {"echo", "noop"}
    assert spec.params["date"] == "2026-01-01"


def _run_with_echo(spec: WorkflowSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Evaluate every task in declaration order (a topological order here) the way
    ``echo`` would: its output is its rendered inputs."""
    needs = needed_outputs(spec)
    outputs: dict[str, Any] = {}
    for task in spec.tasks:
        scope = build_scope(
            params={**spec.params, **params},
            upstream={tid: outputs[tid] for tid in needs[task.id]},
            run_id=7,
            workflow=spec.name,
            logical_date=None,
            task_id=task.id,
            attempt=1,
        )
        outputs[task.id] = render(task.inputs, scope)
    return outputs


def test_daily_sales_templates_flow_through(base: HandlerRegistry) -> None:
    spec = load_path(EXAMPLES, base=base).workflows["daily_sales"]
    out = _run_with_echo(spec, {"date": "2026-03-04"})
    assert out["extract_crm"]["date"] == "2026-03-04"
    assert out["join_sources"]["crm"] == out["extract_crm"]
    assert out["validate_data"]["sources"] == ["crm", "erp"]
    assert out["load_warehouse"]["crm_source"] == "crm"
    assert out["notify_team"]["message"] == (
        "daily_sales 2026-03-04: loaded analytics.sales_emea (run 7)"
    )


def test_examples_leave_no_bytecode_behind(base: HandlerRegistry) -> None:
    load_path(EXAMPLES, base=base)
    assert not (EXAMPLES / "__pycache__").exists()
