"""API tokens and roles over real HTTP: who may read, act and manage; the
token's name is the recorded actor; revoked and expired tokens are refused
within the cache time."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from handlers import builtin_registry
from orchestrator import audit, tokens
from orchestrator.app import Orchestrator
from orchestrator.auth import AuthMode, required_role, tokens_required
from orchestrator.clock import SYSTEM_CLOCK, ManualClock
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database
from orchestrator.tokens import Role

SPEC = WorkflowSpec(name="greeting", tasks=(TaskSpec(id="say", handler="noop"),))


class Api:
    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.http = http

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        json: Any = None,
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.base + path, headers=sent, json=json) as resp:
            body = await resp.json(content_type=None) if resp.content_length != 0 else None
            return resp.status, body, resp.headers


@asynccontextmanager
async def served(
    db_url: str, *, auth: AuthMode = "tokens", clock: ManualClock | None = None
) -> AsyncIterator[tuple[Orchestrator, Api]]:
    settings = Settings(worker_slots=1, http_port=0, api_auth=auth, api_token_cache_s=5.0)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[SPEC], http=True, clock=clock
    ) as orch:
        assert orch.http is not None
        async with aiohttp.ClientSession() as http:
            yield orch, Api(f"http://127.0.0.1:{orch.http.port}", http)


async def make(db: Database, name: str, role: Role, **kw: Any) -> str:
    token, _record = await tokens.create(db, name, role, actor="test", **kw)
    return token


TRIGGER: tuple[str, str, dict[str, Any]] = ("POST", "/api/v1/workflows/greeting/runs", {"json": {}})


async def test_each_role_may_do_what_it_is_for_and_no_more(db_url: str) -> None:
    async with served(db_url) as (orch, api):
        assert orch.db is not None
        viewer = await make(orch.db, "dash", Role.VIEWER)
        operator = await make(orch.db, "ci-bot", Role.OPERATOR)
        admin = await make(orch.db, "root", Role.ADMIN)
        method, path, kw = TRIGGER

        # No token, a made-up one, the wrong scheme: 401, all alike.
        for token in (None, "orch_not-a-token"):
            status, body, headers = await api.call("GET", "/api/v1/runs", token)
            assert status == 401 and "valid API token" in body["detail"]
            assert headers["WWW-Authenticate"].startswith("Bearer")
        status, _b, _h = await api.call(
            "GET", "/api/v1/runs", headers={"Authorization": f"Basic {viewer}"}
        )
        assert status == 401

        # viewer reads, may not act.
        assert (await api.call("GET", "/api/v1/runs", viewer))[0] == 200
        assert (await api.call("GET", "/api/v1/audit", viewer))[0] == 200
        status, body, _h = await api.call(method, path, viewer, **kw)
        assert status == 403 and "viewer" in body["detail"] and "operator" in body["detail"]

        # operator acts, as itself: a forged X-Actor changes nothing.
        status, body, _h = await api.call(
            method, path, operator, headers={"X-Actor": "admin@example"}, **kw
        )
        assert status == 201
        async with orch.db.pool.acquire() as conn:
            actor = await conn.fetchval("SELECT actor FROM runs WHERE id = $1", body["run_ids"][0])
            event_actor = await conn.fetchval("SELECT actor FROM events")
        assert actor == event_actor == "ci-bot"
        # ... but may not manage tokens or pools.
        for m, p, body_json in (
            ("GET", "/api/v1/tokens", None),
            ("POST", "/api/v1/tokens", {"name": "x", "role": "viewer"}),
            ("PUT", "/api/v1/pools/gpu", {"slots": 2}),
        ):
            assert (await api.call(m, p, operator, json=body_json))[0] == 403, (m, p)

        # admin manages; its actions are audited under its name.
        status, body, _h = await api.call(
            "POST", "/api/v1/tokens", admin, json={"name": "etl", "role": "operator"}
        )
        assert status == 201 and body["token"].startswith("orch_") and body["role"] == "operator"
        assert (await api.call("GET", "/api/v1/runs", body["token"]))[0] == 200
        status, listed, _h = await api.call("GET", "/api/v1/tokens", admin)
        assert status == 200 and {t["name"] for t in listed["items"]} == {
            "dash",
            "ci-bot",
            "root",
            "etl",
        }
        assert all("token" not in t and "token_hash" not in t for t in listed["items"])
        status, _b, _h = await api.call(
            "PUT", "/api/v1/pools/gpu", admin, json={"slots": 2, "reason": "quota"}
        )
        assert status == 200
        status, body, _h = await api.call("PUT", "/api/v1/pools/gpu", admin, json={"slots": 0})
        assert status == 400 and body["errors"][0]["name"] == "slots"
        status, body, _h = await api.call(
            "POST", "/api/v1/tokens", admin, json={"name": "etl", "role": "viewer"}
        )
        assert status == 409 and "exists" in body["detail"]
        entries = await audit.entries(orch.db)
        assert [(e.actor, e.action) for e in entries[:2]] == [("root", "pool"), ("root", "token")]

        # Outside /api/v1, and callbacks (their own token in the URL): no API token.
        async with api.http.get(api.base + "/healthz") as resp:
            assert resp.status == 200
        status, _b, _h = await api.call("POST", "/api/v1/callbacks/nonesuch", json={})
        assert status != 401


async def test_revoked_and_expired_tokens_are_refused_within_the_cache_time(
    db_url: str,
) -> None:
    clock = ManualClock(SYSTEM_CLOCK.now())
    async with served(db_url, clock=clock) as (orch, api):
        assert orch.db is not None and orch.http is not None
        kept = await make(orch.db, "kept", Role.VIEWER)
        brief = await make(orch.db, "brief", Role.VIEWER, expires_at=clock.now() + timedelta(60))
        for _ in range(20):
            assert (await api.call("GET", "/api/v1/runs", kept))[0] == 200
        assert (await api.call("GET", "/api/v1/runs", brief))[0] == 200

        await tokens.revoke(orch.db, "kept", actor="test", reason="leaked")
        # Still trusted from the cache for up to 5 s, then refused.
        assert (await api.call("GET", "/api/v1/runs", kept))[0] == 200
        await clock.advance(5)
        assert (await api.call("GET", "/api/v1/runs", kept))[0] == 401

        await clock.advance(timedelta(days=60))
        assert (await api.call("GET", "/api/v1/runs", brief))[0] == 401


async def test_lookups_are_cached_so_load_costs_no_database_round_trips(db_url: str) -> None:
    async with served(db_url) as (orch, api):
        assert orch.db is not None
        token = await make(orch.db, "load", Role.VIEWER)
        for _ in range(50):
            assert (await api.call("GET", "/api/v1/runs", token))[0] == 200
        for _ in range(50):
            assert (await api.call("GET", "/api/v1/runs", "orch_guess"))[0] == 401
        app = orch.http.app if orch.http is not None else None
        assert app is not None
        from orchestrator.api import AUTH_KEY

        assert app[AUTH_KEY].lookups == 2


async def test_an_open_api_on_loopback_still_checks_a_token_that_is_sent(db_url: str) -> None:
    async with served(db_url, auth="auto") as (orch, api):
        assert orch.db is not None
        assert (await api.call("GET", "/api/v1/runs"))[0] == 200
        method, path, kw = TRIGGER
        status, _body, _h = await api.call(method, path, **kw)
        assert status == 201
        assert (await api.call("GET", "/api/v1/runs", "orch_wrong"))[0] == 401
        viewer = await make(orch.db, "dash", Role.VIEWER)
        assert (await api.call(method, path, viewer, **kw))[0] == 403


async def test_tokens_are_stored_only_as_hashes(db: Database) -> None:
    token, record = await tokens.create(db, "ci", Role.OPERATOR, actor="cli:ana")
    assert len(token) >= len("orch_") + 43  # 256 bits, base64url
    assert record.name == "ci" and record.role == "operator"
    async with db.pool.acquire() as conn:
        dump = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM api_tokens t")
        audit_dump = await conn.fetchval("SELECT string_agg(a::text, ' ') FROM audit a")
    assert token not in dump and token[5:] not in dump
    assert token not in audit_dump
    with pytest.raises(tokens.TokenError, match="never reused"):
        await tokens.create(db, "ci", Role.VIEWER, actor="cli:ana")
    with pytest.raises(tokens.TokenError, match="must be 1-100"):
        await tokens.create(db, "bad name", Role.VIEWER, actor="cli:ana")
    await tokens.revoke(db, "ci", actor="cli:ana")
    with pytest.raises(tokens.TokenError, match="no active token"):
        await tokens.revoke(db, "ci", actor="cli:ana")


def test_the_role_each_route_needs() -> None:
    assert required_role("GET", "/api/v1/runs") == Role.VIEWER
    assert required_role("POST", "/api/v1/workflows/x/runs") == Role.OPERATOR
    assert required_role("POST", "/api/v1/runs/1/clear") == Role.OPERATOR
    assert required_role("GET", "/api/v1/tokens") == Role.ADMIN
    assert required_role("GET", "/api/v1/pools") == Role.VIEWER
    assert required_role("PUT", "/api/v1/pools/gpu") == Role.ADMIN
    assert required_role("POST", "/api/v1/callbacks/abc") is None
    assert required_role("OPTIONS", "/api/v1/runs") is None
    assert required_role("GET", "/healthz") is None
    assert required_role("POST", "/hooks/sales") is None


def test_tokens_are_required_off_loopback_unless_the_api_is_opened_explicitly() -> None:
    assert not tokens_required("auto", "127.0.0.1")
    assert not tokens_required("auto", "::1")
    assert tokens_required("auto", "0.0.0.0")
    assert tokens_required("auto", "10.1.2.3")
    assert tokens_required("tokens", "127.0.0.1")
    assert not tokens_required("none", "0.0.0.0")


def test_the_tokens_command_shows_a_token_once_and_manages_it(db_url: str) -> None:
    import json

    from cli_process import cli_runner

    run = cli_runner(db_url)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run("tokens", *args)

    made = cli("create", "ci-bot", "--role", "operator", "--expires", "30d", "--reason", "CI")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("orch_") and "shown only now" in made.stderr
    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)["items"]
    assert entry["name"] == "ci-bot" and entry["role"] == "operator"
    assert entry["state"] == "active" and entry["expires_at"] is not None
    assert token not in listed.stdout and token not in cli("list").stdout
    assert cli("create", "ci-bot", "--role", "viewer").returncode == 2
    bad = cli("create", "x", "--role", "root")
    assert bad.returncode == 2 and "'root' is not one of" in bad.stderr
    past = cli("create", "x", "--role", "viewer", "--expires", "2001-01-01")
    assert past.returncode == 2 and "in the past" in past.stderr
    assert cli("revoke", "ci-bot", "--reason", "rotated").returncode == 0
    assert json.loads(cli("list", "--json").stdout)["items"][0]["state"] == "revoked"
    again = cli("revoke", "ci-bot")
    assert again.returncode == 2 and "no active token named 'ci-bot'" in again.stderr


async def test_run_and_audit_lists_are_cursor_pages_stable_under_new_runs(db_url: str) -> None:
    async with served(db_url, auth="auto") as (orch, api):
        assert orch.engine is not None and orch.db is not None
        for _ in range(5):
            await orch.engine.trigger("greeting")
        status, page, _h = await api.call("GET", "/api/v1/runs?limit=2&workflow=greeting")
        assert status == 200 and [r["id"] for r in page["items"]] == [5, 4]
        assert page["next"].startswith("/api/v1/runs?") and "workflow=greeting" in page["next"]
        await orch.engine.trigger("greeting")  # a new run does not shift the pages
        seen = [r["id"] for r in page["items"]]
        while page["next"] is not None:
            status, page, _h = await api.call("GET", page["next"])
            assert status == 200
            seen += [r["id"] for r in page["items"]]
        assert seen == [5, 4, 3, 2, 1]
        status, body, _h = await api.call("GET", "/api/v1/runs?cursor=abc")
        assert status == 400 and body["errors"][0] == {
            "in": "query",
            "name": "cursor",
            "detail": body["errors"][0]["detail"],
        }
        status, body, _h = await api.call("GET", "/api/v1/runs?state=lost")
        assert status == 400 and body["errors"][0]["name"] == "state"

        for slots in (1, 2, 3):
            await orch.engine.set_pool("p", slots, actor="ops")
        status, page, _h = await api.call("GET", "/api/v1/audit?limit=2&action=pool")
        assert [e["detail"]["slots"] for e in page["items"]] == [3, 2]
        status, page, _h = await api.call("GET", page["next"])
        assert [e["detail"]["slots"] for e in page["items"]] == [1] and page["next"] is None
