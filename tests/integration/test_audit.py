"""The audit log: operator actions with actor and reason, append-only."""

from __future__ import annotations

import asyncpg
import pytest
from cli_process import cli_runner

from orchestrator import audit
from orchestrator.engine import Engine
from orchestrator.store import Database


async def test_a_pool_change_is_recorded_once_with_actor_and_reason(
    db: Database, engine: Engine
) -> None:
    await engine.set_pool("gpu", 4, actor="cli:ana", reason="provider quota raised")
    await engine.set_pool("gpu", 4, actor="cli:ana", reason="the same again")  # no change
    await engine.set_pool("gpu", 2, actor="api:10.0.0.7", reason="")

    found = await audit.entries(db)
    assert [(e.actor, e.action, e.reason, e.detail) for e in found] == [
        ("api:10.0.0.7", "pool", "", {"pool": "gpu", "slots": 2}),
        ("cli:ana", "pool", "provider quota raised", {"pool": "gpu", "slots": 4}),
    ]
    assert [e.id for e in await audit.entries(db, before=found[0].id)] == [found[1].id]
    assert await audit.entries(db, action="clear") == []


async def test_the_audit_log_refuses_changes_and_deletes(db: Database, engine: Engine) -> None:
    await engine.set_pool("gpu", 3, actor="cli:ana", reason="why")
    async with db.pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE audit SET actor = 'someone else'")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit")
        assert await conn.fetchval("SELECT actor FROM audit") == "cli:ana"


def test_an_unknown_action_is_refused_before_anything_is_written() -> None:
    with pytest.raises(ValueError, match="unknown audit action 'delete'"):
        audit.Action("cli:ana", "delete")


def test_the_cli_records_its_os_user_and_lists_the_log(db_url: str) -> None:
    import getpass

    cli = cli_runner(db_url)

    assert cli("audit").stdout.strip() == "no operator actions recorded"
    changed = cli("pools", "gpu", "3", "--reason", "quota")
    assert changed.returncode == 0, changed.stderr
    listed = cli("audit", "--action", "pool")
    assert listed.returncode == 0, listed.stderr
    assert f"cli:{getpass.getuser()}" in listed.stdout
    assert "quota" in listed.stdout
    refused = cli("audit", "--action", "delete")
    assert refused.returncode == 2
    assert "'delete' is not one of" in refused.stderr
