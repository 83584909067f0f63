"""A workflow's shape for drawing and triggering it, over the public API.

- ``GET /api/v1/workflows/{name}/graph[?version=]``: the DAG of the current
  (or a named) version laid out in layers (:mod:`orchestrator.graph_layout`),
  each task with its handler, trigger rule and pool; the params a trigger form
  asks for, with their defaults; the triggers.
- ``GET /api/v1/workflows/{name}/versions``: every version, newest first, with
  how many runs are pinned to each, by state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from orchestrator.api_bodies import read_query, whole
from orchestrator.api_models import Page
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import UnknownWorkflowError
from orchestrator.graph_layout import NODE_H, NODE_W, layout
from orchestrator.openapi import operation
from orchestrator.params import is_schema_entry, parse_entry
from orchestrator.problems import FieldError, json_response, problem
from orchestrator.spec import WorkflowSpec
from orchestrator.store import SQL
from orchestrator.workflow_list import workflow_summary


class GraphNode(BaseModel):
    id: str
    handler: str
    upstream: list[str]
    trigger_rule: str
    pool: str
    priority: int
    max_attempts: int
    inputs: dict[str, Any] = Field(
        description="The task's inputs as the spec declares them: templates, never rendered."
    )
    layer: int
    x: float
    y: float


class ParamField(BaseModel):
    name: str
    type: str | None = Field(description="JSON type; null: any JSON value.")
    format: str | None
    enum: list[Any] | None
    default: Any
    has_default: bool
    required: bool
    description: str
    minimum: float | None
    maximum: float | None


class TriggerInfo(BaseModel):
    source: str
    target: str
    next: datetime | None = Field(description="When a schedule fires next.")


class Graph(BaseModel):
    workflow: str
    version: str
    current: bool
    description: str
    node_width: int
    node_height: int
    width: float
    height: float
    nodes: list[GraphNode]
    params: list[ParamField]
    triggers: list[TriggerInfo]
    on_pause: str


class VersionInfo(BaseModel):
    version: str
    created_at: datetime
    current: bool
    runs: dict[str, int] = Field(description="Runs pinned to this version, by state.")


VersionList = Page[VersionInfo]


class GraphQuery(BaseModel):
    version: str | None = Field(
        default=None, max_length=64, description="Default: the current version."
    )


def _engine(request: web.Request) -> Any:
    from orchestrator.api import ENGINE_KEY

    return request.app[ENGINE_KEY]


def _param_fields(spec: WorkflowSpec) -> list[dict[str, Any]]:
    fields = []
    for name, entry in sorted(spec.params.items()):
        if is_schema_entry(entry):
            p = parse_entry(entry)
            fields.append(
                {
                    "name": name,
                    "type": p.type,
                    "format": p.format,
                    "enum": p.enum,
                    "default": p.default,
                    "has_default": p.has_default,
                    "required": p.required,
                    "description": p.description,
                    "minimum": p.minimum,
                    "maximum": p.maximum,
                }
            )
        else:  # a plain default: its type is the default's
            kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
            fields.append(
                {
                    "name": name,
                    "type": kinds.get(type(entry)),
                    "format": None,
                    "enum": None,
                    "default": entry,
                    "has_default": True,
                    "required": False,
                    "description": "",
                    "minimum": None,
                    "maximum": None,
                }
            )
    return fields


def graph_of(spec: WorkflowSpec, version: str, *, current: bool) -> dict[str, Any]:
    """The drawing and form of ``spec`` (pure: no database)."""
    placed = layout([t.id for t in spec.tasks], {t.id: t.upstream for t in spec.tasks})
    where = {p.id: p for p in placed.nodes}
    now = SYSTEM_CLOCK.now()
    return {
        "workflow": spec.name,
        "version": version,
        "current": current,
        "description": spec.description,
        "node_width": NODE_W,
        "node_height": NODE_H,
        "width": placed.width,
        "height": placed.height,
        "nodes": [
            {
                "id": t.id,
                "handler": t.handler,
                "upstream": list(t.upstream),
                "trigger_rule": t.trigger_rule.value,
                "pool": t.pool,
                "priority": t.priority,
                "max_attempts": spec.retry_for(t).max_attempts,
                "inputs": t.inputs,
                "layer": where[t.id].layer,
                "x": where[t.id].x,
                "y": where[t.id].y,
            }
            for t in spec.tasks
        ],
        "params": _param_fields(spec),
        "triggers": [
            {"source": t.source, "target": t.target(), "next": t.next_time(now)}
            for t in spec.triggers
        ],
        "on_pause": spec.on_pause.value,
    }


@operation(
    summary="A workflow's DAG laid out for drawing, its params and triggers",
    response=Graph,
    query=GraphQuery,
    errors=(404,),
    tag="workflows",
)
async def get_graph(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    query = read_query(request, GraphQuery)
    db = _engine(request).db
    try:
        summary = await workflow_summary(db, name)
    except UnknownWorkflowError as exc:
        return problem(404, str(exc), errors=[FieldError("path", "name", str(exc))])
    version = query.version or summary.version
    async with db.pool.acquire() as conn:
        text = await conn.fetchval(SQL.version_spec, name, version)
    if text is None:
        detail = f"workflow {name!r} has no version {version!r}; /versions lists them"
        return problem(404, detail, errors=[FieldError("query", "version", detail)])
    try:
        spec = WorkflowSpec.model_validate_json(text)
    except ValidationError:
        return problem(409, f"version {version!r} was stored under rules since changed")
    return json_response(graph_of(spec, version, current=version == summary.version))


@operation(
    summary="A workflow's versions, newest first, with the runs pinned to each",
    response=VersionList,
    errors=(404,),
    tag="workflows",
)
async def list_versions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    db = _engine(request).db
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.workflow_versions_with_runs, name)
    if not rows:
        try:
            await workflow_summary(db, name)
        except UnknownWorkflowError as exc:
            return problem(404, str(exc), errors=[FieldError("path", "name", str(exc))])
    return json_response(
        whole(
            [
                {
                    "version": r["version"],
                    "created_at": r["created_at"],
                    "current": r["current"],
                    "runs": orjson.loads(r["runs"]),
                }
                for r in rows
            ]
        )
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/workflows/{name}/graph", get_graph)
    app.router.add_get("/api/v1/workflows/{name}/versions", list_versions)
