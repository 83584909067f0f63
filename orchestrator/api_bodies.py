"""Request bodies read into pydantic models: one place that turns a body a
model refuses into a 400 naming every field that was wrong."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.api_rules import PARSED_BODY
from orchestrator.errors import OrchestratorError
from orchestrator.problems import BadFields, BadInput, FieldError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (an absent body is ``{}``), parsed once per
    request (the ``/api/v1`` rules keep what they parsed); else a 400 problem."""
    if PARSED_BODY in request:
        data = request[PARSED_BODY]
    elif not request.body_exists:
        data = {}
    else:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise BadInput("body", "", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput("body", "", "body must be a JSON object")
    return data


async def read_body(request: web.Request, model: type[M]) -> M:
    """The body as ``model`` (an absent body is ``{}``); else a 400 problem
    naming each refused field (raised, answered by the problems middleware)."""
    data = await json_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [_field_error(e) for e in exc.errors(include_url=False, include_input=False)]
        detail = "; ".join(f"{f.name or 'body'}: {f.detail}" for f in errors)
        raise BadFields(errors, f"body refused: {detail}") from None


class RefusedField(OrchestratorError, ValueError):
    """Raised by a model's own validator to refuse the body because of one
    field (e.g. two keys that exclude each other): the 400 names ``name``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _field_error(error: ErrorDetails) -> FieldError:
    refused = (error.get("ctx") or {}).get("error")
    if isinstance(refused, RefusedField):
        return FieldError("body", refused.name, str(refused))
    return FieldError("body", ".".join(str(p) for p in error["loc"]), _message(error))


def _message(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unexpected key"
    return error["msg"]


def read_query(request: web.Request, model: type[M]) -> M:
    """The query string as ``model`` (unknown parameters are ignored); else a
    400 problem naming each refused parameter."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        errors = [
            FieldError("query", str(e["loc"][0]), _query_message(model, e))
            for e in exc.errors(include_url=False)
        ]
        raise BadFields(errors, "; ".join(f.detail for f in errors)) from None


def _query_message(model: type[BaseModel], error: ErrorDetails) -> str:
    name = str(error["loc"][0])
    info = model.model_fields.get(name)
    if info is not None and error["type"] in _NUMBER_ERRORS:
        low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
        high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
        if low is not None and high is not None:
            return f"'{name}' must be an integer from {low} to {high}"
    if error["type"] == "enum":
        expected = (error.get("ctx") or {}).get("expected", "")
        return f"unknown {name} {error['input']!r}; known: {expected}"
    return f"'{name}': {error['msg']}"


_NUMBER_ERRORS = frozenset(
    {"int_parsing", "int_from_float", "greater_than_equal", "less_than_equal", "int_type"}
)


def next_page(request: web.Request, cursor: int | str | None) -> str | None:
    """The URL of the page after ``cursor`` (the last item's id, or name) with
    the same filters (None: last page)."""
    if cursor is None:
        return None
    return str(request.rel_url.update_query(cursor=str(cursor)))


def page(
    request: web.Request,
    found: Sequence[T],
    limit: int,
    *,
    item: Callable[[T], Any],
    cursor: Callable[[T], int | str] = lambda row: row.id,  # type: ignore[attr-defined]
) -> dict[str, Any]:
    """The one list answer, ``{"items": [...], "next": url-or-null}``
    (:class:`orchestrator.api_models.Page`), from rows read with ``limit + 1``:
    the extra row only says that another page follows."""
    shown = found[:limit]
    more = len(found) > limit and bool(shown)
    return {
        "items": [item(row) for row in shown],
        "next": next_page(request, cursor(shown[-1]) if more else None),
    }


def whole(items: Sequence[Any]) -> dict[str, Any]:
    """A list that is never paged, in the same envelope (``next`` is null)."""
    return {"items": list(items), "next": None}
