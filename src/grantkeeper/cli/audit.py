"""``grantkeeper audit``: what ``grantkeeper serve`` handed out, to which API key, when (fingerprints only)."""

from __future__ import annotations

import click

from grantkeeper.admin import Admin, AuditEntry
from grantkeeper.cli import _render
from grantkeeper.cli._io import echo_json, json_option, open_keeper
from grantkeeper.cli._session import Session
from grantkeeper.cli.completion import complete_grant

__all__ = ["audit"]


def _row(e: AuditEntry) -> list[object]:
    generation = "-" if e.generation is None else e.generation
    style = "green" if e.status < 400 else "red"
    return [_render.iso_utc(e.at), e.api_key, e.action, e.grant or "-", _render.Styled(str(e.status), style),
            e.fingerprint or "-", generation, _render.clean(e.detail or "")]  # fmt: skip


@click.command(short_help="Show the audit trail of 'serve': which API key got which token, newest first.")
@click.option("--grant", "grant", metavar="NAME", shell_complete=complete_grant, help="Only this grant's entries.")
@click.option("--key", "api_key", metavar="NAME", help="Only this API key's entries ('unix-socket' for the socket).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Show this many entries.")
@json_option("Print the entries as a JSON list (format: docs/serve.md).")
@click.pass_obj
def audit(session: Session, grant: str | None, api_key: str | None, limit: int, as_json: bool) -> None:
    """Show what 'grantkeeper serve' handed out, newest first: when, which API key, what it asked for, which grant,
    the HTTP status answered, and the access token served as a fingerprint (never the token). Entries are kept
    with the attempt history's retention rules."""
    with open_keeper(session) as keeper:
        entries = Admin.of(keeper).audit(grant=grant, api_key=api_key, limit=limit)
    if as_json:
        echo_json([e.as_dict() for e in entries])
    elif not entries:
        which = "".join(f" for {kind} {value}" for kind, value in (("grant", grant), ("key", api_key)) if value)
        click.echo(f"no audit entries{which}; 'grantkeeper serve' writes them as it answers")
    else:
        _render.echo_table(
            ("AT", "KEY", "ACTION", "GRANT", "STATUS", "TOKEN", "GEN", "DETAIL"), [_row(e) for e in entries]
        )
