"""What the UI stands on, over real HTTP without a browser: the page and its
files at ``/``, sign-in by cookie with its CSRF rule, a workflow's laid-out
graph and versions, and the live stream of a run, read once per change for
every watcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.engine import RunRequest
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database
from orchestrator.tokens import Role, create

SPEC = WorkflowSpec(
    name="pair",
    params={"date": {"type": "string", "format": "date", "default": "2026-01-01"}},
    tasks=(
        TaskSpec(id="first", handler="noop"),
        TaskSpec(id="second", handler="noop", upstream=("first",), pool="slow"),
    ),
)


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The data of each server-sent event on ``resp``."""
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    yield orjson.loads(line[6:])


async def test_cookie_sign_in_needs_the_csrf_header_to_change_anything(
    db_url: str, db: Database
) -> None:
    operator, _ = await create(db, "ops", Role.OPERATOR, actor="test")
    settings = suite_settings(api_auth="tokens")
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[SPEC], http=True
    ) as orch:
        assert orch.http is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        # unsafe: the jar keeps cookies of an IP address (127.0.0.1) too
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(base_url=base, cookie_jar=jar) as http:
            async with http.get("/") as resp:
                assert (
                    resp.status == 200
                    and "default-src 'self'" in resp.headers["Content-Security-Policy"]
                )
                assert '<script type="module" src="/ui/app.js">' in await resp.text()
            async with http.get("/ui/app.js") as resp:
                assert resp.status == 200
            async with http.get("/api/v1/session") as resp:
                assert (await resp.json())["role"] is None  # tokens needed: sign in
            async with http.post("/api/v1/session", json={"token": "wrong"}) as resp:
                assert resp.status == 401
            async with http.post("/api/v1/session", json={"token": operator}) as resp:
                assert resp.status == 200
                info = await resp.json()
                cookie = resp.headers["Set-Cookie"]
            assert info["name"] == "ops" and info["role"] == "operator" and info["csrf"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert operator not in orjson.dumps(info).decode()  # the page never sees it

            async with http.get("/api/v1/workflows") as resp:
                assert resp.status == 200  # reading by cookie needs no header
            pause = "/api/v1/workflows/pair/pause"
            async with http.post(pause, json={"reason": "x"}) as resp:
                assert resp.status == 403 and "X-CSRF-Token" in (await resp.json())["detail"]
            async with http.post(
                pause, json={"reason": "x"}, headers={"X-CSRF-Token": "0" * 64}
            ) as resp:
                assert resp.status == 403
            async with http.post(
                pause, json={"reason": "x"}, headers={"X-CSRF-Token": info["csrf"]}
            ) as resp:
                assert resp.status == 200 and (await resp.json())["changed"]
            async with http.delete("/api/v1/session") as resp:
                assert resp.status == 200
            async with http.get("/api/v1/workflows") as resp:
                assert resp.status == 401  # signed out


async def test_graph_versions_and_a_live_run_read_once_for_every_watcher(
    db_url: str,
) -> None:
    settings = suite_settings()
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[SPEC], http=True
    ) as orch:
        assert orch.http is not None and orch.db is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            async with http.get("/api/v1/workflows/pair/graph") as resp:
                graph = await resp.json()
            assert [n["id"] for n in graph["nodes"]] == ["first", "second"]
            assert graph["nodes"][1]["pool"] == "slow" and graph["nodes"][1]["x"] > 0
            assert graph["params"][0]["default"] == "2026-01-01"
            async with http.get("/api/v1/workflows/pair/graph?version=nope") as resp:
                assert resp.status == 404 and "no version" in (await resp.json())["detail"]
            async with http.get("/api/v1/workflows/nope/graph") as resp:
                assert resp.status == 404
            async with http.get("/api/v1/live") as resp:
                assert resp.status == 400

            async with http.post("/api/v1/workflows/pair/runs", json={}) as resp:
                [run_id] = (await resp.json())["run_ids"]
            await wait_for_runs(orch.db, [run_id], timeout=20)
            async with http.get("/api/v1/workflows/pair/versions") as resp:
                [version] = (await resp.json())["items"]
            assert version["current"] and version["runs"] == {"success": 1}

            streams = [
                await http.get(f"/api/v1/live?run={run_id}", timeout=aiohttp.ClientTimeout(20))
                for _ in range(20)
            ]
            try:
                firsts = await asyncio.gather(*(anext(events(s)) for s in streams))
                for first in firsts:
                    assert first["run"]["state"] == "success"
                    assert {t["task_id"]: t["state"] for t in first["tasks"]} == {
                        "first": "success",
                        "second": "success",
                    }
                hub_rounds = orch.http.app[live_hub_key()].rounds
                # Twenty watchers of one run cost a round or two, not twenty.
                assert hub_rounds <= 3

                async with http.post(
                    f"/api/v1/runs/{run_id}/clear", json={"tasks": ["second"], "reason": "t"}
                ) as resp:
                    assert resp.status == 200
                seen = events(streams[0])

                async def rerun_seen() -> bool:
                    message = await anext(seen)
                    return any(
                        s["task_id"] == "second" and s["to_state"] == "scheduled"
                        for s in message["transitions"]
                    )

                await eventually(rerun_seen, timeout=10, what="the cleared task streamed")
            finally:
                for s in streams:
                    s.close()


async def test_a_transition_committed_after_a_newer_one_still_streams(
    db_url: str, db: Database
) -> None:
    """Transition ids are drawn before commit: a stream must still carry a row
    that became visible after one with a higher id was sent."""
    async with Orchestrator(
        suite_settings(), db_url, registry=builtin_registry(), workflows=[SPEC], http=True
    ) as orch:
        assert orch.http is not None and orch.db is not None and orch.engine is not None
        [run_id] = await orch.engine.create_runs([RunRequest("pair")], actor="test")
        await wait_for_runs(orch.db, [run_id], timeout=20)
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{orch.http.port}") as http:
            stream = await http.get(f"/api/v1/live?run={run_id}", timeout=aiohttp.ClientTimeout(20))
            seen = events(stream)
            reasons: list[str] = []

            async def streamed(reason: str) -> bool:
                async with asyncio.timeout(5):
                    message = await anext(seen)
                reasons.extend(s["reason"] for s in message["transitions"])
                return reason in reasons

            try:
                first = await anext(seen)
                assert list(first) == ["full", "run", "tasks", "transitions"] and first["full"]
                # The run is said once: not in each of its transitions.
                assert first["transitions"] and "run_id" not in first["transitions"][0]
                assert {"id", "task_id", "to_state", "at", "actor"} <= set(first["transitions"][0])
                insert = (
                    "INSERT INTO transitions (run_id, to_state, actor, reason)"
                    " VALUES ($1, 'success', 'test', $2)"
                )
                async with db.pool.acquire() as early, db.pool.acquire() as later:
                    held = early.transaction()
                    await held.start()
                    await early.execute(insert, run_id, "drawn first")
                    await later.execute(insert, run_id, "committed first")
                    orch.db.committed()  # as the engine's commits wake the live view
                    await eventually(lambda: streamed("committed first"), timeout=15)
                    await held.commit()
                orch.db.committed()
                await eventually(lambda: streamed("drawn first"), timeout=15, what="late row")
                assert reasons.count("drawn first") == reasons.count("committed first") == 1
            finally:
                stream.close()
            hub = orch.http.app[live_hub_key()]

            async def left() -> bool:
                return bool(hub.watchers == 0)

            # The run sends nothing more: the hub still finds the page gone.
            await eventually(left, timeout=10, what="the closed stream's watcher to leave")


def live_hub_key() -> Any:
    from orchestrator.ui.live import HUB_KEY

    return HUB_KEY


pytestmark = pytest.mark.timeout(60)
