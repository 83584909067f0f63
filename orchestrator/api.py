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
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from orchestrator import api_audit, api_workflows, run_reads
from orchestrator.api_rules import (
    MAX_IDEMPOTENCY_KEY,
    api_rules_middleware,
    path_int,
    query_int,
)
from orchestrator.callers import actor_of
from orchestrator.cors import cors_middleware
from orchestrator.deferral import callback_key
from orchestrator.engine import Engine
from orchestrator.errors import DuplicateRunError, ParamsError, UnknownWorkflowError
from orchestrator.http_server import body_deadline_middleware
from orchestrator.intake import Accepted, Event, Intake
from orchestrator.problems import (
    BadInput,
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
    )


#: The keys a manual trigger's body may have.
TRIGGER_BODY_KEYS = ("params", "idempotency_key")


def _unexpected_keys(keys: Sequence[str], *, has_params: bool) -> str:
    listed = ", ".join(repr(k) for k in keys)
    where = "" if has_params else ': run params go under "params", e.g. {"params": {"date": ...}}'
    return (
        f"unexpected key{'s' if len(keys) > 1 else ''} {listed} in the body{where} "
        f"(allowed keys: {', '.join(TRIGGER_BODY_KEYS)})"
    )


async def trigger_run(
    request: web.Request,
) -> web.Response:
    """``POST /api/v1/workflows/{name}/runs`` with ``{"params": {...},
    "idempotency_key": "..."}``, both optional (the key may also come as the
    ``Idempotency-Key`` header). Params the workflow does not declare, or of
    the wrong type, get 400 naming each one."""
    intake = request.app[INTAKE_KEY]
    name = request.match_info["name"]
    try:
        body = await request.json(loads=orjson.loads) if request.body_exists else {}
    except orjson.JSONDecodeError as exc:
        return problem(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return problem(400, "body must be a JSON object")
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
        [accepted] = await intake.ingest([event], actor=actor)
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


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    try:
        async with engine.db.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except (*UNAVAILABLE, asyncpg.PostgresError):
        return unavailable()
    return json_response({"status": "ready"})


async def list_runs(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    state = request.query.get("state")
    if state is not None and state not in {s.value for s in RunState}:
        known = ", ".join(s.value for s in RunState)
        raise BadInput("query", "state", f"unknown state {state!r}; known: {known}")
    limit = query_int(request, "limit", default=50, high=1000)
    runs = await run_reads.list_runs(
        engine.db, workflow=request.query.get("workflow"), state=state, limit=limit
    )
    return json_response({"runs": [asdict(r) for r in runs]})


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
    max_body_bytes: int,
    read_timeout_s: float = 10.0,
    cors_origins: Sequence[str] = (),
) -> web.Application:
    # Webhook bodies are capped by the hook handler itself (413 with a clear
    # message); the server cap is only a backstop a little above it.
    app = web.Application(
        client_max_size=max_body_bytes + 65_536,
        middlewares=[
            # Outermost first: CORS headers go on every answer, errors included;
            # the body deadline covers the rules' reading of the body.
            cors_middleware(cors_origins),
            problems_middleware,
            body_deadline_middleware(read_timeout_s),
            api_rules_middleware,
        ],
    )
    app[ENGINE_KEY] = engine
    app[INTAKE_KEY] = intake
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/api/v1/workflows/{name}/runs", trigger_run)
    app.router.add_post("/api/v1/callbacks/{token}", complete_callback)
    app.router.add_get("/api/v1/runs", list_runs)
    app.router.add_get("/api/v1/runs/{run_id}", get_run)
    api_audit.add_routes(app)
    api_workflows.add_routes(app)
    return app
