"""Request bodies read into pydantic models: one place that turns a body a
model refuses into a 400 naming every field that was wrong."""

from __future__ import annotations

from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.problems import BadFields, BadInput, FieldError

M = TypeVar("M", bound=BaseModel)


async def read_body(request: web.Request, model: type[M]) -> M:
    """The body as ``model`` (an absent body is ``{}``); else a 400 problem
    naming each refused field (raised, answered by the problems middleware)."""
    try:
        data = await request.json(loads=orjson.loads) if request.body_exists else {}
    except orjson.JSONDecodeError as exc:
        raise BadInput("body", "", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput("body", "", "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            FieldError("body", ".".join(str(p) for p in e["loc"]) or "", _message(e))
            for e in exc.errors(include_url=False, include_input=False)
        ]
        detail = "; ".join(f"{f.name or 'body'}: {f.detail}" for f in errors)
        raise BadFields(errors, f"body refused: {detail}") from None


def _message(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unexpected key"
    return error["msg"]
