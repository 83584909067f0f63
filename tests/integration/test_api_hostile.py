"""Every route of the HTTP application, walked with hostile input over real HTTP.

The routes are enumerated from the application's router, so a route added
later is walked too. Whatever the input, the server never answers 5xx, and
every 4xx is a problem document (``application/problem+json``) saying what
was wrong.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from sources.models import WebhookTrigger
from sources.webhook import WebhookSource

WORKFLOWS = [
    WorkflowSpec(name="greeting", tasks=(TaskSpec(id="say", handler="noop"),)),
    WorkflowSpec(
        name="open_flow",
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(WebhookTrigger(hook="open", auth="none"),),
    ),
    WorkflowSpec(
        name="signed_flow",
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(WebhookTrigger(hook="signed"),),
    ),
]
MAX_BODY = 4096

#: Path values: too large for a bigint, negative, zero, not numbers, NUL, encoded
#: slashes and dots, invalid UTF-8 and a lone surrogate once decoded, very long.
HOSTILE_PATH_VALUES = [
    "99999999999999999999999",
    "9223372036854775808",
    "-1",
    "0",
    "1.5",
    "abc",
    "%00",
    "a%00b",
    "%2F..%2F..",
    "%ff%fe",
    "%ED%A0%80",
    "%F0%9F%92%A5",
    "x" * 4000,
    "1" * 4000,
]
HOSTILE_QUERIES = [
    "limit=-1",
    "limit=0",
    "limit=99999999999999999999999",
    "limit=abc",
    "limit=1.5",
    "limit=%00",
    "limit=",
    "limit=%EF%BC%91",  # a full-width digit: int() would take it
    "state=bogus",
    "state=%00",
    "workflow=%00",
    "workflow=" + "w" * 4000,
    "unknown=1",
    "%00=1",
]


def _nested(depth: int) -> bytes:
    return b'{"params": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


JSON = {"Content-Type": "application/json"}
#: (label, body, headers): bodies a client may send to any POST route.
HOSTILE_BODIES: list[tuple[str, bytes | None, dict[str, str]]] = [
    ("no body, no type", None, {}),
    ("no body", None, JSON),
    ("empty", b"", JSON),
    ("text/plain", b'{"params": {}}', {"Content-Type": "text/plain"}),
    ("form", b"params=1", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("latin-1", b'{"params": {}}', {"Content-Type": "application/json; charset=latin-1"}),
    ("NUL in a value", b'{"params": {"a": "a\\u0000b"}}', JSON),
    ("NUL in a key", b'{"params": {"a\\u0000": 1}}', JSON),
    ("NUL in status", b'{"status": "\\u0000"}', JSON),
    ("array", b"[]", JSON),
    ("string", b'"x"', JSON),
    ("number", b"1", JSON),
    ("null", b"null", JSON),
    ("invalid JSON", b"{oops", JSON),
    ("invalid UTF-8", b'{"params": {"a": "\xff\xfe"}}', JSON),
    ("nested too deep", _nested(200), JSON),
    ("nested past the parser", _nested(1100), JSON),
    ("params not an object", b'{"params": [1]}', JSON),
    ("params a string", b'{"params": "x"}', JSON),
    ("status a number", b'{"status": 5}', JSON),
    ("status unknown", b'{"status": "maybe"}', JSON),
    ("huge number", b'{"params": {"n": 1e400}}', JSON),
    ("huge integer", b'{"params": {"n": 99999999999999999999999999999}}', JSON),
    ("over the size limit", b'{"params": {"a": "' + b"x" * (MAX_BODY + 70_000) + b'"}}', JSON),
]
HOSTILE_HEADERS = [
    {"Idempotency-Key": "k" * 4000},
    {"X-Actor": "admin@corp"},
    {"Origin": "https://evil.example"},
]
OTHER_METHODS = ["PUT", "PATCH", "DELETE", "OPTIONS"]
#: Path values that reach a route's handler, where the parameter's name alone is ambiguous.
VALID_FOR = {"/hooks/{name}": [{"name": "open"}, {"name": "signed"}]}


@dataclass(frozen=True)
class Route:
    method: str
    formatter: str

    @property
    def params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.formatter)

    def path(self, **values: str) -> str:
        path = self.formatter
        for name, value in values.items():
            path = path.replace("{" + name + "}", value)
        return path


def routes_of(app: Any) -> list[Route]:
    found = []
    for resource in app.router.resources():
        info = resource.get_info()
        formatter = info.get("formatter") or info.get("path")
        if formatter is None and "prefix" in info:  # static files: walk a real one
            formatter = info["prefix"] + "/app.js"
        assert formatter, f"a route with neither path nor formatter: {info}"
        for route in resource:
            found.append(Route(route.method, formatter))
    return found


@dataclass
class Walk:
    http: aiohttp.ClientSession
    base: str
    valid: dict[str, str]
    answers: int = 0

    async def check(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        what: str = "",
    ) -> int:
        url = URL(self.base + path, encoded=True)
        async with self.http.request(method, url, data=body, headers=headers or {}) as resp:
            status = resp.status
            content_type = resp.headers.get("Content-Type", "")
            text = await resp.read()
        self.answers += 1
        where = f"{method} {path[:120]} ({what})"
        assert status < 500, f"{where}: {status} {text[:300]!r}"
        if status >= 400:
            assert content_type.startswith("application/problem+json"), (
                f"{where}: {status} answered as {content_type!r}: {text[:200]!r}"
            )
            if method != "HEAD":
                problem = orjson.loads(text)
                assert problem["status"] == status, where
                assert problem["detail"] and problem["error"] == problem["detail"], where
                assert problem["title"] and problem["type"] == "about:blank", where
                assert b"Traceback" not in text, where
        return status

    def valid_paths(self, route: Route) -> list[str]:
        """The route's path with values that find something (a workflow, a hook)."""
        choices = VALID_FOR.get(route.formatter) or [{}]
        return [
            route.path(
                **{name: chosen.get(name) or self.valid.get(name, "x") for name in route.params}
            )
            for chosen in choices
        ]

    def paths(self, route: Route) -> Iterator[tuple[str, str]]:
        """The route's valid paths, then each parameter made hostile."""
        for path in self.valid_paths(route):
            yield path, "valid path"
        valid = {name: self.valid.get(name, "x") for name in route.params}
        for name in route.params:
            for value in HOSTILE_PATH_VALUES:
                yield route.path(**{**valid, name: value}), f"{name}={value[:20]}"


@pytest.fixture
async def walk(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Walk, list[Route]]]:
    monkeypatch.setenv("ORCHESTRATOR_WEBHOOK_SECRET_SIGNED", "whsec_" + "A" * 32)
    settings = Settings(
        http_port=0, worker_slots=0, max_payload_bytes=MAX_BODY, intake_batch_delay_s=0
    )
    async with Orchestrator(
        settings,
        db_url,
        registry=builtin_registry(),
        workflows=WORKFLOWS,
        sources=[WebhookSource()],
        http=True,
    ) as orch:
        assert orch.http is not None and orch.engine is not None
        run_id = await orch.engine.trigger("greeting")
        valid = {"name": "greeting", "run_id": str(run_id), "token": "t" * 43}
        async with aiohttp.ClientSession() as http:
            yield (
                Walk(http, f"http://127.0.0.1:{orch.http.port}", valid),
                routes_of(orch.http.app),
            )


async def test_the_walk_covers_every_route_of_the_application(
    walk: tuple[Walk, list[Route]],
) -> None:
    _, routes = walk
    formatters = {r.formatter for r in routes}
    # The walk enumerates the router; this only proves it sees the routes that exist today.
    assert {
        "/healthz",
        "/readyz",
        "/api/v1/workflows/{name}/runs",
        "/api/v1/callbacks/{token}",
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/hooks/{name}",
    } <= formatters


async def test_hostile_paths_and_queries_never_get_a_5xx(
    walk: tuple[Walk, list[Route]],
) -> None:
    w, routes = walk
    for route in routes:
        for path, what in w.paths(route):
            body, headers = (b"{}", JSON) if route.method == "POST" else (None, {})
            await w.check(route.method, path, body=body, headers=headers, what=what)
            if route.method in ("GET", "HEAD"):
                for query in HOSTILE_QUERIES:
                    await w.check(route.method, f"{path}?{query}", what=f"{what}, {query[:30]}")
    assert w.answers > 200


async def test_hostile_bodies_and_headers_never_get_a_5xx(
    walk: tuple[Walk, list[Route]],
) -> None:
    w, routes = walk
    for route in routes:
        for path in w.valid_paths(route):
            for label, body, headers in HOSTILE_BODIES:
                await w.check(route.method, path, body=body, headers=headers, what=label)
            for extra in HOSTILE_HEADERS:
                body = b'{"params": {}}' if route.method == "POST" else None
                await w.check(
                    route.method, path, body=body, headers={**JSON, **extra}, what=str(extra)[:40]
                )
            for method in OTHER_METHODS:
                if method != route.method:
                    await w.check(method, path, body=b"{}", headers=JSON, what="other method")


async def test_unknown_routes_and_methods_answer_a_json_problem(
    walk: tuple[Walk, list[Route]],
) -> None:
    w, _ = walk
    for path in ["/api/v1/nope", "/api/v1/", "/api/v2/runs", "/nope", "/api/v1/runs/1/extra"]:
        assert await w.check("GET", path, what="unknown route") == 404
    status = await w.check("DELETE", "/api/v1/runs", what="unknown method")
    assert status == 405
    async with w.http.delete(w.base + "/api/v1/runs") as resp:
        assert set(resp.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


@pytest.mark.parametrize(
    ("path", "name", "detail"),
    [
        ("/api/v1/runs?limit=-1", "limit", "'limit' must be an integer from 1 to 1000"),
        ("/api/v1/runs?limit=abc", "limit", "'limit' must be an integer from 1 to 1000"),
        ("/api/v1/runs?limit=5000", "limit", "'limit' must be an integer from 1 to 1000"),
        ("/api/v1/runs?state=bogus", "state", "unknown state 'bogus'"),
        ("/api/v1/runs?workflow=a%00b", "workflow", "query parameter 'workflow' contains a NUL"),
        (
            "/api/v1/runs/99999999999999999999999",
            "run_id",
            "run_id must be an integer from 1 to 9223372036854775807",
        ),
        ("/api/v1/runs/-1", "run_id", "run_id must be an integer from 1"),
        ("/api/v1/runs/abc", "run_id", "run_id must be an integer from 1"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(
    walk: tuple[Walk, list[Route]], path: str, name: str, detail: str
) -> None:
    w, _ = walk
    async with w.http.get(URL(w.base + path, encoded=True)) as resp:
        problem = await resp.json()
    assert resp.status == 400, problem
    assert problem["detail"].startswith(detail)
    assert problem["errors"][0]["name"] == name


async def test_a_nul_in_params_is_a_400_naming_the_field(
    walk: tuple[Walk, list[Route]],
) -> None:
    w, _ = walk
    path = "/api/v1/workflows/greeting/runs"
    async with w.http.post(w.base + path, json={"params": {"who": {"name": "a\x00b"}}}) as resp:
        problem = await resp.json()
    assert resp.status == 400, problem
    assert problem["detail"] == (
        "body.params.who.name contains a NUL character (\\u0000), which PostgreSQL cannot store"
    )
    assert problem["errors"] == [
        {"in": "body", "name": "body.params.who.name", "detail": problem["detail"]}
    ]
