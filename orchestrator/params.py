"""Declared run params: which params a workflow accepts, their types and defaults.

A workflow's ``params`` maps each param name to one of two things:

* a **plain default** (``region: emea``): the param takes any value and falls
  back to this one when not given;
* a **schema entry**: a mapping with at least one of the keys ``type``,
  ``enum``, ``default`` or ``required``, e.g. ``limit: {type: integer,
  minimum: 1, default: 10}``. Such a mapping may use only the keywords of
  :class:`ParamSpec`; an unknown one is an error, never a silent default.

The rule looks only at the keys, so it is never ambiguous: a default that is
itself a mapping with one of those keys is written as a schema entry,
``options: {default: {type: full}}``.

A workflow that declares params accepts only those: an undeclared param, a
value of the wrong type, or a missing required param refuses the run with a
:class:`~orchestrator.errors.ParamsError` naming each param. For a typed
param, ``null`` counts as not given (so its default applies, or a required
param is missing): a trigger template over a missing event field renders
``null``. A workflow that declares no params accepts any.

Values are checked by a pydantic model built once per workflow version
(:func:`pydantic.create_model`), strictly: ``"10"`` is not an integer.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import cached_property
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.errors import ParamsError

__all__ = [
    "KEYWORDS",
    "MARKERS",
    "ParamSpec",
    "ParamsSchema",
    "build_schema",
    "compact",
    "is_schema_entry",
    "parse_entry",
    "schema_entry_error",
]

ParamType = Literal["string", "integer", "number", "boolean", "array", "object"]

#: A mapping with one of these keys is a schema entry, not a default value.
MARKERS = frozenset({"type", "enum", "default", "required"})

_SHOWN = 60  # longest value quoted in an error message


def _show(value: Any) -> str:
    text = orjson.dumps(value, default=repr).decode()
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _listing(values: Sequence[Any]) -> str:
    return ", ".join(_show(v) for v in values)


def _suggest(name: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


class ParamSpec(BaseModel):
    """The schema of one param: a small, JSON-Schema-like set of keywords."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ParamType | None = None
    """JSON type of the value; unset accepts any JSON value."""
    format: Literal["date", "date-time"] | None = None
    """With ``type: string``: ``date`` is ``YYYY-MM-DD``, ``date-time`` ISO 8601."""
    enum: list[Any] | None = Field(default=None, min_length=1)
    """The only values allowed."""
    default: Any = None
    """Used when the param is not given (or given as null)."""
    required: StrictBool = False
    """The run is refused when the param is not given (or given as null)."""
    description: StrictStr = ""
    """What the param means; shown by ``orchestrator workflows`` and in errors."""
    minimum: float | None = None
    """With ``type: integer`` or ``number``: the smallest value allowed."""
    maximum: float | None = None
    """With ``type: integer`` or ``number``: the largest value allowed."""
    pattern: StrictStr | None = None
    """With ``type: string``: a regular expression the value must contain
    (searched, as in JSON Schema: anchor it with ``^…$`` to match it whole)."""

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.required and self.has_default:
            raise ValueError("a required param cannot have a default: drop one of them")
        if self.format is not None and self.type != "string":
            raise ValueError("'format' applies to strings: add type: string")
        if self.pattern is not None:
            if self.type != "string":
                raise ValueError("'pattern' applies to strings: add type: string")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"'pattern' is not a valid regular expression: {exc}") from None
        bounds = [k for k in ("minimum", "maximum") if getattr(self, k) is not None]
        if bounds and self.type not in ("integer", "number"):
            raise ValueError(f"{bounds[0]!r} applies to numbers: add type: integer or number")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum:g} is above maximum {self.maximum:g}")
        adapter = TypeAdapter(self.annotation(with_enum=False))
        for value in self.enum or ():
            problem = _first_problem(adapter, value)
            if problem:
                raise ValueError(f"enum value {_show(value)} {problem}")
        if self.has_default and self.default is not None:
            problem = _first_problem(TypeAdapter(self.annotation()), self.default)
            if problem:
                raise ValueError(f"default {_show(self.default)} {problem}")
        return self

    def annotation(self, *, with_enum: bool = True) -> Any:
        """The pydantic type a given value is validated with."""
        checks: list[Callable[[Any], Any]] = []
        if self.format == "date":
            checks.append(_is_date)
        elif self.format == "date-time":
            checks.append(_is_date_time)
        if self.pattern is not None:
            checks.append(_searches(self.pattern))
        if self.minimum is not None:
            checks.append(_at_least(self.minimum))
        if self.maximum is not None:
            checks.append(_at_most(self.maximum))
        if with_enum and self.enum is not None:
            checks.append(_one_of(self.enum))
        base = _BASE[self.type]
        return Annotated[(base, *(AfterValidator(c) for c in checks))] if checks else base

    def summary(self) -> str:
        """``string, date, required`` or ``one of "full", "delta"; default "delta"``."""
        parts = []
        if self.enum is not None:
            parts.append(f"one of {_listing(self.enum)}")
        elif self.type is not None:
            parts.append(self.type)
        if self.format:
            parts.append(self.format)
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        if self.required:
            parts.append("required")
        elif self.has_default:
            parts.append(f"default {_show(self.default)}")
        return ", ".join(parts) or "any value"


def _is_number(value: Any) -> Any:
    # A JSON number: int or float, never bool (kept as given: 3 stays 3).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


_BASE: dict[str | None, Any] = {
    "string": StrictStr,
    "integer": StrictInt,
    "number": Annotated[Any, AfterValidator(_is_number)],
    "boolean": StrictBool,
    "array": Annotated[list[Any], Strict()],
    "object": Annotated[dict[str, Any], Strict()],
    None: Any,
}

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def _is_date(value: str) -> str:
    try:
        if _DATE.match(value):
            date.fromisoformat(value)
            return value
    except ValueError:
        pass
    raise PydanticCustomError("date_format", "Input should be a date, YYYY-MM-DD")


def _is_date_time(value: str) -> str:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError(
            "date_time_format", "Input should be an ISO 8601 date-time, e.g. 2026-02-01T02:00:00Z"
        ) from None
    return value


def _searches(pattern: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.search(value):
            raise PydanticCustomError(
                "pattern_mismatch", "Input should match {pattern}", {"pattern": pattern}
            )
        return value

    return check


def _at_least(bound: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value < bound:
            raise PydanticCustomError("minimum", f"Input should be at least {bound:g}")
        return value

    return check


def _at_most(bound: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value > bound:
            raise PydanticCustomError("maximum", f"Input should be at most {bound:g}")
        return value

    return check


def _one_of(allowed: Sequence[Any]) -> Callable[[Any], Any]:
    # Compared with their JSON type: true is not 1, 1.0 is not 1.
    members = [(type(v), v) for v in allowed]

    def check(value: Any) -> Any:
        if (type(value), value) not in members:
            raise PydanticCustomError(
                "enum", "Input should be one of {allowed}", {"allowed": _listing(allowed)}
            )
        return value

    return check


def _message(error: Mapping[str, Any], *, show_input: bool = True) -> str:
    """``should be a valid integer, got "ten"`` from a pydantic error."""
    text = str(error["msg"])
    text = text.removeprefix("Value error, ").removeprefix("Input ")
    if show_input and "input" in error and error["type"] != "missing":
        text += f", got {_show(error['input'])}"
    return text


def _first_problem(adapter: TypeAdapter[Any], value: Any) -> str | None:
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return _message(exc.errors(include_url=False)[0], show_input=False)
    return None


def is_schema_entry(value: Any) -> bool:
    """A mapping with one of :data:`MARKERS` as a key declares a schema."""
    return isinstance(value, ParamSpec) or (
        isinstance(value, Mapping) and any(key in MARKERS for key in value)
    )


KEYWORDS = tuple(ParamSpec.model_fields)


def _entry_errors(exc: ValidationError) -> str:
    out = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            out.append(
                f"unknown keyword {where!r}{_suggest(where, KEYWORDS)}; a mapping with "
                f"'type', 'enum', 'default' or 'required' declares a schema "
                f"(keywords: {', '.join(KEYWORDS)})"
            )
        elif where:
            out.append(f"{where}: {_message(error, show_input=False)}")
        else:
            out.append(_message(error, show_input=False))
    return "; ".join(out)


def parse_entry(value: Any) -> ParamSpec:
    """The :class:`ParamSpec` of a schema entry; ``ValueError`` naming what is wrong."""
    if isinstance(value, ParamSpec):
        return value
    try:
        return ParamSpec.model_validate(value)
    except ValidationError as exc:
        raise ValueError(_entry_errors(exc)) from None


def schema_entry_error(value: Any) -> str | None:
    """Why a schema entry is invalid, or None (also for plain defaults)."""
    if not is_schema_entry(value):
        return None
    try:
        parse_entry(value)
    except ValueError as exc:
        return str(exc)
    return None


def compact(value: Any) -> Any:
    """A :class:`ParamSpec` as the JSON mapping it stands for (keys as written)."""
    if isinstance(value, ParamSpec):
        return value.model_dump(mode="json", exclude_unset=True)
    return value


@dataclass(frozen=True, eq=False)
class ParamsSchema:
    """The params a workflow declares. Built by :func:`build_schema`."""

    entries: Mapping[str, ParamSpec | None]
    """Every declared param in order; None for a plain default (any value)."""
    defaults: Mapping[str, Any]
    """Values used for params not given: plain defaults and schema defaults."""

    @cached_property
    def _model(self) -> type[BaseModel]:
        # Fields are named p0, p1, ... with the param name as alias: a param may
        # be called anything, even "model_config" or "my-date".
        fields: dict[str, Any] = {
            f"p{i}": (spec.annotation(), Field(default=None, alias=name))
            for i, (name, spec) in enumerate(self.entries.items())
            if spec is not None
        }
        return create_model("Params", __config__=ConfigDict(extra="ignore"), **fields)

    @cached_property
    def _typed(self) -> bool:
        return any(spec is not None for spec in self.entries.values())

    @property
    def names(self) -> list[str]:
        """Declared params, sorted (a spec read back from the database has lost
        the order they were written in)."""
        return sorted(self.entries)

    @property
    def string_params(self) -> frozenset[str]:
        """Params typed ``string``: text typed by a person stays text for them."""
        return frozenset(
            name
            for name, spec in self.entries.items()
            if spec is not None and spec.type == "string"
        )

    def describe(self) -> str:
        """``date (string, date, required), region (default "emea")``."""
        out = []
        for name in self.names:
            spec = self.entries[name]
            detail = spec.summary() if spec is not None else f"default {_show(self.defaults[name])}"
            out.append(f"{name} ({detail})")
        return ", ".join(out)

    def check(self, given: Mapping[str, Any], *, workflow: str) -> dict[str, Any]:
        """The run params for ``given``: checked, with defaults filled in.
        Raises :class:`ParamsError` naming every param that is wrong."""
        problems: list[tuple[str, str]] = []
        for key in given:
            if key not in self.entries:
                problems.append(
                    (str(key), f"is not a declared param{_suggest(str(key), self.names)}")
                )
        typed: dict[str, Any] = {}
        null: set[str] = set()
        for name, spec in self.entries.items():
            if spec is None or name not in given:
                continue
            if given[name] is None:
                null.add(name)
            else:
                typed[name] = given[name]
        checked: dict[str, Any] = {}
        if self._typed:
            try:
                validated = self._model.model_validate(typed)
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    name = str(error["loc"][0])
                    problems.append((name, _message(error)))
            else:
                checked = validated.model_dump(by_alias=True, exclude_unset=True)
        out: dict[str, Any] = {}
        for name, spec in self.entries.items():
            if spec is None:
                out[name] = given[name] if name in given else self.defaults[name]
            elif name in checked:
                out[name] = checked[name]
            elif spec.required and name not in typed:
                how = "was null" if name in null else "not given"
                problems.append((name, f"is required but {how}"))
            elif spec.has_default:
                out[name] = spec.default
        if problems:
            raise ParamsError(workflow, problems, self.names, self.describe())
        return out


def build_schema(params: Mapping[str, Any]) -> ParamsSchema | None:
    """The schema of a workflow's ``params`` (None when it declares none).
    Entries must be valid already (:class:`~orchestrator.spec.WorkflowSpec` checks)."""
    if not params:
        return None
    entries: dict[str, ParamSpec | None] = {}
    defaults: dict[str, Any] = {}
    for name, value in params.items():
        if is_schema_entry(value):
            spec = parse_entry(value)
            entries[name] = spec
            if spec.has_default:
                defaults[name] = spec.default
        else:
            entries[name] = None
            defaults[name] = value
    return ParamsSchema(entries, defaults)
