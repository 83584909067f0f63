"""What a handler accepts as inputs, derived from its signature with pydantic.

A handler is called as ``fn(ctx, **inputs)``. Its keyword parameters after the
context, with their annotations and defaults, are its input model: which names
it takes (any, with ``**kwargs``), which are required, and what JSON each one
must hold. The same model is checked twice:

- at load time (:func:`literal_input_problems`, from ``orchestrator validate``
  and every load of a workflow folder) against a task's inputs as written:
  unknown names and literal values of the wrong type. A value holding a
  template is only known when the task runs, so it is left to the run-time
  check;
- at run time (:func:`input_problems`, by the worker before each call) against
  the rendered inputs, missing required names included. A problem there fails
  the task at once: no retry can change the inputs.

Values are checked in pydantic's strict JSON mode: the JSON type must match
(``"5"`` is not an ``int``, ``1`` is a ``float``, ``true`` is not a number),
while a string may stand for a type JSON lacks (a ``datetime``, a ``date``).
The handler still receives the inputs as they are, unconverted. Parameters
without an annotation, annotated ``Any``, or with a type pydantic cannot
describe accept anything.
"""

from __future__ import annotations

import difflib
import inspect
import typing
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from orchestrator.templates import has_templates

__all__ = [
    "ByteCount",
    "InputModel",
    "PositiveSeconds",
    "Seconds",
    "input_model",
    "input_problems",
    "literal_input_problems",
]

#: Annotations handlers use for common inputs (JSON has no infinity or NaN).
Seconds = Annotated[float, Field(ge=0)]
"""A duration in seconds, zero or more."""
PositiveSeconds = Annotated[float, Field(gt=0)]
"""A duration in seconds, more than zero (a timeout, an interval)."""
ByteCount = Annotated[int, Field(ge=0)]
"""A size in bytes, zero or more."""


@dataclass(frozen=True, slots=True)
class InputModel:
    """A handler's inputs: every name it takes and how each value is checked."""

    names: tuple[str, ...]
    """Keyword parameters after the context, in declaration order."""
    required: frozenset[str]
    open: bool
    """Takes any other name too (``**kwargs``)."""
    checked: Mapping[str, TypeAdapter[Any]]
    """Validators of the parameters whose annotation says something (not ``Any``)."""
    takes_context: bool = True
    """False when the function has no parameter to receive the context."""

    def problems(self, inputs: Mapping[str, Any], *, literal_only: bool = False) -> list[str]:
        """What is wrong with ``inputs`` (empty: the call binds and every value
        checked fits), each naming the argument. With ``literal_only`` (a task's
        inputs as written) only unknown names and literal values are checked:
        values holding a template are left to the call."""
        found: list[str] = []
        if not self.takes_context:
            found.append("the handler takes no argument for the task context")
        if not self.open:
            for key in inputs:
                if key not in self.names:
                    close = difflib.get_close_matches(key, self.names, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    found.append(f"unexpected argument {key!r}{hint}")
        if not literal_only:
            found += [
                f"missing argument {name!r}"
                for name in self.names
                if name in self.required and name not in inputs
            ]
        for name, adapter in self.checked.items():
            if name not in inputs:
                continue
            value = inputs[name]
            if literal_only and has_templates(value):
                continue
            found += _value_problems(name, adapter, value)
        return found


def _value_problems(name: str, adapter: TypeAdapter[Any], value: Any) -> list[str]:
    try:
        data = orjson.dumps(value)
    except TypeError:
        return []  # not JSON (a Python-built spec): the handler gets it as it is
    try:
        adapter.validate_json(data, strict=True)
    except ValidationError as exc:
        return [_describe(name, error) for error in _first_errors(exc)]
    return []


def _first_errors(exc: ValidationError) -> list[Any]:
    """The errors worth reading. A union reports every branch that failed:
    keep one error per place, and drop an error about a whole value when
    another one points inside it (``command[1]`` says more than ``command``)."""
    errors = exc.errors(include_url=False)
    places = [_place(error) for error in errors]
    out = []
    seen: set[tuple[Any, ...]] = set()
    for error, place in zip(errors, places, strict=True):
        deeper = any(len(other) > len(place) and other[: len(place)] == place for other in places)
        if place in seen or deeper:
            continue
        seen.add(place)
        out.append(error)
    return out[:3]


def _place(error: Any) -> tuple[Any, ...]:
    return tuple(p for p in error["loc"] if isinstance(p, int) or not _is_branch_label(str(p)))


def _describe(name: str, error: Any) -> str:
    path = name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in _place(error))
    given = error.get("input")
    return f"argument {path!r}: {error['msg']}, got {_shape(given)}"


def _is_branch_label(part: str) -> bool:
    # pydantic labels union branches with their type: 'str', 'list[str]', 'int', ...
    return part in {"str", "int", "float", "bool", "none", "dict", "list"} or "[" in part


def _shape(value: Any) -> str:
    """What was given, without echoing strings (an input may hold a secret)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return None
    try:
        return TypeAdapter(annotation)
    except Exception:  # a type pydantic cannot describe: accept anything
        return None


def _build(fn: Callable[..., Any]) -> InputModel | None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to inspect (some builtins)
        return None
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation that does not resolve: check names only
        hints = {}
    params = list(signature.parameters.values())
    takes_context = bool(params) and (
        params[0].kind
        in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD, params[0].VAR_POSITIONAL)
    )
    if takes_context and params[0].kind is not params[0].VAR_POSITIONAL:
        params = params[1:]
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    checked: dict[str, TypeAdapter[Any]] = {}
    for p in named:
        annotation = hints.get(p.name, p.annotation)
        adapter = _adapter(annotation)
        if adapter is not None:
            checked[p.name] = adapter
    return InputModel(
        names=tuple(p.name for p in named),
        required=frozenset(p.name for p in named if p.default is p.empty),
        open=any(p.kind is p.VAR_KEYWORD for p in params),
        checked=checked,
        takes_context=takes_context,
    )


_cache: weakref.WeakKeyDictionary[Callable[..., Any], InputModel | None] = (
    weakref.WeakKeyDictionary()
)


def input_model(fn: Callable[..., Any]) -> InputModel | None:
    """The input model of handler ``fn`` (None when its signature cannot be
    inspected: then any inputs are accepted). Built once per function."""
    try:
        return _cache[fn]
    except KeyError:
        pass
    except TypeError:  # not weakly referenceable: build it every time
        return _build(fn)
    model = _cache[fn] = _build(fn)
    return model


def input_problems(fn: Callable[..., Any], inputs: Mapping[str, Any]) -> list[str]:
    """Why ``fn(ctx, **inputs)`` must not be called, each naming the argument."""
    model = input_model(fn)
    return [] if model is None else model.problems(inputs)


def literal_input_problems(fn: Callable[..., Any], inputs: Mapping[str, Any]) -> list[str]:
    """As :func:`input_problems` for a task's inputs as written: values holding
    a template count as given and are checked only when the task runs."""
    model = input_model(fn)
    return [] if model is None else model.problems(inputs, literal_only=True)
