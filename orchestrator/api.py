"""The HTTP API (aiohttp): health, manual triggers, runs. Sources add routes
(e.g. ``/hooks/{name}``) to the same application before it starts."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from orchestrator.deferral import callback_key
from orchestrator.engine import Engine
from orchestrator.errors import DuplicateRunError, UnknownWorkflowError
from orchestrator.intake import Accepted, Event, Intake
from orchestrator.states import RunState
from orchestrator.store import SQL, UNAVAILABLE

log = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("engine", Engine)
INTAKE_KEY = web.AppKey("intake", Intake)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": detail, "status": status}, status, headers)


def unavailable(detail: str = "database unavailable; retry later") -> web.Response:
    return problem(503, detail, {"Retry-After": "5"})


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


async def trigger_run(
    request: web.Request,
) -> web.Response:
    """``POST /api/v1/workflows/{name}/runs`` with ``{"params": {...}}``."""
    intake = request.app[INTAKE_KEY]
    name = request.match_info["name"]
    try:
        body = await request.json(loads=orjson.loads) if request.can_read_body else {}
    except orjson.JSONDecodeError as exc:
        return problem(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return problem(400, "body must be a JSON object")
    params = body.get("params", {})
    if not isinstance(params, dict):
        return problem(400, "'params' must be a JSON object")
    actor = request.headers.get("X-Actor") or f"api:{request.remote or 'unknown'}"
    event = manual_event(
        name, params, actor=actor, idempotency_key=request.headers.get("Idempotency-Key")
    )
    try:
        [accepted] = await intake.ingest([event], actor=actor)
    except UnknownWorkflowError as exc:
        return problem(404, str(exc))
    except DuplicateRunError as exc:
        return problem(409, str(exc))
    except UNAVAILABLE:
        return unavailable()
    return json_response(_answer(accepted), 200 if accepted.duplicate else 201)


def _answer(accepted: Accepted) -> dict[str, Any]:
    return {"event_id": accepted.event_id, "run_ids": accepted.run_ids}


async def complete_callback(request: web.Request) -> web.Response:
    """``POST /api/v1/callbacks/{token}`` with ``{"status": "success"|"failed",
    "output": ..., "error": "..."}`` ends the wait of a ``sensor.callback`` task."""
    intake = request.app[INTAKE_KEY]
    key = callback_key(request.match_info["token"])
    try:
        body = await request.json(loads=orjson.loads) if request.can_read_body else {}
    except orjson.JSONDecodeError as exc:
        return problem(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return problem(400, "body must be a JSON object")
    status = body.get("status", "success")
    if status not in ("success", "failed"):
        return problem(400, f"'status' must be 'success' or 'failed', not {status!r}")
    gone = "no wait for this callback token (unknown, used or expired)"
    actor = request.headers.get("X-Actor") or f"callback:{request.remote or 'unknown'}"
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
        return problem(400, f"unknown state {state!r}")
    try:
        limit = min(int(request.query.get("limit", "50")), 1000)
    except ValueError:
        return problem(400, "'limit' must be an integer")
    async with engine.db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.list_runs, request.query.get("workflow"), state, limit)
    return json_response({"runs": [dict(r) for r in rows]})


async def get_run(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    try:
        run_id = int(request.match_info["run_id"])
    except ValueError:
        return problem(400, "run id must be an integer")
    async with engine.db.pool.acquire() as conn:
        run = await conn.fetchrow(SQL.get_run, run_id)
        if run is None:
            return problem(
                404,
                f"no run with id {run_id}; run ids are not dense (an id may have been drawn "
                "for a redelivered event or a refused trigger and never used, or belong to "
                "a run deleted by retention): GET /api/v1/runs lists the runs there are",
            )
        tasks = await conn.fetch(SQL.task_instances_of_run, run_id)
        steps = await conn.fetch(SQL.transitions_of_run, run_id)
    out = dict(run)
    out["params"] = orjson.loads(run["params"])
    out["tasks"] = [
        {**dict(t), "output": orjson.loads(t["output"]) if t["output"] else None} for t in tasks
    ]
    out["transitions"] = [dict(s) for s in steps]
    return json_response(out)


def build_app(engine: Engine, intake: Intake, *, max_body_bytes: int) -> web.Application:
    # Webhook bodies are capped by the hook handler itself (413 with a clear
    # message); the server cap is only a backstop a little above it.
    app = web.Application(client_max_size=max_body_bytes + 65_536)
    app[ENGINE_KEY] = engine
    app[INTAKE_KEY] = intake
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/api/v1/workflows/{name}/runs", trigger_run)
    app.router.add_post("/api/v1/callbacks/{token}", complete_callback)
    app.router.add_get("/api/v1/runs", list_runs)
    app.router.add_get("/api/v1/runs/{run_id}", get_run)
    return app


class HttpServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:  # a free port was asked for: learn which one
            for address in self._runner.addresses:
                self.port = int(address[1])
                break
        log.info("HTTP API on http://%s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
