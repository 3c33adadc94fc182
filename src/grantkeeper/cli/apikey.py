"""``grantkeeper apikey``: the API keys that may ask ``grantkeeper serve`` for tokens.

``create`` prints the key once, alone on standard output (it is stored only as a keyed hash); ``revoke`` takes
effect at once on every instance sharing the store (``serve`` looks keys up on every request).
"""

from __future__ import annotations

import time

import click

from grantkeeper.admin import DEFAULT_SCOPES, SCOPES, Admin, ApiKeyRecord
from grantkeeper.cli import _render
from grantkeeper.cli._help import HelpGroup
from grantkeeper.cli._io import DURATION, echo_json, json_option, open_keeper
from grantkeeper.cli._session import Session

__all__ = ["apikey"]


@click.group(cls=HelpGroup)
def apikey() -> None:
    """API keys for 'grantkeeper serve': which grants a key reaches, with which scopes."""


@apikey.command("create")
@click.argument("name")
@click.option("--grants", "grants", required=True, metavar="PATTERNS",
              help="Comma-separated grant names or patterns the key reaches ('*' matches any run), e.g. "
              "'acme-*,billing'.")  # fmt: skip
@click.option("--scopes", default=",".join(DEFAULT_SCOPES), show_default=True, metavar="SCOPES",
              help=f"Comma-separated: {', '.join(SCOPES)}.")  # fmt: skip
@click.option("--expires", type=DURATION, metavar="DURATION", help="Expire after this long (90d, 12h); default never.")
@click.pass_obj
def create(session: Session, name: str, grants: str, scopes: str, expires: float | None) -> None:
    """Create API key NAME and print the key, once, alone on standard output (it cannot be shown again)."""
    with open_keeper(session) as keeper:
        made = Admin.of(keeper).create_api_key(name, grants=grants, scopes=scopes, lifetime=expires)
    click.echo(made.key)
    click.echo(f"API key {name} created: grants {','.join(made.record.grants)}, scopes "
               f"{','.join(made.record.scopes)}, expires {_when(made.record.expires_at)}", err=True)  # fmt: skip


def _when(ts: float | None) -> str:
    return "never" if ts is None else _render.iso_utc(ts)


def _state(record: ApiKeyRecord, now: float) -> str:
    if record.revoked_at is not None:
        return "revoked"
    return "active" if record.usable(now) else "expired"


@apikey.command("list")
@json_option("Print the keys as JSON (never the keys themselves).")
@click.pass_obj
def list_(session: Session, as_json: bool) -> None:
    """List API keys: name, id, grants, scopes, state and expiry (the keys themselves are not stored)."""
    with open_keeper(session) as keeper:
        records = Admin.of(keeper).api_keys()
    now = time.time()
    if as_json:
        echo_json([{**r.as_dict(), "state": _state(r, now)} for r in records])
    elif not records:
        click.echo("no API keys; create one with 'grantkeeper apikey create NAME --grants PATTERNS'")
    else:
        rows = [(r.name, r.key_id, ",".join(r.grants), ",".join(r.scopes), _state(r, now), _when(r.expires_at))
                for r in records]  # fmt: skip
        _render.echo_table(("NAME", "ID", "GRANTS", "SCOPES", "STATE", "EXPIRES"), rows)


@apikey.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke(session: Session, name: str) -> None:
    """Revoke API key NAME: every 'serve' instance on this store refuses it from its next request."""
    with open_keeper(session) as keeper:
        record = Admin.of(keeper).revoke_api_key(name)
    click.echo(f"API key {record.name} revoked at {_when(record.revoked_at)}")
