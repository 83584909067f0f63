"""Input templates: ``{{ expr }}`` inside task inputs, where ``expr`` is JMESPath.

Expressions are evaluated (never ``eval``-ed) against a scope built by
:func:`build_scope`::

    {"params": {...}, "upstream": {task_id: output, ...},
     "run": {"id": 7, "workflow": "daily_sales", "logical_date": "2026-01-01T00:00:00+00:00",
             "interval_start": "2026-01-01T00:00:00+00:00",
             "interval_end": "2026-01-02T00:00:00+00:00"},
     "task": {"id": "load", "attempt": 1},
     "secrets": {name: value, ...}}

``secrets`` holds only the secrets the task's inputs name, resolved by the
worker for each attempt (:mod:`orchestrator.secrets`).

Rendering rules (:func:`render`):

* dicts and lists are rendered recursively (dict keys are left as they are;
  tuples come back as lists);
* a string that is exactly one template, surrounding whitespace allowed, becomes
  the expression's raw value and keeps its JSON type (``"{{ upstream.a.rows }}"``
  may give a list, an int, or ``None`` when the path is missing);
* a string with text around its templates is interpolated: strings are inserted
  as they are, everything else as compact JSON (``None`` -> ``null``,
  ``True`` -> ``true``, ``[1, 2]`` -> ``[1,2]``);
* strings without ``{{`` come back unchanged, at the cost of one substring test;
  a literal ``{{`` is written as a template of a string literal: ``{{ '{{' }}``.

Parsing is cached per distinct string, so rendering on the hot path only
evaluates already-compiled expressions.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jmespath
import orjson
from jmespath.exceptions import JMESPathError
from jmespath.functions import Functions
from jmespath.parser import ParsedResult
from jmespath.visitor import TreeInterpreter

from orchestrator.errors import SpecError

__all__ = [
    "ROOTS",
    "ROOT_FIELDS",
    "Renderer",
    "TemplateError",
    "build_scope",
    "has_templates",
    "parse_templates",
    "referenced_fields",
    "referenced_roots",
    "referenced_tasks",
    "render",
    "renderer",
]

OPEN = "{{"
CLOSE = "}}"

#: The names a template may start from.
ROOTS = frozenset({"params", "upstream", "run", "task", "secrets"})

#: Known keys of the fixed-shape roots (``params`` and ``upstream`` are open-ended).
ROOT_FIELDS: Mapping[str, frozenset[str]] = {
    "run": frozenset({"id", "workflow", "logical_date", "interval_start", "interval_end"}),
    "task": frozenset({"id", "attempt"}),
}

_KNOWN_FUNCTIONS = frozenset(Functions.FUNCTION_TABLE)

# Stateless once built; ParsedResult.search would build a new one per call.
_INTERPRETER = TreeInterpreter()


class TemplateError(SpecError):
    """A template is malformed, or evaluating it failed."""

    def __init__(
        self,
        message: str,
        *,
        expression: str | None = None,
        file: str | None = None,
        workflow: str | None = None,
        task: str | None = None,
    ) -> None:
        self.expression = expression
        super().__init__(message, file=file, workflow=workflow, task=task)


@dataclass(frozen=True, slots=True)
class _Expr:
    source: str
    compiled: ParsedResult
    fields: tuple[str, ...] | None
    """For a plain field chain (``params.date``, ``upstream."a-b".rows``, the
    common case) the keys to follow, evaluated without the interpreter."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    parts: tuple[str | _Expr, ...]
    whole: _Expr | None
    """Set when the string is one template and nothing else but whitespace."""


# --------------------------------------------------------------------------- scope

_NO_SECRETS: Mapping[str, str] = {}


def build_scope(
    *,
    params: Mapping[str, Any],
    upstream: Mapping[str, Any],
    run_id: int,
    workflow: str,
    task_id: str,
    attempt: int,
    logical_date: datetime | None = None,
    interval_end: datetime | None = None,
) -> dict[str, Any]:
    """The scope :func:`render` evaluates a task's input templates against (the
    worker builds every attempt's scope here). Its fixed-shape roots hold exactly
    the keys of :data:`ROOT_FIELDS`; dates are ISO 8601 strings, or ``None`` for
    a run without a logical date. ``run.interval_start`` is the logical date."""
    start = logical_date.isoformat() if logical_date is not None else None
    return {
        "params": params,
        "upstream": upstream,
        "run": {
            "id": run_id,
            "workflow": workflow,
            "logical_date": start,
            "interval_start": start,
            "interval_end": interval_end.isoformat() if interval_end is not None else None,
        },
        "task": {"id": task_id, "attempt": attempt},
        "secrets": _NO_SECRETS,  # the worker sets the secrets the task names
    }


# --------------------------------------------------------------------------- parsing


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    if not lines:
        return type(exc).__name__
    # jmespath appends the expression and a caret on the next lines; we quote it already.
    return lines[0].removesuffix(", for expression:").removesuffix(":")


def _check_functions(node: Any, expression: str) -> None:
    if not isinstance(node, dict):
        return
    name = node.get("value")
    if node.get("type") == "function_expression" and name not in _KNOWN_FUNCTIONS:
        close = difflib.get_close_matches(str(name), sorted(_KNOWN_FUNCTIONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TemplateError(
            f"template {{{{ {expression} }}}} calls unknown function {name!r}{hint}",
            expression=expression,
        )
    for child in node.get("children", ()):
        _check_functions(child, expression)


@lru_cache(maxsize=4096)
def _compile(expression: str) -> ParsedResult:
    """Compile one expression (already stripped). Raises :class:`TemplateError`."""
    if not expression:
        raise TemplateError("empty template {{ }}", expression=expression)
    try:
        compiled = jmespath.compile(expression)
    except JMESPathError as exc:
        raise TemplateError(
            f"invalid template expression {expression!r}: {_first_line(exc)}",
            expression=expression,
        ) from exc
    _check_functions(compiled.parsed, expression)
    return compiled


def _field_chain(node: Any) -> tuple[str, ...] | None:
    if node.get("type") == "field":
        return (str(node["value"]),)
    if node.get("type") == "subexpression":
        keys = [c.get("value") for c in node["children"] if c.get("type") == "field"]
        if len(keys) == len(node["children"]):
            return tuple(str(k) for k in keys)
    return None


@lru_cache(maxsize=8192)
def _parse(text: str) -> _Parsed:
    parts: list[str | _Expr] = []
    pos = 0
    while True:
        start = text.find(OPEN, pos)
        if start < 0:
            if pos < len(text):
                parts.append(text[pos:])
            break
        if start > pos:
            parts.append(text[pos:start])
        # An expression may itself hold "}}" (nested multi-select hashes, string
        # literals): take the first closing "}}" whose content compiles, and
        # report the shortest candidate when none does.
        end = text.find(CLOSE, start + 2)
        if end < 0:
            snippet = text[start : start + 40]
            raise TemplateError(
                f"unclosed template: {snippet!r} has no closing '}}}}'", expression=None
            )
        first_error: TemplateError | None = None
        expr: _Expr | None = None
        while end >= 0:
            source = text[start + 2 : end].strip()
            try:
                compiled = _compile(source)
                expr = _Expr(source, compiled, _field_chain(compiled.parsed))
                break
            except TemplateError as exc:
                first_error = first_error or exc
                end = text.find(CLOSE, end + 1)
        if expr is None:
            assert first_error is not None
            raise first_error
        parts.append(expr)
        pos = end + 2
    exprs = [p for p in parts if isinstance(p, _Expr)]
    only_space = all(isinstance(p, _Expr) or not p.strip() for p in parts)
    whole = exprs[0] if len(exprs) == 1 and only_space else None
    return _Parsed(tuple(parts), whole)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _expressions(value: Any) -> Iterator[_Expr]:
    for text in _strings(value):
        if OPEN in text:
            for part in _parse(text).parts:
                if isinstance(part, _Expr):
                    yield part


def has_templates(value: Any) -> bool:
    """Whether any string inside ``value`` contains ``{{`` (no parsing)."""
    return any(OPEN in text for text in _strings(value))


def parse_templates(value: Any) -> list[str]:
    """Every template expression inside ``value``, in order, stripped.

    Raises :class:`TemplateError` naming the bad expression on a syntax error,
    an unclosed ``{{`` or an unknown function.
    """
    return [expr.source for expr in _expressions(value)]


# --------------------------------------------------------------------------- references

# A path is where a node's input sits relative to the scope: () is the scope
# itself, ("upstream",) the upstream mapping, ("upstream", "a") task a's output.
# None means "somewhere we do not track" (a projected element, a function
# result, ...). Only the first two levels matter for validation.
_Path = tuple[str, ...] | None


def _walk(node: Any, at: _Path, found: set[tuple[str, str | None]]) -> _Path:
    if not isinstance(node, dict):  # slice bounds are plain ints
        return None
    kind = node.get("type")
    children: list[Any] = node.get("children", [])
    if kind == "field":
        if at is None or len(at) >= 2:
            return None
        path = (*at, str(node["value"]))
        found.add((path[0], path[1] if len(path) == 2 else None))
        return path
    if kind in ("current", "identity"):
        return at
    if kind in ("subexpression", "index_expression", "pipe"):
        # Each child is evaluated against the previous child's result.
        for child in children:
            at = _walk(child, at, found)
        return at
    if kind in ("projection", "value_projection", "filter_projection"):
        # The left side reads from the current value; the rest runs per element.
        _walk(children[0], at, found)
        for child in children[1:]:
            _walk(child, None, found)
        return None
    if kind == "expref":
        for child in children:
            _walk(child, None, found)
        return None
    if kind == "key_val_pair":
        return _walk(children[0], at, found)
    # comparator, and/or/not, function arguments, multi-selects, flatten: every
    # child reads from the current value; the result is something new.
    for child in children:
        _walk(child, at, found)
    return None


@lru_cache(maxsize=4096)
def _fields_of(expression: str) -> frozenset[tuple[str, str | None]]:
    found: set[tuple[str, str | None]] = set()
    _walk(_compile(expression).parsed, (), found)
    return frozenset(found)


def referenced_fields(value: Any) -> set[tuple[str, str | None]]:
    """What the templates in ``value`` read from the scope: ``(root, None)`` for
    every root name used, plus ``(root, key)`` for each key read directly under
    a root, e.g. ``("upstream", "a")`` or ``("params", "date")``.
    """
    out: set[tuple[str, str | None]] = set()
    for expr in _expressions(value):
        out |= _fields_of(expr.source)
    return out


def referenced_roots(value: Any) -> set[str]:
    """Top-level names the templates in ``value`` start from (valid: :data:`ROOTS`)."""
    return {root for root, _ in referenced_fields(value)}


def referenced_tasks(value: Any) -> set[str]:
    """Task ids whose outputs the templates in ``value`` read as ``upstream.<id>``
    (``upstream."quoted-id"``, ``upstream.[a, b]``, ``upstream.a[0].x`` ... included).

    A whole-mapping use such as ``{{ upstream }}`` or ``{{ upstream.* }}`` names no
    task: it sees whatever outputs the task was given (its direct upstreams).
    """
    return {key for root, key in referenced_fields(value) if root == "upstream" and key}


# --------------------------------------------------------------------------- rendering


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # e.g. an int beyond 64 bits
        return json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)


def _search(expr: _Expr, scope: Mapping[str, Any]) -> Any:
    if expr.fields is not None:
        # Same semantics as JMESPath field access: a key of an object, else null.
        value: Any = scope
        for key in expr.fields:
            try:
                value = value.get(key)
            except AttributeError:
                return None
        return value
    try:
        return _INTERPRETER.visit(expr.compiled.parsed, scope)
    except JMESPathError as exc:
        task = scope.get("task")
        task_id = task.get("id") if isinstance(task, Mapping) else None
        raise TemplateError(
            f"template {{{{ {expr.source} }}}} failed: {_first_line(exc)}",
            expression=expr.source,
            task=task_id if isinstance(task_id, str) else None,
        ) from exc


def _render_str(text: str, scope: Mapping[str, Any]) -> Any:
    parsed = _parse(text)
    if parsed.whole is not None:
        return _search(parsed.whole, scope)
    return "".join(
        part if isinstance(part, str) else _to_text(_search(part, scope)) for part in parsed.parts
    )


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render every template inside ``value`` against ``scope`` (see module docs).

    Raises :class:`TemplateError` on a malformed template or when evaluation
    fails (e.g. a JMESPath function given the wrong type).
    """
    if isinstance(value, str):
        return _render_str(value, scope) if OPEN in value else value
    if isinstance(value, Mapping):
        return {key: render(item, scope) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item, scope) for item in value]
    return value


Renderer = Callable[[Mapping[str, Any]], Any]


def renderer(value: Any) -> Renderer:
    """``render(value, scope)`` as a function of ``scope``, with ``value``
    walked once, here: for a template used again and again (a trigger's params
    mapping, for every event). A malformed template still raises when called."""
    if isinstance(value, str):
        if OPEN not in value:
            return lambda scope: value
        try:
            whole = _parse(value).whole
        except TemplateError:
            whole = None
        if whole is not None:
            return lambda scope: _search(whole, scope)
        return lambda scope: _render_str(value, scope)
    if isinstance(value, Mapping):
        items = [(key, renderer(item)) for key, item in value.items()]
        return lambda scope: {key: render_item(scope) for key, render_item in items}
    if isinstance(value, list | tuple):
        each = [renderer(item) for item in value]
        return lambda scope: [render_item(scope) for render_item in each]
    return lambda scope: value
