"""Operator actions over HTTP (see :mod:`orchestrator.operations`):

- ``POST /api/v1/runs/{run_id}/clear`` ``{"tasks"?, "downstream"?, "failed_only"?, "reason"?}``
- ``POST /api/v1/runs/{run_id}/cancel`` ``{"reason"?}``
- ``POST /api/v1/runs/{run_id}/tasks/{task_id}/mark`` ``{"state", "output"?, "reason"?}``
- ``POST /api/v1/workflows/{name}/tasks/{task}/pause`` and ``/unpause`` ``{"reason"?}``

An unknown run, workflow or task answers 404 naming it; an action the current
state does not allow, 409; a bad body, 400 naming the field. A refused action
changes nothing. The actor is the caller as :func:`orchestrator.callers.actor_of`
decides it, never a value from the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from orchestrator import operations
from orchestrator.api_rules import path_int
from orchestrator.callers import actor_of
from orchestrator.errors import (
    OperationRefusedError,
    UnknownRunError,
    UnknownTaskError,
    UnknownWorkflowError,
)
from orchestrator.problems import BadInput, json_response, problem

_MAX_REASON = 2000
_MAX_TASKS = 1000


async def _body(request: web.Request, allowed: Sequence[str]) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    try:
        body = await request.json(loads=orjson.loads)
    except orjson.JSONDecodeError as exc:
        raise BadInput("body", "body", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("body", "body", "body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise BadInput(
                "body",
                key,
                f"unexpected key {key!r} in the body (allowed keys: {', '.join(allowed)})",
            )
    return body


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > _MAX_REASON:
        raise BadInput(
            "body", "reason", f"'reason' must be a string of at most {_MAX_REASON} characters"
        )
    return reason


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadInput("body", name, f"{name!r} must be true or false")
    return value


async def _answer(action: Callable[[], Awaitable[Any]]) -> web.Response:
    try:
        result = await action()
    except (UnknownRunError, UnknownTaskError, UnknownWorkflowError) as exc:
        return problem(404, str(exc))
    except OperationRefusedError as exc:
        return problem(409, str(exc))
    return json_response(asdict(result))


async def clear(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    run_id = path_int(request, "run_id")
    body = await _body(request, ("tasks", "downstream", "failed_only", "reason"))
    tasks = body.get("tasks")
    if tasks is not None and (
        not isinstance(tasks, list)
        or not all(isinstance(t, str) and t for t in tasks)
        or len(tasks) > _MAX_TASKS
    ):
        raise BadInput("body", "tasks", "'tasks' must be a list of task ids (non-empty strings)")
    downstream = _flag(body, "downstream")
    if downstream and not tasks:
        raise BadInput("body", "downstream", "'downstream' needs 'tasks' to start from")
    failed_only, reason = _flag(body, "failed_only"), _reason(body)
    return await _answer(
        lambda: operations.clear_run(
            request.app[ENGINE_KEY],
            run_id,
            tasks=tasks or None,
            downstream=downstream,
            failed_only=failed_only,
            actor=actor_of(request),
            reason=reason,
        )
    )


async def cancel(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    run_id = path_int(request, "run_id")
    reason = _reason(await _body(request, ("reason",)))
    return await _answer(
        lambda: operations.cancel_run(
            request.app[ENGINE_KEY], run_id, actor=actor_of(request), reason=reason
        )
    )


async def mark(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    run_id = path_int(request, "run_id")
    task_id = request.match_info["task_id"]
    body = await _body(request, ("state", "output", "reason"))
    state = body.get("state")
    if state not in ("success", "failed", "skipped"):
        raise BadInput("body", "state", "'state' must be one of success, failed, skipped")
    output = body.get("output")
    if output is not None and state != "success":
        raise BadInput("body", "output", "'output' is only given with state success")
    reason = _reason(body)
    return await _answer(
        lambda: operations.mark_task(
            request.app[ENGINE_KEY],
            run_id,
            task_id,
            state,
            output=output,
            actor=actor_of(request),
            reason=reason,
        )
    )


async def _hold(request: web.Request, *, release: bool) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    name, task = request.match_info["name"], request.match_info["task"]
    reason = _reason(await _body(request, ("reason",)))
    act = operations.unpause_task if release else operations.pause_task
    return await _answer(
        lambda: act(request.app[ENGINE_KEY], name, task, actor=actor_of(request), reason=reason)
    )


async def pause(request: web.Request) -> web.Response:
    return await _hold(request, release=False)


async def unpause(request: web.Request) -> web.Response:
    return await _hold(request, release=True)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/runs/{run_id}/clear", clear)
    app.router.add_post("/api/v1/runs/{run_id}/cancel", cancel)
    app.router.add_post("/api/v1/runs/{run_id}/tasks/{task_id}/mark", mark)
    app.router.add_post("/api/v1/workflows/{name}/tasks/{task}/pause", pause)
    app.router.add_post("/api/v1/workflows/{name}/tasks/{task}/unpause", unpause)
