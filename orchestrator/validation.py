"""Whole-graph validation of a :class:`~orchestrator.spec.WorkflowSpec`.

Field-level checks run when pydantic builds the spec; this module checks what
needs the whole workflow (and the handler registry): duplicate ids, unknown or
self upstreams, cycles, unknown handlers, inputs that do not fit the handler's
signature (:mod:`orchestrator.handler_inputs`) and template references. Every error
is a :class:`~orchestrator.errors.SpecError` naming file, workflow and task.

:func:`errors_from_pydantic` turns pydantic's ``ValidationError`` into the same
kind of errors, so the loader reports both alike.
"""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.errors import SpecError
from orchestrator.handler_inputs import literal_input_problems
from orchestrator.registry import HandlerRegistry
from orchestrator.spec import IDENTIFIER, RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.templates import (
    OPEN,
    ROOT_FIELDS,
    ROOTS,
    TemplateError,
    referenced_fields,
    referenced_tasks,
)
from orchestrator.trigger_spec import EVENT_ROOTS, TriggerSpec

__all__ = [
    "ancestors",
    "collect_errors",
    "errors_from_pydantic",
    "find_cycles",
    "needed_outputs",
    "validate_workflow",
]

_MAX_LISTED = 10


# --------------------------------------------------------------------------- graph helpers


def _first_by_id(spec: WorkflowSpec) -> dict[str, TaskSpec]:
    """Tasks by id; on a duplicate id the first one wins (the duplicate is an error)."""
    out: dict[str, TaskSpec] = {}
    for task in spec.tasks:
        out.setdefault(task.id, task)
    return out


def _upstream_edges(spec: WorkflowSpec) -> dict[str, tuple[str, ...]]:
    """Known, non-self upstream ids of each task, duplicates dropped."""
    tasks = _first_by_id(spec)
    return {
        tid: tuple(dict.fromkeys(u for u in task.upstream if u in tasks and u != tid))
        for tid, task in tasks.items()
    }


def ancestors(spec: WorkflowSpec) -> dict[str, frozenset[str]]:
    """Transitive upstreams of each task (the task itself excluded, even in a
    cycle). Unknown upstream ids are ignored: they are validation errors."""
    edges = _upstream_edges(spec)
    out: dict[str, frozenset[str]] = {}
    for tid in edges:
        seen: set[str] = set()
        stack = list(edges[tid])
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            stack.extend(edges[node])
        seen.discard(tid)
        out[tid] = frozenset(seen)
    return out


def needed_outputs(spec: WorkflowSpec) -> dict[str, tuple[str, ...]]:
    """For each task, the ids whose outputs it needs: its direct upstreams plus
    every task its input templates reference (``upstream.<id>``), sorted.

    Meant for validated specs; references to ids that are not tasks are dropped.
    """
    tasks = _first_by_id(spec)
    out: dict[str, tuple[str, ...]] = {}
    for tid, task in tasks.items():
        needed = set(task.upstream) | referenced_tasks(task.inputs)
        needed.discard(tid)
        out[tid] = tuple(sorted(n for n in needed if n in tasks))
    return out


def _strongly_connected(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (deep chains must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def find_cycles(spec: WorkflowSpec) -> list[list[str]]:
    """One cycle per strongly connected group of tasks, in run order, closed:
    ``["a", "b", "c", "a"]`` means b waits for a, c for b and a for c. Each
    cycle starts at its first-declared task and is a shortest one through it.
    Self-loops (a task listing itself) are not included.
    """
    upstream = _upstream_edges(spec)
    downstream: dict[str, list[str]] = {tid: [] for tid in upstream}
    for tid, ups in upstream.items():
        for up in ups:
            downstream[up].append(tid)
    order = {tid: i for i, tid in enumerate(upstream)}
    cycles = []
    for component in _strongly_connected(downstream):
        if len(component) < 2:
            continue
        members = set(component)
        start = min(component, key=order.__getitem__)
        # Breadth-first from start along run order, back to start: shortest cycle.
        parent: dict[str, str] = {}
        queue = deque([start])
        last = None
        while queue and last is None:
            node = queue.popleft()
            for nxt in downstream[node]:
                if nxt not in members:
                    continue
                if nxt == start:
                    last = node
                    break
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        assert last is not None  # a strongly connected group of 2+ always cycles
        path = [last]
        while path[-1] != start:
            path.append(parent[path[-1]])
        path.reverse()
        cycles.append([*path, start])
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


# --------------------------------------------------------------------------- validation


def _suggest(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _known_handlers(handlers: HandlerRegistry | Container[str]) -> list[str]:
    if isinstance(handlers, HandlerRegistry):
        return handlers.names()
    if isinstance(handlers, Iterable):
        return sorted(str(name) for name in handlers)
    return []


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


def _template_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """``(path, string)`` for every string holding a template, e.g.
    ``("inputs.headers.Authorization", "Bearer {{ params.token }}")``."""
    if isinstance(value, str):
        if OPEN in value:
            yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _template_strings(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _template_strings(item, f"{path}[{i}]")


def _template_errors(
    task: TaskSpec,
    task_ids: Container[str],
    upstream_of_task: frozenset[str],
    declared: Sequence[str],
    err: _Err,
) -> Iterator[SpecError]:
    for path, text in _template_strings(task.inputs, "inputs"):
        try:
            fields = referenced_fields(text)
        except TemplateError as exc:
            yield TemplateError(
                f"{path}: {exc.message}",
                expression=exc.expression,
                file=err.file,
                workflow=err.workflow,
                task=task.id,
            )
            continue
        for root, key in sorted(fields, key=lambda f: (f[0], f[1] or "")):
            if root not in ROOTS:
                if key is None:
                    yield err(
                        f"{path}: template uses unknown name {root!r}{_suggest(root, ROOTS)} "
                        f"(templates start from {', '.join(sorted(ROOTS))})",
                        task.id,
                    )
            elif key is None:
                continue
            elif root == "params" and declared and key not in declared:
                # Declared params are the only ones a run can have: this one is always null.
                yield err(
                    f"{path}: template uses param {key!r}, which is not declared"
                    f"{_suggest(key, declared)} (declared: {_listing(declared)})",
                    task.id,
                )
            elif root in ROOT_FIELDS and key not in ROOT_FIELDS[root]:
                known = sorted(ROOT_FIELDS[root])
                yield err(
                    f"{path}: template uses unknown field '{root}.{key}'"
                    f"{_suggest(key, known)} ({root} has: {', '.join(known)})",
                    task.id,
                )
            elif root == "upstream":
                if key == task.id:
                    yield err(f"{path}: template references the task's own output", task.id)
                elif key not in task_ids:
                    yield err(
                        f"{path}: template references task {key!r}, which is not a task "
                        "of this workflow",
                        task.id,
                    )
                elif key not in upstream_of_task:
                    yield err(
                        f"{path}: template references task {key!r} which is not upstream of "
                        f"{task.id!r}; add it to upstream (directly or through another task)",
                        task.id,
                    )


class _Err:
    """Makes errors that all name the same file and workflow."""

    def __init__(self, file: str | None, workflow: str) -> None:
        self.file = file
        self.workflow = workflow

    def __call__(self, message: str, task: str | None = None) -> SpecError:
        return SpecError(message, file=self.file, workflow=self.workflow, task=task)


def collect_errors(
    spec: WorkflowSpec,
    handlers: HandlerRegistry | Container[str],
    *,
    file: str | None = None,
) -> list[SpecError]:
    """Every whole-graph problem of ``spec``, in a stable order (empty = valid).

    ``handlers`` is the registry (or any container of names) tasks may use.
    """
    err = _Err(file, spec.name)
    errors: list[SpecError] = []
    tasks = _first_by_id(spec)
    positions: dict[str, list[int]] = {}
    for i, task in enumerate(spec.tasks):
        positions.setdefault(task.id, []).append(i)
    for tid, where in positions.items():
        if len(where) > 1:
            places = ", ".join(f"tasks.{i}" for i in where)
            errors.append(err(f"duplicate task id {tid!r} (at {places})", tid))

    known_handlers: list[str] | None = None
    for task in spec.tasks:
        seen: set[str] = set()
        for up in task.upstream:
            if up == task.id:
                errors.append(err("task lists itself as upstream", task.id))
            elif up in seen:
                errors.append(err(f"upstream {up!r} is listed twice", task.id))
            elif up not in tasks:
                errors.append(
                    err(
                        f"unknown upstream {up!r}: no task with that id in this workflow"
                        f"{_suggest(up, tasks)}",
                        task.id,
                    )
                )
            seen.add(up)
        if isinstance(handlers, HandlerRegistry) and task.handler in handlers:
            for problem in literal_input_problems(handlers.get(task.handler), task.inputs):
                errors.append(err(f"inputs: {problem}", task.id))
        elif task.handler not in handlers:
            if known_handlers is None:
                known_handlers = _known_handlers(handlers)
            known = f" (registered: {_listing(known_handlers)})" if known_handlers else ""
            errors.append(
                err(
                    f"unknown handler {task.handler!r}{_suggest(task.handler, known_handlers)}"
                    f"{known}",
                    task.id,
                )
            )

    for cycle in find_cycles(spec):
        errors.append(err(f"cycle: {' -> '.join(cycle)}", cycle[0]))

    upstream_of = ancestors(spec)
    declared = sorted(spec.params)
    for task in spec.tasks:
        errors.extend(_template_errors(task, tasks, upstream_of[task.id], declared, err))
    for i, trigger in enumerate(spec.triggers):
        errors.extend(_trigger_errors(i, trigger, err))
        errors.extend(_trigger_params_errors(i, trigger, spec, err))
    return errors


def _trigger_params_errors(
    index: int, trigger: TriggerSpec, spec: WorkflowSpec, err: _Err
) -> Iterator[SpecError]:
    """A trigger maps only declared params and every required one; otherwise
    each of its events would be refused."""
    schema = spec.param_schema
    if schema is None:
        return
    where = f"triggers[{index}] ({trigger.source}) params"
    declared = schema.names
    for key in trigger.params:
        if key not in schema.entries:
            yield err(
                f"{where}: {key!r} is not a declared param{_suggest(key, declared)} "
                f"(declared: {_listing(declared)}; add it to the workflow's params)"
            )
    for name, entry in schema.entries.items():
        if entry is not None and entry.required and name not in trigger.params:
            yield err(
                f"{where}: required param {name!r} is not mapped, so every event would be "
                "refused; map it from the event or make it optional"
            )


def _trigger_errors(index: int, trigger: TriggerSpec, err: _Err) -> Iterator[SpecError]:
    """Filters and param mappings may only read the event: payload, headers, meta."""
    where = f"triggers[{index}] ({trigger.source})"
    texts = list(_template_strings(trigger.params, f"{where} params"))
    if trigger.filter is not None:
        if not trigger.filterable:
            yield err(f"{where}: a {trigger.source} has no event to filter; remove 'filter'")
        else:
            texts.append((f"{where} filter", "{{ " + trigger.filter + " }}"))
    for path, text in texts:
        try:
            fields = referenced_fields(text)
        except TemplateError as exc:
            yield SpecError(f"{path}: {exc.message}", file=err.file, workflow=err.workflow)
            continue
        for root in sorted({root for root, _key in fields}):
            if root == "secrets":
                # Rendered params are stored with the run (and its event).
                yield err(
                    f"{path}: secrets cannot be used here: a trigger's params are stored "
                    "with the run; name the secret in the task's inputs instead "
                    "({{ secrets.NAME }})"
                )
            elif root not in EVENT_ROOTS:
                yield err(
                    f"{path}: uses unknown name {root!r}{_suggest(root, EVENT_ROOTS)} "
                    f"(event templates start from {', '.join(sorted(EVENT_ROOTS))})"
                )


def trigger_conflicts(specs: Iterable[WorkflowSpec], files: Mapping[str, str]) -> list[SpecError]:
    """Workflows sharing what a trigger listens on must agree on the settings
    it declares shared (e.g. how a webhook is authenticated)."""
    values: dict[tuple[str, str], dict[str, str]] = {}
    for spec in specs:
        for trigger in spec.triggers:
            shared = trigger.shared_setting()
            if shared is not None:
                values.setdefault((shared.thing, shared.setting), {})[spec.name] = shared.value
    errors = []
    for (thing, setting), by_workflow in sorted(values.items()):
        if len(set(by_workflow.values())) > 1:
            listed = ", ".join(f"{w} uses {a!r}" for w, a in sorted(by_workflow.items()))
            for workflow in sorted(by_workflow):
                errors.append(
                    SpecError(
                        f"{thing} has conflicting {setting} settings: {listed}",
                        file=files.get(workflow),
                        workflow=workflow,
                    )
                )
    return errors


def validate_workflow(
    spec: WorkflowSpec,
    handlers: HandlerRegistry | Container[str],
    *,
    file: str | None = None,
) -> None:
    """Raise the first error :func:`collect_errors` finds (use that for all of them)."""
    errors = collect_errors(spec, handlers, file=file)
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- pydantic errors

_MODELS: dict[str, type[BaseModel]] = {
    "WorkflowSpec": WorkflowSpec,
    "TaskSpec": TaskSpec,
    "RetryPolicy": RetryPolicy,
}


def _model_at(root: type[BaseModel] | None, loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model that holds the last element of ``loc``, following nested specs."""
    model = root
    for part in loc[:-1]:
        if model is None:
            return None
        if model is WorkflowSpec and part == "tasks":
            model = TaskSpec
        elif isinstance(part, int) and model is TaskSpec:
            continue
        elif (model is WorkflowSpec and part == "default_retry") or (
            model is TaskSpec and part == "retry"
        ):
            model = RetryPolicy
        else:
            return None
    return model


def errors_from_pydantic(
    exc: ValidationError,
    data: Any = None,
    *,
    file: str | None = None,
    workflow: str | None = None,
    prefix: str = "",
) -> list[SpecError]:
    """One :class:`SpecError` per pydantic error, e.g.
    ``tasks.2.retry.max_attempts: Input should be greater than or equal to 1``.

    ``data`` is the mapping the spec was built from, when known: it supplies the
    workflow name and maps ``tasks.<index>`` to the task id. ``prefix`` goes
    before each message (the loader passes ``"line 12: "`` for Python files).
    """
    if workflow is None and isinstance(data, Mapping) and isinstance(data.get("name"), str):
        workflow = data["name"]
    raw_tasks = data.get("tasks") if isinstance(data, Mapping) else None
    root = _MODELS.get(exc.title)
    items = exc.errors(include_url=False)
    # When every task is invalid pydantic also says "tasks" is too short: noise.
    task_failed = any(len(i["loc"]) > 1 and i["loc"][0] == "tasks" for i in items)
    out = []
    for item in items:
        loc = item["loc"]
        if task_failed and loc == ("tasks",) and item["type"] == "too_short":
            continue
        task: str | None = None
        if (
            root is WorkflowSpec
            and len(loc) >= 2
            and loc[0] == "tasks"
            and isinstance(loc[1], int)
            and isinstance(raw_tasks, Sequence)
            and not isinstance(raw_tasks, str)
            and 0 <= loc[1] < len(raw_tasks)
        ):
            entry = raw_tasks[loc[1]]
            task_id = (
                entry.get("id")
                if isinstance(entry, Mapping)
                else getattr(entry, "id", None)
                if isinstance(entry, TaskSpec)
                else None
            )
            task = task_id if isinstance(task_id, str) else None
        message = str(item["msg"])
        if (
            item["type"] == "string_pattern_mismatch"
            and (item.get("ctx") or {}).get("pattern") == IDENTIFIER
        ):
            message = (
                f"{item['input']!r} is not a valid name: use letters, digits, '_' and '-', "
                "starting with a letter or '_'"
            )
        if item["type"] == "extra_forbidden" and loc:
            model = _model_at(root, loc)
            if model is not None:
                message += _suggest(str(loc[-1]), model.model_fields)
        path = ".".join(str(part) for part in loc)
        if root is not WorkflowSpec:  # built on its own, e.g. TaskSpec(...) in Python
            path = f"{exc.title}.{path}" if path else exc.title
        out.append(
            SpecError(
                f"{prefix}{path}: {message}" if path else f"{prefix}{message}",
                file=file,
                workflow=workflow,
                task=task,
            )
        )
    return out
