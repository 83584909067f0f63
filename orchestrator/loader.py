"""Load workflows and handlers from a directory or a single file.

Python files (``*.py``) are imported fresh on every load: they contribute the
functions marked with :func:`~orchestrator.registry.handler` and every
module-level :class:`~orchestrator.spec.WorkflowSpec` (also those listed in a
module-level ``WORKFLOWS`` list or tuple). YAML files (``*.yaml``, ``*.yml``)
hold one workflow per document, shaped like ``WorkflowSpec``; ``tasks`` may be
a list of task mappings with ``id`` or a mapping ``{task_id: {...}}``.

Handlers from every Python file are gathered first, so a workflow in one file
may use a handler defined in another; then every workflow is validated against
the caller's ``base`` registry merged with them.

Nothing is half-loaded: a file with any error contributes no workflows (and, if
it failed to import or clashed on a handler name, no handlers), while the other
files load normally. The caller decides what to do with :attr:`LoadResult.errors`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import traceback
import types
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.errors import SpecError
from orchestrator.registry import HANDLER_NAME_ATTR, HandlerFn, HandlerRegistry
from orchestrator.spec import WorkflowSpec
from orchestrator.validation import collect_errors, errors_from_pydantic, trigger_conflicts

__all__ = [
    "PYTHON_SUFFIXES",
    "YAML_SUFFIXES",
    "LoadResult",
    "LoadedFile",
    "format_errors",
    "load_path",
]

PYTHON_SUFFIXES = frozenset({".py"})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})

#: Parent name of the modules user files are imported as (never imported itself).
MODULE_PREFIX = "orchestrator_user"


@dataclass
class LoadedFile:
    """What one file contributed. ``workflows`` is empty when it has errors."""

    path: str
    workflows: list[WorkflowSpec] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    """Names of the handlers this file registered."""
    error: SpecError | None = None
    """The file's first error, if any (all of them are in ``errors``)."""
    errors: list[SpecError] = field(default_factory=list)


@dataclass
class LoadResult:
    workflows: dict[str, WorkflowSpec]
    """Valid workflows by name, from files without errors."""
    handlers: HandlerRegistry
    """``base`` merged with every handler loaded (what the workflows were checked against)."""
    files: list[LoadedFile]
    errors: list[SpecError]
    """Every error, each naming its file."""
    workflow_files: dict[str, str]
    """Workflow name -> the file that defines it."""

    @property
    def ok(self) -> bool:
        return not self.errors


# --------------------------------------------------------------------------- discovery


def _skipped(name: str) -> bool:
    return name.startswith(("_", "."))


def _discover(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        for name in sorted(filenames):
            suffix = os.path.splitext(name)[1]
            if not _skipped(name) and suffix in PYTHON_SUFFIXES | YAML_SUFFIXES:
                found.append(Path(dirpath, name))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


# --------------------------------------------------------------------------- python files


class _FreshSourceLoader(SourceFileLoader):
    """Compiles from source every time, never through ``__pycache__``: a file
    rewritten within the same second at the same size must not run stale
    bytecode, and user folders stay free of cache files."""

    def get_code(self, fullname: str) -> types.CodeType:
        source = self.get_data(self.path)
        return compile(source, self.path, "exec", dont_inherit=True)


def _module_name(path: Path, rel: str) -> str:
    # Stable per file, so a reload replaces the previous module instead of piling up.
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:10]
    stem = re.sub(r"\W", "_", os.path.splitext(rel)[0])
    return f"{MODULE_PREFIX}.{stem}_{digest}"


def _error_line(exc: BaseException, filename: str) -> int | None:
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        return exc.lineno
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


def _import_errors(exc: BaseException, filename: str, display: str) -> list[SpecError]:
    line = _error_line(exc, filename)
    where = f"line {line}: " if line else ""
    if isinstance(exc, ValidationError):
        return errors_from_pydantic(exc, file=display, prefix=where)
    if isinstance(exc, SyntaxError):
        detail = exc.msg
    else:
        text = str(exc)
        detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return [SpecError(f"{where}{detail}", file=display)]


def _import(path: Path, rel: str, display: str) -> tuple[types.ModuleType | None, list[SpecError]]:
    filename = os.fspath(path.resolve())
    name = _module_name(Path(filename), rel)
    loader = _FreshSourceLoader(name, filename)
    spec = importlib.util.spec_from_file_location(name, filename, loader=loader)
    if spec is None:  # pragma: no cover - only for paths importlib cannot handle
        return None, [SpecError("cannot be imported as a Python module", file=display)]
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    # In sys.modules while it runs, as for a normal import (dataclasses and
    # pydantic look their module up there).
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        return None, _import_errors(exc, filename, display)
    return module, []


def _module_handlers(module: types.ModuleType) -> list[tuple[str, HandlerFn]]:
    return [
        (name, value)
        for value in vars(module).values()
        if isinstance(name := getattr(value, HANDLER_NAME_ATTR, None), str) and callable(value)
    ]


def _module_workflows(
    module: types.ModuleType, display: str
) -> tuple[list[WorkflowSpec], list[SpecError]]:
    candidates: list[WorkflowSpec] = [
        v for v in vars(module).values() if isinstance(v, WorkflowSpec)
    ]
    errors = []
    listed = vars(module).get("WORKFLOWS")
    if listed is not None:
        if isinstance(listed, list | tuple):
            for i, item in enumerate(listed):
                if isinstance(item, WorkflowSpec):
                    candidates.append(item)
                else:
                    errors.append(
                        SpecError(
                            f"WORKFLOWS[{i}] is not a WorkflowSpec (got {type(item).__name__})",
                            file=display,
                        )
                    )
        else:
            errors.append(
                SpecError(
                    f"WORKFLOWS must be a list or tuple of WorkflowSpec, "
                    f"got {type(listed).__name__}",
                    file=display,
                )
            )
    return _unique_names(candidates, display, errors)


def _unique_names(
    candidates: Iterable[WorkflowSpec], display: str, errors: list[SpecError]
) -> tuple[list[WorkflowSpec], list[SpecError]]:
    """Drop repeats of the same spec; two different specs with one name is an error."""
    by_name: dict[str, WorkflowSpec] = {}
    for spec in candidates:
        seen = by_name.get(spec.name)
        if seen is None:
            by_name[spec.name] = spec
        elif seen is not spec and seen != spec:
            errors.append(
                SpecError(
                    "two different workflows with this name in one file",
                    file=display,
                    workflow=spec.name,
                )
            )
    return list(by_name.values()), errors


# --------------------------------------------------------------------------- yaml files


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML, plus: duplicate keys are errors (a repeated task id in the
    ``tasks:`` mapping form must not silently replace the first), and dates stay
    strings (params and inputs are JSON)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_error(exc: yaml.YAMLError, display: str) -> SpecError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or "syntax error"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        return SpecError(f"{where}invalid YAML: {problem}{context}", file=display)
    return SpecError(f"invalid YAML: {exc}", file=display)


def _yaml_workflow(doc: dict[Any, Any], display: str, label: str) -> WorkflowSpec | list[SpecError]:
    data = dict(doc)
    name = data.get("name") if isinstance(data.get("name"), str) else None
    tasks = data.get("tasks")
    if isinstance(tasks, dict):
        as_list = []
        for task_id, body in tasks.items():
            body = {} if body is None else body
            if not isinstance(body, dict):
                return [
                    SpecError(
                        f"{label}tasks.{task_id}: expected a mapping of task fields, "
                        f"got {type(body).__name__}",
                        file=display,
                        workflow=name,
                        task=str(task_id),
                    )
                ]
            if "id" in body and body["id"] != task_id:
                return [
                    SpecError(
                        f"{label}tasks.{task_id}: id {body['id']!r} differs from its key",
                        file=display,
                        workflow=name,
                        task=str(task_id),
                    )
                ]
            as_list.append({"id": task_id, **body})
        data["tasks"] = as_list
    try:
        return WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        return errors_from_pydantic(exc, data, file=display, prefix=label)


def _load_yaml(path: Path, display: str) -> tuple[list[WorkflowSpec], list[SpecError]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [SpecError(f"cannot read: {exc}", file=display)]
    try:
        docs = [doc for doc in yaml.load_all(text, Loader=_YamlLoader) if doc is not None]
    except yaml.YAMLError as exc:
        return [], [_yaml_error(exc, display)]
    specs: list[WorkflowSpec] = []
    errors: list[SpecError] = []
    for i, doc in enumerate(docs, start=1):
        label = f"document {i}: " if len(docs) > 1 else ""
        if not isinstance(doc, dict):
            errors.append(
                SpecError(
                    f"{label}expected a mapping with 'name' and 'tasks', got {type(doc).__name__}",
                    file=display,
                )
            )
            continue
        result = _yaml_workflow(doc, display, label)
        if isinstance(result, WorkflowSpec):
            specs.append(result)
        else:
            errors.extend(result)
    return _unique_names(specs, display, errors)


# --------------------------------------------------------------------------- load_path


@dataclass
class _Pending:
    loaded: LoadedFile
    specs: list[WorkflowSpec] = field(default_factory=list)
    handlers: list[tuple[str, HandlerFn]] = field(default_factory=list)

    def fail(self, errors: Iterable[SpecError]) -> None:
        self.loaded.errors.extend(errors)


def _read_file(path: Path, rel: str, display: str) -> _Pending:
    pending = _Pending(LoadedFile(display))
    if path.suffix in YAML_SUFFIXES:
        specs, errors = _load_yaml(path, display)
    else:
        module, errors = _import(path, rel, display)
        specs = []
        if module is not None:
            pending.handlers = _module_handlers(module)
            specs, errors = _module_workflows(module, display)
    pending.specs = specs
    pending.fail(errors)
    return pending


def load_path(path: str | Path, *, base: HandlerRegistry | None = None) -> LoadResult:
    """Load every workflow and handler under ``path`` (a directory, searched
    recursively, or one ``.py``/``.yaml``/``.yml`` file). Names starting with
    ``_`` or ``.`` are skipped. Never raises for a bad file: see ``errors``.
    """
    root = Path(path)
    registry = (base or HandlerRegistry()).merged(HandlerRegistry())
    pending: list[_Pending] = []
    if root.is_dir():
        for file in _discover(root):
            rel = file.relative_to(root).as_posix()
            pending.append(_read_file(file, rel, str(file)))
    elif root.is_file() and root.suffix in PYTHON_SUFFIXES | YAML_SUFFIXES:
        pending.append(_read_file(root, root.name, str(root)))
    else:
        reason = (
            "not a workflow file (expected .py, .yaml or .yml)"
            if root.exists()
            else "no such file or directory"
        )
        error = SpecError(reason, file=str(root))
        return LoadResult(
            {}, registry, [LoadedFile(str(root), error=error, errors=[error])], [error], {}
        )

    # 1. Handlers from every file that imported, so workflows may use any of them.
    for item in pending:
        if item.loaded.errors or not item.handlers:
            continue
        trial = registry.merged(HandlerRegistry())
        try:
            for name, fn in item.handlers:
                trial.register(name, fn, origin=item.loaded.path)
        except SpecError as exc:
            item.fail([SpecError(exc.message, file=item.loaded.path)])
            continue
        registry = trial
        item.loaded.handlers = sorted({name for name, _ in item.handlers})

    # 2. One definition per workflow name across files: the first file keeps it.
    defined_in: dict[str, str] = {}
    for item in pending:
        for spec in item.specs:
            first = defined_in.setdefault(spec.name, item.loaded.path)
            if first != item.loaded.path:
                item.fail(
                    [
                        SpecError(
                            f"workflow is defined in both {first} and {item.loaded.path}",
                            file=item.loaded.path,
                            workflow=spec.name,
                        )
                    ]
                )

    # 3. Whole-graph validation against base + every loaded handler.
    for item in pending:
        for spec in item.specs:
            item.fail(collect_errors(spec, registry, file=item.loaded.path))

    # 4. Checks across workflows: a shared webhook must be authenticated one way.
    files_by_workflow = {spec.name: item.loaded.path for item in pending for spec in item.specs}
    specs_ok = [spec for item in pending if not item.loaded.errors for spec in item.specs]
    for conflict in trigger_conflicts(specs_ok, files_by_workflow):
        for item in pending:
            if item.loaded.path == conflict.file:
                item.fail([conflict])

    workflows: dict[str, WorkflowSpec] = {}
    workflow_files: dict[str, str] = {}
    errors: list[SpecError] = []
    for item in pending:
        loaded = item.loaded
        if loaded.errors:
            loaded.error = loaded.errors[0]
            errors.extend(loaded.errors)
            continue
        loaded.workflows = list(item.specs)
        for spec in item.specs:
            workflows[spec.name] = spec
            workflow_files[spec.name] = loaded.path
    return LoadResult(
        workflows=workflows,
        handlers=registry,
        files=[item.loaded for item in pending],
        errors=errors,
        workflow_files=workflow_files,
    )


def format_errors(errors: Iterable[SpecError]) -> str:
    """One line per error (``file, workflow 'w', task 't': message``), for the CLI."""
    return "\n".join(error.describe() for error in errors)
