"""Datasets over HTTP: report an update (``POST /api/v1/datasets/{uri}/events``),
list datasets (``GET /api/v1/datasets``), the runs that consumed a dataset's
updates (``GET /api/v1/datasets/{uri}/consumers``), the lineage graph
(``GET /api/v1/lineage``) and what caused a run (``GET /api/v1/runs/{id}/datasets``).

URIs go in the path percent-encoded (``postgres%3A%2F%2Fwarehouse%2Fsales``);
unencoded ones work too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api_bodies import read_body, read_query, whole
from orchestrator.api_models import Page
from orchestrator.api_rules import MAX_IDEMPOTENCY_KEY, path_int
from orchestrator.callers import actor_of
from orchestrator.dataset_refs import URI_PATTERN
from orchestrator.datasets import Datasets, DatasetUpdate
from orchestrator.engine import Engine
from orchestrator.lineage import Lineage, UnknownNodeError, dataset_list
from orchestrator.openapi import operation
from orchestrator.problems import BadInput, json_response
from orchestrator.run_datasets import consumers_of, run_datasets

LINEAGE_KEY = web.AppKey("lineage", Lineage)


def _engine(request: web.Request) -> Engine:
    from orchestrator.api import ENGINE_KEY

    return request.app[ENGINE_KEY]


def _uri(request: web.Request) -> str:
    uri = request.match_info["uri"]
    if not URI_PATTERN.match(uri) or "{{" in uri:
        raise BadInput("path", "uri", f"{uri!r} is not a dataset URI (scheme://...)")
    return uri


class UpdateBody(BaseModel):
    """An update of a dataset made outside the orchestrator."""

    model_config = ConfigDict(extra="forbid")

    logical_date: datetime | None = Field(
        default=None, description="The partition updated (ISO 8601); triggers may match on it."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="What the producer says about it (a row count)."
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        description="The same key again records nothing new (also the Idempotency-Key header).",
    )


class UpdateAccepted(BaseModel):
    event_id: int
    run_ids: list[int] = Field(description="Runs the update started at once.")
    duplicate: bool = Field(description="The key was seen before: nothing new was recorded.")


class DatasetSummary(BaseModel):
    id: str
    kind: Literal["dataset"]
    uri: str
    last_update: str | None
    updates: int
    fresh_within_s: float | None
    freshness: Literal["fresh", "stale", "never"] | None
    producers: list[str]
    consumers: list[str]


DatasetList = Page[DatasetSummary]


class LineageQuery(BaseModel):
    node: str = Field(min_length=1, description="A dataset URI or a workflow name.")
    direction: Literal["upstream", "downstream", "both"] = "both"
    depth: int | None = Field(default=None, ge=1, le=1000)


class LineageGraph(BaseModel):
    nodes: list[dict[str, Any]]
    edges: list[dict[str, str]]


class ConsumersQuery(BaseModel):
    logical_date: datetime | None = Field(default=None, description="Only updates of this date.")


class Consumer(BaseModel):
    dataset_event_id: int
    logical_date: str | None
    run_id: int
    workflow: str
    state: str


ConsumerList = Page[Consumer]


class DatasetUpdateView(BaseModel):
    id: int
    uri: str
    workflow: str | None
    run_id: int | None
    task_id: str | None
    logical_date: str | None
    metadata: dict[str, Any]
    recorded_at: str


class RunDatasets(BaseModel):
    caused_by: list[DatasetUpdateView] = Field(description="The updates that started the run.")
    updated: list[DatasetUpdateView] = Field(description="The updates its tasks made.")


@operation(
    summary="Report an update of a dataset made outside the orchestrator",
    response=UpdateAccepted,
    status=202,
    body=UpdateBody,
    path={"uri": str},
    errors=(404,),
    tag="datasets",
)
async def post_update(request: web.Request) -> web.Response:
    uri = _uri(request)
    body = await read_body(request, UpdateBody)
    header = request.headers.get("Idempotency-Key")
    if body.idempotency_key and header and body.idempotency_key != header:
        raise BadInput("body", "idempotency_key", "the Idempotency-Key header and body differ")
    key = body.idempotency_key or header
    if key is None:
        import uuid

        key = uuid.uuid4().hex
    actor = actor_of(request)
    update = DatasetUpdate(
        uri=uri,
        dedup_key=f"dataset-update:api:{uri}:{key}",
        metadata=body.metadata,
        logical_date=body.logical_date,
        actor=actor,
    )
    answer = (await Datasets(_engine(request)).record([update], actor=actor))[0]
    return json_response(
        {"event_id": answer.event_id, "run_ids": answer.run_ids, "duplicate": answer.duplicate},
        202,
    )


def lineage_of(request: web.Request) -> Lineage:
    return request.app[LINEAGE_KEY]


@operation(summary="List datasets: last update, freshness", response=DatasetList, tag="datasets")
async def list_datasets(request: web.Request) -> web.Response:
    engine = _engine(request)
    async with engine.db.pool.acquire() as conn:
        found = await dataset_list(conn, lineage_of(request), engine.clock.now())
    return json_response(whole(found))


@operation(
    summary="The lineage graph around a dataset or a workflow",
    response=LineageGraph,
    query=LineageQuery,
    errors=(404,),
    tag="datasets",
)
async def get_lineage(request: web.Request) -> web.Response:
    query = read_query(request, LineageQuery)
    engine = _engine(request)
    async with engine.db.pool.acquire() as conn:
        try:
            view = await lineage_of(request).query(
                conn,
                query.node,
                direction=query.direction,
                depth=query.depth,
                now=engine.clock.now(),
            )
        except UnknownNodeError as exc:
            raise BadInput("query", "node", str(exc), status=404) from None
    return json_response(view.as_json())


@operation(
    summary="The runs that consumed a dataset's updates",
    response=ConsumerList,
    query=ConsumersQuery,
    path={"uri": str},
    # A URI that cannot be a path segment (a raw "/" or a control character) matches no route.
    errors=(404,),
    tag="datasets",
)
async def get_consumers(request: web.Request) -> web.Response:
    uri = _uri(request)
    query = read_query(request, ConsumersQuery)
    found = await consumers_of(_engine(request).db, uri, query.logical_date)
    return json_response(whole(found))


@operation(
    summary="The dataset updates that caused a run, and those it made",
    response=RunDatasets,
    path={"id": int},
    tag="runs",
)
async def get_run_datasets(request: web.Request) -> web.Response:
    caused_by, updated = await run_datasets(_engine(request).db, path_int(request, "id"))
    return json_response({"caused_by": caused_by, "updated": updated})


def add_routes(app: web.Application) -> None:
    app[LINEAGE_KEY] = Lineage()  # one per application: its graph is rebuilt only on change
    app.router.add_get("/api/v1/datasets", list_datasets)
    app.router.add_post("/api/v1/datasets/{uri:.+}/events", post_update)
    app.router.add_get("/api/v1/datasets/{uri:.+}/consumers", get_consumers)
    app.router.add_get("/api/v1/lineage", get_lineage)
    app.router.add_get("/api/v1/runs/{id}/datasets", get_run_datasets)
