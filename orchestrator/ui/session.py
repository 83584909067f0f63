"""Signing a browser in with an API token: ``/api/v1/session``.

- ``POST`` ``{"token": "..."}`` checks the token and answers who it is, its
  role and the anti-forgery value; the token itself goes into an HttpOnly,
  SameSite=Strict cookie, out of reach of the page's scripts.
- ``GET`` answers who the cookie (or bearer token) is, or that nobody is
  signed in (``open`` says whether the API needs no token here).
- ``DELETE`` signs out (removes the cookie).

CSRF: a request authenticated by the cookie that changes anything must send
the ``X-CSRF-Token`` header with the value sign-in answered
(:func:`orchestrator.auth.csrf_token`, checked in the auth middleware).
Besides, SameSite=Strict keeps the cookie off cross-site requests, and the
API takes only JSON bodies, which a page of another origin cannot send
without a preflight.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api_bodies import read_body
from orchestrator.auth import CSRF_HEADER, SESSION_COOKIE, Authenticator, Identity, csrf_token
from orchestrator.openapi import operation
from orchestrator.problems import FieldError, json_response, problem

#: Longest token taken (real ones are about 50 characters).
MAX_TOKEN = 500


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=MAX_TOKEN, description="An API token.")


class SessionInfo(BaseModel):
    signed_in: bool = Field(description="A valid token came with the request.")
    open: bool = Field(description="The API needs no token here (a loopback dev server).")
    name: str | None = Field(description="The token's name: the actor actions are recorded as.")
    role: str | None = Field(description="viewer, operator or admin; null: none (sign in).")
    csrf: str | None = Field(description=f"Send as the {CSRF_HEADER} header to change anything.")


def _auth(request: web.Request) -> Authenticator:
    from orchestrator.api import AUTH_KEY

    return request.app[AUTH_KEY]


def _info(identity: Identity | None, token: str | None, *, open_api: bool) -> dict[str, object]:
    if identity is None:
        # An open API lets anyone do anything; the page shows every action.
        return {
            "signed_in": False,
            "open": open_api,
            "name": None,
            "role": "admin" if open_api else None,
            "csrf": None,
        }
    return {
        "signed_in": True,
        "open": open_api,
        "name": identity.name,
        "role": identity.role.label,
        "csrf": csrf_token(token) if token else None,
    }


@operation(
    summary="Sign a browser in with an API token (sets an HttpOnly cookie)",
    response=SessionInfo,
    body=SignIn,
    errors=(401,),
    auth="none",
    tag="session",
)
async def sign_in(request: web.Request) -> web.Response:
    body = await read_body(request, SignIn)
    auth = _auth(request)
    identity = await auth.identify(body.token.strip())
    if identity is None:
        return problem(
            401,
            "that token is unknown, revoked or expired",
            errors=[FieldError("body", "token", "not a valid API token")],
        )
    answer = json_response(_info(identity, body.token.strip(), open_api=not auth.required))
    answer.set_cookie(
        SESSION_COOKIE,
        body.token.strip(),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return answer


@operation(
    summary="Who this browser is signed in as",
    response=SessionInfo,
    auth="none",
    tag="session",
)
async def who(request: web.Request) -> web.Response:
    auth = _auth(request)
    token = request.cookies.get(SESSION_COOKIE)
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
    identity = await auth.identify(token) if token and len(token) <= MAX_TOKEN else None
    answer = json_response(_info(identity, token, open_api=not auth.required))
    if token and identity is None and SESSION_COOKIE in request.cookies:
        answer.del_cookie(SESSION_COOKIE, path="/")  # stale: sign in again
    return answer


class SignedOut(BaseModel):
    signed_in: bool


@operation(summary="Sign this browser out", response=SignedOut, auth="none", tag="session")
async def sign_out(request: web.Request) -> web.Response:
    answer = json_response({"signed_in": False})
    answer.del_cookie(SESSION_COOKIE, path="/")
    return answer


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/session", sign_in)
    app.router.add_get("/api/v1/session", who)
    app.router.add_delete("/api/v1/session", sign_out)
