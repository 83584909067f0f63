"""``GET /api/v1/runs/{run_id}/tasks/{task_id}/logs``: an attempt's captured log.

Query: ``attempt`` (default: the task's current attempt), ``after`` (a chunk
id from an earlier answer's ``next_after``, to read only what came since) and
``limit`` (chunks, not lines). ``running`` says whether the attempt may still
write: a client follows a log by asking again with ``after`` while it is true.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from orchestrator import task_logs
from orchestrator.api_rules import MAX_ID, path_int, query_int
from orchestrator.openapi import operation
from orchestrator.problems import json_response, problem


class LogLine(BaseModel):
    chunk: int
    stream: Literal["log", "stdout", "stderr", "meta"]
    at: datetime
    text: str


class TaskLog(BaseModel):
    run_id: int
    task_id: str
    attempt: int
    task_state: str
    running: bool = Field(description="The attempt may still write: ask again with `after`.")
    lines: list[LogLine]
    next_after: int


class LogQuery(BaseModel):
    attempt: int | None = Field(
        default=None, ge=0, le=1_000_000, description="Default: the task's current attempt."
    )
    after: int = Field(default=0, ge=0, le=MAX_ID, description="An earlier `next_after`.")
    limit: int = Field(default=1000, ge=1, le=10_000, description="Chunks, not lines.")


@operation(
    summary="An attempt's captured log (ctx.log, stdout, stderr)",
    response=TaskLog,
    query=LogQuery,
    path={"run_id": int},
    errors=(404,),
    tag="runs",
)
async def get_task_log(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    db = request.app[ENGINE_KEY].db
    run_id = path_int(request, "run_id")
    task_id = request.match_info["task_id"]
    after = query_int(request, "after", default=0, low=0)
    limit = query_int(request, "limit", default=1000, high=10_000)
    found = await task_logs.task_attempt(db, run_id, task_id)
    if found is None:
        return problem(404, f"run {run_id} has no task {task_id!r} (or no run {run_id} exists)")
    current, state = found
    attempt = query_int(request, "attempt", default=current, low=0, high=1_000_000)
    lines = await task_logs.read_lines(db, run_id, task_id, attempt, after=after, limit=limit)
    return json_response(
        {
            "run_id": run_id,
            "task_id": task_id,
            "attempt": attempt,
            "task_state": state,
            "running": task_logs.attempt_running(current, state, attempt),
            "lines": [
                {"chunk": line.chunk, "stream": line.stream, "at": line.at, "text": line.text}
                for line in lines
            ],
            "next_after": lines[-1].chunk if lines else after,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/runs/{run_id}/tasks/{task_id}/logs", get_task_log)
