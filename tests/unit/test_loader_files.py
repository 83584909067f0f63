"""Loading across files: name clashes, reload, the shipped examples."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from loader_support import (
    EXAMPLES,
    PY_HEADER,
    SIMPLE_YAML,
    handler_file,
    messages,
    modules_from,
    py,
    write,
)

from orchestrator.loader import MODULE_PREFIX, format_errors, load_path
from orchestrator.registry import HandlerRegistry
from orchestrator.spec import WorkflowSpec
from orchestrator.templates import build_scope, render
from orchestrator.validation import needed_outputs

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
        "did you mean 'echo'? (registered: echo, fail, http.request, noop, sensor.callback, "
        "sensor.file, sensor.kafka, sensor.poll, sensor.run, sensor.time, ... (11 in all))",
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
    assert spec.param_defaults == {"date": "2026-01-01", "region": "emea"}


def _run_with_echo(spec: WorkflowSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Evaluate every task in declaration order (a topological order here) the way
    ``echo`` would: its output is its rendered inputs."""
    needs = needed_outputs(spec)
    outputs: dict[str, Any] = {}
    for task in spec.tasks:
        scope = build_scope(
            params={**spec.param_defaults, **params},
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
