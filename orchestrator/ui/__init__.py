"""The web UI: static pages at ``/`` that call only the public ``/api/v1``.

The pages are plain ES modules and CSS under ``static/`` (no build step, no
CDN: everything works offline). The API routes added here serve the pages
and any other client alike: browser sign-in (:mod:`.session`), a workflow's
laid-out graph and versions (:mod:`.graph`) and live updates (:mod:`.live`).
The graph is laid out on the server (:mod:`orchestrator.graph_layout`), so
the pages need no layout library.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aiohttp import web

from orchestrator.ui import graph, live, session

__all__ = ["add_routes"]

STATIC = Path(str(resources.files("orchestrator.ui").joinpath("static")))
#: The pages load nothing from elsewhere and may not be framed by another site.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=_HEADERS)


def add_routes(app: web.Application) -> None:
    session.add_routes(app)
    graph.add_routes(app)
    live.add_routes(app)
    app.router.add_get("/", index)
    app.router.add_static("/ui/", STATIC, append_version=False)
