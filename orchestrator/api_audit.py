"""``GET /api/v1/audit``: who did what, newest first, filterable."""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web

from orchestrator import audit
from orchestrator.api_rules import query_int
from orchestrator.problems import BadInput, json_response


async def list_audit(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    action = request.query.get("action")
    if action is not None and action not in audit.ACTIONS:
        raise BadInput(
            "query", "action", f"unknown action {action!r}; known: {', '.join(audit.ACTIONS)}"
        )
    run_id = query_int(request, "run", default=0, low=0)
    before = query_int(request, "before", default=0, low=0)
    found = await audit.entries(
        request.app[ENGINE_KEY].db,
        workflow=request.query.get("workflow"),
        run_id=run_id or None,
        action=action,
        before=before or None,
        limit=query_int(request, "limit", default=100, high=1000),
    )
    return json_response({"entries": [asdict(e) for e in found]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/audit", list_audit)
