"""Ordered ``.sql`` migrations, applied once each, safe when processes race.

The core's migrations (``orchestrator/store/migrations``) come first, then
those of each source plugin's ``store`` package (its ``migrations`` folder),
in plugin order: a source's tables may refer to the core's, never the other
way round. Each package numbers its own (``0001_name.sql``, ...);
``schema_migrations`` records (package, version, name).

A migration that moved from the core into a source package keeps its number
and name, so a database that applied it before the move does not apply it
again: its row is re-attributed to the package instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

# Any fixed key: every process that migrates takes the same lock, so two
# starting together apply each migration once, one after the other.
_MIGRATION_LOCK = 0x6F7263686D6967  # "orchmig"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

#: The package of the core's migrations, as ``schema_migrations`` names it.
CORE = "orchestrator"
_CORE_RESOURCES = "orchestrator.store"

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    package     text NOT NULL DEFAULT 'orchestrator',
    version     integer NOT NULL,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (package, version));
-- Databases from before source packages had migrations of their own: every
-- row so far was the core's, keyed by version alone.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema()
                     AND table_name = 'schema_migrations' AND column_name = 'package') THEN
        ALTER TABLE schema_migrations
            ADD COLUMN package text NOT NULL DEFAULT 'orchestrator',
            DROP CONSTRAINT schema_migrations_pkey,
            ADD PRIMARY KEY (package, version);
    END IF;
END $$;
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    package: str = CORE

    @property
    def label(self) -> str:
        """``0005_deferrals`` for the core's, ``sources/0004_schedules`` for a package's."""
        own = f"{self.version:04d}_{self.name}"
        return own if self.package == CORE else f"{self.package}/{own}"


def _read(package: str, resource_package: str) -> list[Migration]:
    out = []
    for entry in resources.files(resource_package).joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            out.append(Migration(int(match[1]), match[2], entry.read_text("utf-8"), package))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations of {package} share a number: {versions}")
    return out


def _installed_stores() -> list[str]:
    # Read here rather than passed by every caller: migrating always covers
    # every installed source.
    from orchestrator.plugins import source_registry

    return source_registry().stores()


def available(packages: Sequence[str] | None = None) -> list[Migration]:
    """Every migration in the order it is applied: the core's, then those of
    ``packages`` (default: the stores of the installed source plugins)."""
    out = _read(CORE, _CORE_RESOURCES)
    for package in _installed_stores() if packages is None else packages:
        out += _read(package, package)
    return out


async def _done(
    conn: asyncpg.Connection, todo: list[Migration]
) -> tuple[set[Migration], list[Migration]]:
    """Those of ``todo`` recorded as applied; and among them, those recorded
    under the core before they moved into their package (same number and name,
    a number the core no longer has)."""
    rows = await conn.fetch("SELECT package, version, name FROM schema_migrations")
    recorded = {(r["package"], r["version"]) for r in rows}
    core_names = {(r["version"], r["name"]) for r in rows if r["package"] == CORE}
    core_files = {m.version for m in todo if m.package == CORE}
    moved = [
        m
        for m in todo
        if m.package != CORE
        and (m.package, m.version) not in recorded
        and m.version not in core_files
        and (m.version, m.name) in core_names
    ]
    return {m for m in todo if (m.package, m.version) in recorded} | set(moved), moved


async def migrate(conn: asyncpg.Connection, packages: Sequence[str] | None = None) -> list[str]:
    """Apply pending migrations; returns the labels applied (empty when up to date)."""
    applied: list[str] = []
    todo = available(packages)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(_BOOKKEEPING)
        done, moved = await _done(conn, todo)
        for m in moved:
            await conn.execute(
                "UPDATE schema_migrations SET package = $1"
                " WHERE package = $2 AND version = $3 AND name = $4",
                m.package,
                CORE,
                m.version,
                m.name,
            )
        for m in todo:
            if m in done:
                continue
            log.info("applying migration %s", m.label)
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (package, version, name) VALUES ($1, $2, $3)",
                m.package,
                m.version,
                m.name,
            )
            applied.append(m.label)
    return applied


async def pending(conn: asyncpg.Connection, packages: Sequence[str] | None = None) -> list[str]:
    todo = available(packages)
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return [m.label for m in todo]
    has_package = await conn.fetchval(
        """SELECT count(*) > 0 FROM information_schema.columns
           WHERE table_schema = current_schema()
             AND table_name = 'schema_migrations' AND column_name = 'package'"""
    )
    if not has_package:  # not migrated since source packages got their own
        versions = {
            r["version"]: r["name"]
            for r in await conn.fetch("SELECT version, name FROM schema_migrations")
        }
        return [m.label for m in todo if versions.get(m.version) != m.name]
    done, _moved = await _done(conn, todo)
    return [m.label for m in todo if m not in done]
