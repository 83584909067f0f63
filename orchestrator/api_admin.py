"""Admin routes: API tokens and pools (``admin`` role, :mod:`orchestrator.auth`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from orchestrator import tokens
from orchestrator.api_bodies import read_body, whole
from orchestrator.api_models import Page
from orchestrator.callers import actor_of
from orchestrator.openapi import operation
from orchestrator.problems import json_response, problem
from orchestrator.store import SQL


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    role: Literal["viewer", "operator", "admin"]
    expires_at: datetime | None = None
    reason: str = Field(default="", max_length=2000)


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class PoolSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slots: int = Field(ge=1, le=1_000_000)
    reason: str = Field(default="", max_length=2000)


TokenList = Page[tokens.TokenRecord]


class TokenCreated(BaseModel):
    name: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    token: str = Field(description="The token: shown only in this answer, stored as a hash.")


class Revoked(BaseModel):
    name: str
    revoked: bool


class Pool(BaseModel):
    name: str
    slots: int
    running: int


PoolList = Page[Pool]


class PoolSize(BaseModel):
    name: str
    slots: int


def _token_json(t: tokens.TokenRecord) -> dict[str, object]:
    return {
        "name": t.name,
        "role": t.role,
        "created_at": t.created_at,
        "created_by": t.created_by,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
    }


@operation(summary="List API tokens (never the tokens themselves)", response=TokenList, tag="admin")
async def list_tokens(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    found = await tokens.listed(request.app[ENGINE_KEY].db)
    return json_response(whole([_token_json(t) for t in found]))


@operation(
    summary="Create an API token",
    response=TokenCreated,
    status=201,
    body=TokenCreate,
    errors=(409,),
    tag="admin",
)
async def create_token(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    body = await read_body(request, TokenCreate)
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        return problem(400, "'expires_at' needs a time zone (e.g. 2027-01-01T00:00:00Z)")
    try:
        token, record = await tokens.create(
            request.app[ENGINE_KEY].db,
            body.name,
            tokens.Role.named(body.role),
            actor=actor_of(request),
            expires_at=body.expires_at,
            reason=body.reason,
        )
    except tokens.TokenError as exc:
        return problem(409 if "exists" in str(exc) else 400, str(exc))
    # The only time the token is ever shown.
    return json_response({**_token_json(record), "token": token}, 201)


@operation(summary="Revoke an API token", response=Revoked, body=Reason, errors=(404,), tag="admin")
async def revoke_token(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    body = await read_body(request, Reason)
    name = request.match_info["name"]
    try:
        await tokens.revoke(
            request.app[ENGINE_KEY].db, name, actor=actor_of(request), reason=body.reason
        )
    except tokens.TokenError as exc:
        return problem(404, str(exc))
    return json_response({"name": name, "revoked": True})


@operation(summary="List pools with their slots in use", response=PoolList, tag="admin")
async def list_pools(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    async with request.app[ENGINE_KEY].db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.list_pools)
    return json_response(whole([dict(r) for r in rows]))


@operation(summary="Set a pool's size", response=PoolSize, body=PoolSet, tag="admin")
async def set_pool(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    body = await read_body(request, PoolSet)
    name = request.match_info["name"]
    await request.app[ENGINE_KEY].set_pool(
        name, body.slots, actor=actor_of(request), reason=body.reason
    )
    return json_response({"name": name, "slots": body.slots})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/tokens", list_tokens)
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_post("/api/v1/tokens/{name}/revoke", revoke_token)
    app.router.add_get("/api/v1/pools", list_pools)
    app.router.add_put("/api/v1/pools/{name}", set_pool)
