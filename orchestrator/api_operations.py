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

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from orchestrator import operations
from orchestrator.api_bodies import read_body
from orchestrator.api_rules import path_int
from orchestrator.callers import actor_of
from orchestrator.errors import (
    OperationRefusedError,
    UnknownRunError,
    UnknownTaskError,
    UnknownWorkflowError,
)
from orchestrator.openapi import operation
from orchestrator.problems import json_response, problem

Reason = Annotated[str, Field(max_length=2000)]
TaskId = Annotated[str, Field(min_length=1, max_length=200)]


class ClearBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskId] | None = Field(default=None, max_length=1000)
    """Clear these tasks (default: the failed ones and what they skipped)."""
    downstream: StrictBool = False
    """Also clear everything downstream of ``tasks``."""
    failed_only: StrictBool = False
    reason: Reason = ""

    @model_validator(mode="after")
    def _downstream_needs_tasks(self) -> ClearBody:
        if self.downstream and not self.tasks:
            raise ValueError("'downstream' needs 'tasks' to start from")
        return self


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason = ""


class MarkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["success", "failed", "skipped"]
    output: Any = None
    """The task's output; only with ``state: success``."""
    reason: Reason = ""

    @model_validator(mode="after")
    def _output_only_on_success(self) -> MarkBody:
        if self.output is not None and self.state != "success":
            raise ValueError("'output' is only given with state success")
        return self


async def _answer(action: Callable[[], Awaitable[Any]]) -> web.Response:
    try:
        result = await action()
    except (UnknownRunError, UnknownTaskError, UnknownWorkflowError) as exc:
        return problem(404, str(exc))
    except OperationRefusedError as exc:
        return problem(409, str(exc))
    return json_response(asdict(result))


@operation(
    summary="Clear a run's failed (or named) tasks to run again in the same run",
    response=operations.ClearResult,
    body=ClearBody,
    path={"run_id": int},
    errors=(404, 409),
    tag="operator",
)
async def clear(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    run_id = path_int(request, "run_id")
    body = await read_body(request, ClearBody)
    return await _answer(
        lambda: operations.clear_run(
            request.app[ENGINE_KEY],
            run_id,
            tasks=body.tasks or None,
            downstream=body.downstream,
            failed_only=body.failed_only,
            actor=actor_of(request),
            reason=body.reason,
        )
    )


@operation(
    summary="Cancel a run: pending tasks skipped, waits ended, running attempts stopped",
    response=operations.CancelResult,
    body=CancelBody,
    path={"run_id": int},
    errors=(404, 409),
    tag="operator",
)
async def cancel(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    run_id = path_int(request, "run_id")
    body = await read_body(request, CancelBody)
    return await _answer(
        lambda: operations.cancel_run(
            request.app[ENGINE_KEY], run_id, actor=actor_of(request), reason=body.reason
        )
    )


@operation(
    summary="Mark a task's outcome by hand; downstream is decided again",
    response=operations.MarkResult,
    body=MarkBody,
    path={"run_id": int},
    errors=(404, 409),
    tag="operator",
)
async def mark(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    run_id = path_int(request, "run_id")
    task_id = request.match_info["task_id"]
    body = await read_body(request, MarkBody)
    return await _answer(
        lambda: operations.mark_task(
            request.app[ENGINE_KEY],
            run_id,
            task_id,
            body.state,
            output=body.output,
            actor=actor_of(request),
            reason=body.reason,
        )
    )


async def _hold(request: web.Request, *, release: bool) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    name, task = request.match_info["name"], request.match_info["task"]
    body = await read_body(request, CancelBody)
    act = operations.unpause_task if release else operations.pause_task
    return await _answer(
        lambda: act(
            request.app[ENGINE_KEY], name, task, actor=actor_of(request), reason=body.reason
        )
    )


@operation(
    summary="Hold a task in every run of a workflow (it waits without a slot)",
    response=operations.HoldResult,
    body=CancelBody,
    errors=(404, 409),
    tag="operator",
)
async def pause(request: web.Request) -> web.Response:
    return await _hold(request, release=False)


@operation(
    summary="Release a held task in every run of a workflow",
    response=operations.HoldResult,
    body=CancelBody,
    errors=(404, 409),
    tag="operator",
)
async def unpause(request: web.Request) -> web.Response:
    return await _hold(request, release=True)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/runs/{run_id}/clear", clear)
    app.router.add_post("/api/v1/runs/{run_id}/cancel", cancel)
    app.router.add_post("/api/v1/runs/{run_id}/tasks/{task_id}/mark", mark)
    app.router.add_post("/api/v1/workflows/{name}/tasks/{task}/pause", pause)
    app.router.add_post("/api/v1/workflows/{name}/tasks/{task}/unpause", unpause)
