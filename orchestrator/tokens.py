"""API tokens: who may call ``/api/v1``, and as what role.

A token is 256 random bits, shown once when it is created and stored only as
its SHA-256. Its name is the actor recorded in events, transitions and the
audit log. Roles are ordered: ``viewer`` reads, ``operator`` also acts on
runs and workflows (trigger, clear, cancel, mark, pause, redrive, backfill),
``admin`` also manages tokens and pools.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

import asyncpg

from orchestrator import audit
from orchestrator.errors import OrchestratorError
from orchestrator.store import SQL, Database

#: What every token starts with, so a leaked one is recognisable (and scannable).
PREFIX = "orch_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}\Z")


class Role(IntEnum):
    """Each role may do what the ones below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(r.label for r in cls)
            raise TokenError(f"unknown role {name!r}; one of {known}") from None


class TokenError(OrchestratorError):
    """A token cannot be created or revoked as asked."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


async def create(
    db: Database,
    name: str,
    role: Role,
    *,
    actor: str,
    expires_at: datetime | None = None,
    reason: str = "",
) -> tuple[str, TokenRecord]:
    """A new token (returned once, never stored) and its record."""
    if not _NAME.match(name):
        raise TokenError(
            f"token name {name!r} must be 1-100 letters, digits or _.@:- "
            "and start with a letter or digit"
        )
    token = new_token()
    async with db.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            SQL.create_token, name, role.label, token_hash(token), actor, expires_at
        )
        if row is None:
            raise TokenError(
                f"a token named {name!r} exists (names are never reused: they are "
                "actors in the history); pick another name"
            )
        await audit.record(
            conn,
            audit.Action(
                actor,
                "token",
                reason,
                detail={"token": name, "created": role.label, "expires_at": _iso(expires_at)},
            ),
        )
    return token, TokenRecord(**dict(row))


async def revoke(db: Database, name: str, *, actor: str, reason: str = "") -> None:
    async with db.pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(SQL.revoke_token, name) is None:
            raise TokenError(f"no active token named {name!r}")
        await audit.record(
            conn, audit.Action(actor, "token", reason, detail={"token": name, "revoked": True})
        )


async def listed(db: Database) -> list[TokenRecord]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.list_tokens)
    return [TokenRecord(**dict(r)) for r in rows]


async def lookup(conn: asyncpg.Connection, token: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(SQL.token_by_hash, token_hash(token))
    return row


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()
