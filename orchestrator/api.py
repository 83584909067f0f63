"""The HTTP API (aiohttp): health, manual triggers, runs. Sources add routes
(e.g. ``/hooks/{name}``) to the same application before it starts.

What every request passes through before a handler runs is in the
middlewares :func:`build_app` installs: CORS (:mod:`orchestrator.cors`),
problem answers for every error (:mod:`orchestrator.problems`), the body
read deadline (:mod:`orchestrator.http_server`) and the ``/api/v1`` input
rules (:mod:`orchestrator.api_rules`). The recorded actor comes from
:func:`orchestrator.callers.actor_of` only."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from orchestrator import (
    api_admin,
    api_alerts,
    api_audit,
    api_datasets,
    api_dead_letters,
    api_events,
    api_logs,
    api_operations,
    api_workflows,
    run_reads,
    ui,
)
from orchestrator.access_log import access_log_middleware
from orchestrator.api_bodies import json_object, page, read_query
from orchestrator.api_models import (
    CallbackAccepted,
    Held,
    RunDetail as RunDetailModel,
    RunPage,
    Started,
)
from orchestrator.api_rules import (
    MAX_ID,
    MAX_IDEMPOTENCY_KEY,
    api_rules_middleware,
    path_int,
)
from orchestrator.auth import Authenticator, auth_middleware
from orchestrator.callers import actor_of
from orchestrator.cors import cors_middleware
from orchestrator.deferral import callback_key
from orchestrator.engine import Engine
from orchestrator.errors import DuplicateRunError, ParamsError, UnknownWorkflowError
from orchestrator.group_commit import BatcherClosedError, GroupCommit
from orchestrator.health import Liveness, Readiness
from orchestrator.http_server import body_deadline_middleware
from orchestrator.intake import Accepted, Event, Intake
from orchestrator.metrics import count_responses, metrics_handler
from orchestrator.openapi import document, operation
from orchestrator.plugins import source_registry
from orchestrator.problems import (
    FieldError,
    json_response,
    problem,
    problems_middleware,
    unavailable,
)
from orchestrator.states import RunState
from orchestrator.store import SQL, UNAVAILABLE

log = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("engine", Engine)
INTAKE_KEY = web.AppKey("intake", Intake)
AUTH_KEY = web.AppKey("auth", Authenticator)
#: Manual triggers arriving together share one commit (each still answered alone).
TRIGGERS_KEY = web.AppKey("triggers", GroupCommit)
LIVENESS_KEY = web.AppKey("liveness", Liveness)
READINESS_KEY = web.AppKey("readiness", Readiness)


def manual_event(
    workflow: str,
    params: dict[str, Any],
    *,
    actor: str,
    idempotency_key: str | None = None,
) -> Event:
    """A run started by a person or a program, recorded as an event like any other."""
    key = idempotency_key or uuid.uuid4().hex
    return Event(
        source="manual",
        channel=workflow,
        dedup_key=f"manual:{workflow}:{key}",
        payload=params,
        meta={"idempotency_key": idempotency_key} if idempotency_key else {},
        actor=actor,
        workflow=workflow,
        params=params,
        fresh_key=idempotency_key is None,
    )


class TriggerBody(BaseModel):
    """What a manual trigger may send; the handler checks each key itself to
    say precisely what is wrong (e.g. params sent at the top level)."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(
        default_factory=dict, description="The run's params, as the workflow declares them."
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        description="A retried trigger with the same key starts nothing new (200).",
    )


class CallbackBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["success", "failed"] = "success"
    output: Any = Field(default=None, description="The task's output on success.")
    error: str | None = Field(default=None, description="Why, on failure.")


#: The keys a manual trigger's body may have.
TRIGGER_BODY_KEYS = tuple(TriggerBody.model_fields)


def _unexpected_keys(keys: Sequence[str], *, has_params: bool) -> str:
    listed = ", ".join(repr(k) for k in keys)
    where = "" if has_params else ': run params go under "params", e.g. {"params": {"date": ...}}'
    return (
        f"unexpected key{'s' if len(keys) > 1 else ''} {listed} in the body{where} "
        f"(allowed keys: {', '.join(TRIGGER_BODY_KEYS)})"
    )


@operation(
    summary="Start a run of a workflow (recorded as a manual event)",
    response=Started,
    status=201,
    also={200: Started, 202: Held},
    body=TriggerBody,
    errors=(404, 409),
    tag="workflows",
)
async def trigger_run(
    request: web.Request,
) -> web.Response:
    """``POST /api/v1/workflows/{name}/runs`` with ``{"params": {...},
    "idempotency_key": "..."}``, both optional (the key may also come as the
    ``Idempotency-Key`` header). Params the workflow does not declare, or of
    the wrong type, get 400 naming each one."""
    name = request.match_info["name"]
    body = await json_object(request)
    unexpected = [key for key in body if key not in TRIGGER_BODY_KEYS]
    if unexpected:
        return problem(
            400,
            _unexpected_keys(unexpected, has_params="params" in body),
            extra={"unexpected_keys": unexpected},
        )
    params = body.get("params", {})
    if not isinstance(params, dict):
        return problem(400, "'params' must be a JSON object")
    idempotency_key = body.get("idempotency_key")
    header_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
    ):
        return problem(
            400,
            f"'idempotency_key' must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters",
            errors=[FieldError("body", "idempotency_key", "not a usable key")],
        )
    if idempotency_key and header_key and idempotency_key != header_key:
        return problem(400, "the Idempotency-Key header and 'idempotency_key' differ")
    actor = actor_of(request)
    event = manual_event(name, params, actor=actor, idempotency_key=idempotency_key or header_key)
    try:
        accepted = await request.app[TRIGGERS_KEY].submit(event)
    except BatcherClosedError:
        return unavailable("the server is stopping; retry on another replica or later")
    except UnknownWorkflowError as exc:
        return problem(404, str(exc))
    except ParamsError as exc:
        return problem(
            400,
            str(exc),
            extra={
                "params": [{"param": p, "error": e} for p, e in exc.problems],
                "declared": exc.declared,
            },
        )
    except DuplicateRunError as exc:
        return problem(409, str(exc))
    except UNAVAILABLE:
        return unavailable()
    if accepted.paused:  # recorded; its run starts per the workflow's on_pause
        return json_response({**_answer(accepted), "paused": True}, 202)
    return json_response(_answer(accepted), 200 if accepted.duplicate else 201)


def _answer(accepted: Accepted) -> dict[str, Any]:
    return {"event_id": accepted.event_id, "run_ids": accepted.run_ids}


@operation(
    summary="End a callback wait (the token in the URL authenticates it)",
    response=CallbackAccepted,
    status=202,
    body=CallbackBody,
    errors=(404,),
    auth="none",
    tag="callbacks",
)
async def complete_callback(request: web.Request) -> web.Response:
    """``POST /api/v1/callbacks/{token}`` with ``{"status": "success"|"failed",
    "output": ..., "error": "..."}`` ends the wait of a ``sensor.callback`` task."""
    intake = request.app[INTAKE_KEY]
    key = callback_key(request.match_info["token"])
    try:
        body = await request.json(loads=orjson.loads) if request.body_exists else {}
    except orjson.JSONDecodeError as exc:
        return problem(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return problem(400, "body must be a JSON object")
    status = body.get("status", "success")
    if status not in ("success", "failed"):
        return problem(400, f"'status' must be 'success' or 'failed', not {status!r}")
    gone = "no wait for this callback token (unknown, used or expired)"
    actor = actor_of(request, "callback")
    try:
        async with intake.engine.db.pool.acquire() as conn:
            waiting = await conn.fetch(SQL.waiting_for_keys, [key])
        if not waiting:
            # Unknown, already used and expired tokens look the same to the caller.
            return problem(404, gone)
        event = Event(
            source="callback",
            channel="callbacks",
            dedup_key=key,
            payload=body,
            keys=[key],
            actor=actor,
        )
        [accepted] = await intake.ingest([event], actor=actor)
    except UNAVAILABLE:
        return unavailable()
    if accepted.duplicate:
        return problem(404, gone)
    return json_response({"event_id": accepted.event_id, "status": status}, 202)


def describe_api() -> dict[str, Any]:
    """The OpenAPI document of every route, without a running server."""
    from typing import cast

    nothing = cast(Any, None)
    return document(build_app(nothing, nothing, authenticator=nothing, max_body_bytes=1))


@operation(
    summary="This API's OpenAPI 3.1 document",
    response=dict[str, Any],
    auth="none",
    tag="meta",
)
async def openapi_document(request: web.Request) -> web.Response:
    return json_response(document(request.app))


async def healthz(request: web.Request) -> web.Response:
    """The process's loops come round (:mod:`orchestrator.health`)."""
    return liveness_answer(request.app.get(LIVENESS_KEY))


def liveness_answer(liveness: Liveness | None) -> web.Response:
    stuck = liveness.stuck() if liveness is not None else []
    if stuck:
        return problem(
            503,
            f"stuck: {', '.join(stuck)} (not come round for over {liveness.stale_s:g}s)"
            if liveness is not None
            else "stuck",
            extra={"stuck": stuck},
        )
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The database answers with its schema current, and this process's event
    sources can take events (:class:`orchestrator.health.Readiness`)."""
    readiness = request.app.get(READINESS_KEY) or Readiness(request.app[ENGINE_KEY].db)
    return await readiness_answer(readiness)


async def readiness_answer(readiness: Readiness) -> web.Response:
    verdict = await readiness.check()
    if verdict.database_down:
        return unavailable()
    if verdict.problems:
        detail = "; ".join(verdict.problems)
        return problem(503, detail, {"Retry-After": "5"}, extra={"problems": verdict.problems})
    return json_response({"status": "ready"})


class RunsQuery(BaseModel):
    workflow: str | None = Field(default=None, description="Only runs of this workflow.")
    state: RunState | None = Field(default=None, description="Only runs in this state.")
    limit: int = Field(default=50, ge=1, le=1000, description="Runs per page.")
    cursor: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="From a previous page's `next`."
    )


@operation(summary="List runs, newest first", response=RunPage, query=RunsQuery)
async def list_runs(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    query = read_query(request, RunsQuery)
    runs = await run_reads.list_runs(
        engine.db,
        workflow=query.workflow,
        state=query.state.value if query.state else None,
        limit=query.limit + 1,
        before=query.cursor,
    )
    return json_response(page(request, runs, query.limit, item=asdict))


@operation(
    summary="Read a run: tasks, waits, transitions and operator actions",
    response=RunDetailModel,
    path={"run_id": int},
    errors=(404,),
)
async def get_run(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    run_id = path_int(request, "run_id")
    detail = await run_reads.read_run(engine.db, run_id)
    if detail is None:
        return problem(
            404,
            f"no run with id {run_id}; run ids are not dense (an id may have been drawn "
            "for a redelivered event or a refused trigger and never used, or belong to "
            "a run deleted by retention): GET /api/v1/runs lists the runs there are",
        )
    return json_response(run_json(detail))


def run_json(detail: run_reads.RunDetail) -> dict[str, Any]:
    """The run as the API describes it: params and outputs as JSON values, and
    each wait without its callback URL (its token would end the wait)."""
    out = asdict(detail.run)
    out["params"] = orjson.loads(detail.run.params)
    out["tasks"] = [
        {**asdict(t), "output": orjson.loads(t.output) if t.output else None} for t in detail.tasks
    ]
    out["transitions"] = [asdict(s) for s in detail.transitions]
    out["audit"] = [asdict(a) for a in detail.audit]
    out["waits"] = [
        {k: v for k, v in asdict(w).items() if k != "callback_url"} for w in detail.waits
    ]
    return out


def build_app(
    engine: Engine,
    intake: Intake,
    *,
    authenticator: Authenticator,
    max_body_bytes: int,
    read_timeout_s: float = 10.0,
    batch_delay_s: float = 0.002,
    liveness: Liveness | None = None,
    readiness: Readiness | None = None,
    access_log: bool = False,
    cors_origins: Sequence[str] = (),
) -> web.Application:
    # Webhook bodies are capped by the hook handler itself (413 with a clear
    # message); the server cap is only a backstop a little above it.
    app = web.Application(
        client_max_size=max_body_bytes + 65_536,
        middlewares=[
            # Outermost first: CORS headers go on every answer, errors included;
            # the body deadline covers the rules' reading of the body.
            count_responses,
            *([access_log_middleware(True)] if access_log else []),
            cors_middleware(cors_origins),
            problems_middleware,
            auth_middleware(authenticator),  # before any body is read
            body_deadline_middleware(read_timeout_s),
            api_rules_middleware,
        ],
    )
    app[ENGINE_KEY] = engine
    app[INTAKE_KEY] = intake
    triggers = GroupCommit(intake, delay_s=batch_delay_s, actor="api", name="api")
    app[TRIGGERS_KEY] = triggers

    async def start_triggers(_app: web.Application) -> None:
        await triggers.start()

    async def stop_triggers(_app: web.Application) -> None:
        await triggers.stop()

    app.on_startup.append(start_triggers)
    app.on_shutdown.append(stop_triggers)
    app[AUTH_KEY] = authenticator
    if liveness is not None:
        app[LIVENESS_KEY] = liveness
    if readiness is not None:
        app[READINESS_KEY] = readiness
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/api/v1/workflows/{name}/runs", trigger_run)
    app.router.add_post("/api/v1/callbacks/{token}", complete_callback)
    app.router.add_get("/api/v1/runs", list_runs)
    app.router.add_get("/api/v1/runs/{run_id}", get_run)
    api_audit.add_routes(app)
    api_admin.add_routes(app)
    api_operations.add_routes(app)
    api_dead_letters.add_routes(app)
    api_events.add_routes(app)
    api_logs.add_routes(app)
    api_workflows.add_routes(app)
    api_alerts.add_routes(app)
    api_datasets.add_routes(app)
    source_registry().add_routes(app)
    ui.add_routes(app)
    app.router.add_get("/api/v1/openapi.json", openapi_document)
    if engine is not None:
        app.router.add_get("/metrics", metrics_handler(engine.db))
    return app
