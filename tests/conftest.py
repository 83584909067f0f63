"""Fixtures shared by the whole suite.

Integration tests get a fresh database per test, copied from a template that
was migrated once per session. The server is ``ORCHESTRATOR_TEST_DATABASE_URL``
when set, else the local one on 127.0.0.1:5432 when it answers, else an
embedded PostgreSQL started for the session (``ORCHESTRATOR_TEST_EMBEDDED=1``
forces that).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings

from orchestrator.embedded import EmbeddedPostgres
from orchestrator.engine import Engine
from orchestrator.store import Database, connect, create_database, drop_database

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# Property tests are bounded by the suite's per-test timeout, not by
# Hypothesis's 200 ms per example: on a loaded runner an example that imports
# or warms a cache runs late, and the deadline then fails a correct test.
hypothesis_settings.register_profile("suite", deadline=None)
hypothesis_settings.load_profile("suite")


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    # ORCHESTRATOR_TEST_EMBEDDED=1 skips the local server: how a fresh machine runs.
    if not os.environ.get("ORCHESTRATOR_TEST_EMBEDDED") and asyncio.run(_reachable(LOCAL_URL)):
        yield LOCAL_URL
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", delete_on_stop=True)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    name = f"orch_tmpl_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        db = await connect(await create_database(pg_admin_url, name), size=2)
        try:
            await db.migrate()
        finally:
            await db.close()

    asyncio.run(create())
    yield name
    asyncio.run(drop_database(pg_admin_url, name))


@pytest.fixture
async def db_url(pg_admin_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"orch_t_{uuid.uuid4().hex[:12]}"
    yield await create_database(pg_admin_url, name, template=template_db)
    await drop_database(pg_admin_url, name)


@pytest.fixture
async def empty_db_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A database with nothing in it, not even schema_migrations."""
    name = f"orch_empty_{uuid.uuid4().hex[:12]}"
    yield await create_database(pg_admin_url, name)
    await drop_database(pg_admin_url, name)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await connect(db_url, size=8)
    yield database
    await database.close()


@pytest.fixture
async def engine(db: Database) -> Engine:
    return Engine(db, lease_s=5.0)


@pytest.fixture
def examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"
