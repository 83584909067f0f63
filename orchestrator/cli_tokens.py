"""``orchestrator tokens``: create, list and revoke API tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from orchestrator.cli_support import cli_actor, cli_settings, echo_page, open_database, run_async
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.tokens import Role, TokenRecord

_SPAN = re.compile(r"([0-9]{1,6})([mhdw])\Z")
_UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str) -> datetime:
    """``30d``, ``12h``, ``90m``, ``2w`` from now, or an ISO 8601 time (UTC if no zone)."""
    span = _SPAN.match(text.strip())
    if span:
        amount, unit = span.groups()
        return SYSTEM_CLOCK.now() + timedelta(**{_UNIT[unit]: int(amount)})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a span (30d, 12h, 90m, 2w) nor an ISO 8601 time",
            param_hint="--expires",
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= SYSTEM_CLOCK.now():
        raise click.BadParameter(f"{text!r} is in the past", param_hint="--expires")
    return when


def _state(t: TokenRecord, now: datetime) -> str:
    if t.revoked_at is not None:
        return "revoked"
    if t.expires_at is not None and t.expires_at <= now:
        return "expired"
    return "active"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group("tokens")
def tokens_cmd() -> None:
    """API tokens: `/api/v1` callers send one as `Authorization: Bearer <token>`.

    Roles: viewer (read), operator (also trigger, clear, cancel, mark, pause,
    redrive, backfill), admin (also tokens and pools)."""


@tokens_cmd.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.label for r in Role]))
@click.option("--expires", default=None, help="A span from now (30d, 12h) or an ISO 8601 time.")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
def create_cmd(name: str, role: str, expires: str | None, reason: str) -> None:
    """Create token NAME and print it once: it is stored only as a hash."""
    from orchestrator import tokens

    expires_at = parse_expiry(expires) if expires else None
    settings = cli_settings()

    async def go() -> str:
        db = await open_database(settings)
        try:
            token, _record = await tokens.create(
                db, name, Role.named(role), actor=cli_actor(), expires_at=expires_at, reason=reason
            )
        finally:
            await db.close()
        return token

    token = run_async(go)
    click.echo(token)
    until = f", expires {_when(expires_at)}" if expires_at else ""
    click.echo(
        f"token {name!r} ({role}{until}) created; it is shown only now: keep it secret", err=True
    )


@tokens_cmd.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def list_cmd(as_json: bool) -> None:
    """Every token with its role and state (the tokens themselves are never kept)."""
    from orchestrator import tokens
    from orchestrator.views import render_table

    settings = cli_settings()

    async def go() -> list[TokenRecord]:
        db = await open_database(settings)
        try:
            return await tokens.listed(db)
        finally:
            await db.close()

    found = run_async(go)
    now = SYSTEM_CLOCK.now()
    if as_json:
        echo_page(
            [
                {
                    "name": t.name,
                    "role": t.role,
                    "state": _state(t, now),
                    "created_at": t.created_at.isoformat(),
                    "created_by": t.created_by,
                    "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                    "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                }
                for t in found
            ]
        )
        return
    if not found:
        click.echo("no tokens; `orchestrator tokens create NAME --role viewer` makes one")
        return
    click.echo(
        render_table(
            ("NAME", "ROLE", "STATE", "CREATED", "BY", "EXPIRES"),
            [
                (
                    t.name,
                    t.role,
                    _state(t, now),
                    _when(t.created_at),
                    t.created_by,
                    _when(t.expires_at),
                )
                for t in found
            ],
        )
    )


@tokens_cmd.command("revoke")
@click.argument("name")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
def revoke_cmd(name: str, reason: str) -> None:
    """Revoke token NAME: refused by every server within its token cache time."""
    from orchestrator import tokens

    settings = cli_settings()

    async def go() -> None:
        db = await open_database(settings)
        try:
            await tokens.revoke(db, name, actor=cli_actor(), reason=reason)
        finally:
            await db.close()

    run_async(go)
    click.echo(f"token {name!r} revoked")
