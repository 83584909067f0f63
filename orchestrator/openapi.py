"""The API's OpenAPI 3.1 document, built from the routes themselves.

Each ``/api/v1`` handler carries an :class:`Operation` (the :func:`operation`
decorator): its summary, the pydantic model its body is read into
(:func:`orchestrator.api_bodies.read_body` validates with the same model),
its query parameters as a model, and the type of its answer. The document is
generated from those and the application's router at request time, so a
route cannot exist without being described (a test checks that every route
has an operation) and a description cannot drift from the validation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from orchestrator.api_models import Problem

H = TypeVar("H", bound=Callable[..., Any])

_ATTR = "__openapi_operation__"
REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "The request is malformed; `errors` names each input at fault.",
    401: "A valid API token is required.",
    403: "The token's role may not do this.",
    404: "There is no such thing.",
    409: "Not possible in the current state.",
    413: "The body is too large.",
    415: "The body must be JSON.",
    503: "The database is unavailable; retry later.",
}
#: Every /api/v1 route may answer these (the middlewares do).
_ALWAYS = (400, 415, 503)


@dataclass(frozen=True)
class Operation:
    summary: str
    response: Any
    """The type of the success answer's body (a model, dataclass or typing form)."""
    status: int = 200
    also: Mapping[int, Any] = field(default_factory=dict)
    """Other success answers: status -> body type (a repeated trigger is 200)."""
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path: Mapping[str, type] = field(default_factory=dict)
    """Types of path parameters (default: string)."""
    errors: tuple[int, ...] = ()
    auth: Literal["token", "none"] = "token"
    tag: str = "runs"
    description: str = ""
    media: str = "application/json"
    """The success answer's media type (a stream of server-sent events is
    ``text/event-stream``, each event's data then being ``response``)."""


def operation(**kwargs: Any) -> Callable[[H], H]:
    op = Operation(**kwargs)

    def attach(handler: H) -> H:
        setattr(handler, _ATTR, op)
        return handler

    return attach


def operation_of(handler: object) -> Operation | None:
    op = getattr(handler, _ATTR, None)
    return op if isinstance(op, Operation) else None


class _Schemas:
    """JSON Schemas of the types used, with shared definitions gathered once."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def of(self, kind: Any, mode: Literal["validation", "serialization"]) -> dict[str, Any]:
        schema = TypeAdapter(kind).json_schema(mode=mode, ref_template=REF)
        self.components.update(schema.pop("$defs", {}))
        if "title" in schema and "properties" in schema:
            name = schema["title"]
            self.components[name] = schema
            return {"$ref": REF.format(model=name)}
        return schema


def _parameters(op: Operation, path: str, schemas: _Schemas) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in _path_names(path):
        kind = op.path.get(name, str)
        params.append(
            {"name": name, "in": "path", "required": True, "schema": schemas.of(kind, "validation")}
        )
    if op.query is not None:
        model = op.query.model_json_schema(ref_template=REF)
        schemas.components.update(model.pop("$defs", {}))
        required = set(model.get("required", ()))
        for name, schema in model["properties"].items():
            entry: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": {k: v for k, v in schema.items() if k not in ("title", "description")},
            }
            if "description" in schema:
                entry["description"] = schema["description"]
            params.append(entry)
    return params


def _path_names(path: str) -> list[str]:
    names = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            names.append(part[1:-1].split(":")[0])
    return names


def _content(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {media: {"schema": schema}}


def _describe(op: Operation, path: str, schemas: _Schemas) -> dict[str, Any]:
    problem = schemas.of(Problem, "serialization")
    responses: dict[str, Any] = {
        str(op.status): {
            "description": op.summary,
            "content": _content(schemas.of(op.response, "serialization"), op.media),
        }
    }
    for status, kind in op.also.items():
        responses[str(status)] = {
            "description": f"Also: {status}",
            "content": _content(schemas.of(kind, "serialization")),
        }
    errors = set(op.errors) | set(_ALWAYS)
    if op.auth == "token":
        errors |= {401, 403}
    if op.body is not None:
        errors.add(413)
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": _content(problem, "application/problem+json"),
        }
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": _operation_id(path, op),
        "tags": [op.tag],
        "parameters": _parameters(op, path, schemas),
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if op.body is not None:
        out["requestBody"] = {
            "required": False,
            "content": _content(schemas.of(op.body, "validation")),
        }
    if op.auth == "none":
        out["security"] = []
    return out


def _operation_id(path: str, op: Operation) -> str:
    words = [p.strip("{}") for p in path.removeprefix("/api/v1/").split("/") if p]
    return "_".join(words) + "_" + op.summary.split()[0].lower()


def api_routes(app: web.Application) -> list[tuple[str, str, object]]:
    """(method, path, handler) of every ``/api/v1`` route."""
    found: list[tuple[str, str, object]] = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or ""
        if path.startswith("/api/v1/") and route.method not in ("HEAD", "OPTIONS", "*"):
            found.append((route.method, path, route.handler))
    return found


def document(app: web.Application) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler in api_routes(app):
        op = operation_of(handler)
        if op is None:
            raise RuntimeError(f"{method} {path} has no OpenAPI operation (use @operation)")
        paths.setdefault(path, {})[method.lower()] = _describe(op, path, schemas)
    try:
        release = version("orchestrator")
    except PackageNotFoundError:  # run from a checkout that is not installed
        release = "0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orchestrator",
            "version": release,
            "description": "Runs, workflows, operator actions and their audit log. Errors are "
            "RFC 9457 problem documents.",
        },
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token: `orchestrator tokens create NAME --role R`.",
                }
            },
        },
        "security": [{"token": []}],
    }
