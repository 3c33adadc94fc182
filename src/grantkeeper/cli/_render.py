"""Rendering for the CLI: times, tables, grants, providers. Never a token.

Everything here takes fingerprints and names only; values that came from a user or a provider are passed
through `clean` so control characters cannot rewrite the terminal. A table is plain, space-aligned text unless
stdout is a terminal (`echo_table`): scripts parse the plain form, so it does not change with the terminal, and
only a person sees the Rich form with its colours. Rich cells are `rich.text.Text`, never markup, so a name like
``[red]x`` prints as itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import click

from grantkeeper._exceptions import without_controls
from grantkeeper.cli._io import terminal_console
from grantkeeper.engine import GrantStatus
from grantkeeper.model import Grant, GrantState, Provider
from grantkeeper.model.lifetimes import RefreshTokenExpiry
from grantkeeper.model.times import iso_utc

__all__ = [
    "Styled",
    "clean",
    "echo_table",
    "expiry",
    "grant_dict",
    "grant_record",
    "grant_summary",
    "health",
    "iso_utc",
    "provider_dict",
    "provider_rows",
    "provider_summary",
    "relative",
    "status_lines",
    "status_rows",
    "table",
]


def clean(text: object) -> str:
    """`text` without control characters (terminal escapes), for values a user or provider supplied."""
    return without_controls(text)


def expiry(ts: float | None, now: float) -> str:
    """``<ISO time> (<n> s left)`` or ``(expired <n> s ago)``; ``-`` when there is no access token."""
    if ts is None:
        return "-"
    left = ts - now
    relative = f"{left:.0f} s left" if left >= 0 else f"expired {-left:.0f} s ago"
    return f"{iso_utc(ts)} ({relative})"


def relative(ts: float, now: float) -> str:
    """How far `ts` is from `now` for a person: ``in 42m``, ``in 3d``, ``expired 3h ago``."""
    left = ts - now
    seconds = abs(left)
    for unit, size, limit in (("s", 1, 90), ("m", 60, 90 * 60), ("h", 3600, 48 * 3600)):
        if seconds < limit:
            amount = f"{seconds / size:.0f}{unit}"
            break
    else:
        amount = f"{seconds / 86400:.0f}d"
    return f"in {amount}" if left >= 0 else f"expired {amount} ago"


@dataclass(frozen=True, slots=True)
class Styled:
    """A table cell with a Rich style (``"green"``, ``"bold red"``) used only on a terminal."""

    text: object
    style: str

    def __str__(self) -> str:
        return str(self.text)


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, indent: str = "") -> None:
    """Print a table on stdout: a Rich table on a terminal, else `table`'s plain lines (each after `indent`).

    Cells are any objects (cleaned of control characters in both forms); `Styled` cells are coloured on a
    terminal that allows colour.
    """
    console = terminal_console()
    if console is None:
        for line in table(headers, rows):
            click.echo(indent + line)
        return
    from rich import box
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for header in headers:
        grid.add_column(Text(clean(header)), overflow="fold")
    for row in rows:
        grid.add_row(*(Text(clean(c), style=c.style if isinstance(c, Styled) else "") for c in row))
    console.print(Padding(grid, (0, 0, 0, len(indent))) if indent else grid)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[clean(c) for c in headers], *[[clean(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return lines


def _secret_source(provider: Provider) -> str:
    if provider.client_secret is not None:
        return "stored (encrypted)"
    if provider.client_secret_env is not None:
        return f"${provider.client_secret_env}"
    if provider.private_key_file is not None:
        return f"private key {clean(provider.private_key_file)}"
    return "none"


def provider_rows(providers: Sequence[Provider]) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    """`provider list`'s headers and rows (for `echo_table`)."""
    return (
        ("NAME", "TOKEN URL", "CLIENT ID", "AUTH", "ROTATION", "GRACE", "SKEW", "CLIENT SECRET"),
        [
            (p.name, p.token_url, p.client_id, p.auth_method.value, p.rotation.value, f"{p.reuse_grace:g}s",
             f"{p.skew:g}s", _secret_source(p))
            for p in providers
        ],
    )  # fmt: skip


def provider_dict(provider: Provider) -> dict[str, object]:
    """A provider as JSON data: whether a secret is stored, or which variable holds it; never the secret."""
    return {
        "name": provider.name,
        "token_url": provider.token_url,
        "client_id": provider.client_id,
        "client_secret_stored": provider.client_secret is not None,
        "client_secret_env": provider.client_secret_env,
        "auth_method": provider.auth_method.value,
        "rotation": provider.rotation.value,
        "reuse_grace": provider.reuse_grace,
        "skew": provider.skew,
        "default_expires_in": provider.default_expires_in,
        "refresh_idle_ttl": provider.refresh_idle_ttl,
        "refresh_absolute_ttl": provider.refresh_absolute_ttl,
        "private_key_file": provider.private_key_file,
        "key_id": provider.key_id,
        "jwt_audience": provider.jwt_audience,
        "send_scope": provider.send_scope,
        "profile": provider.profile,
        "authorization_url": provider.authorization_url,
        "revocation_url": provider.revocation_url,
        "device_authorization_url": provider.device_authorization_url,
        "authorize_params": dict(provider.authorize_params),
        "api_base_url": provider.api_base_url,
        "ca_bundle": provider.ca_bundle,
        "proxy": provider.proxy,
        "insecure_http": provider.insecure_http,
    }


def provider_summary(provider: Provider) -> str:
    """One line describing how grantkeeper will talk to `provider` (no secret)."""
    return (
        f"token URL {clean(provider.token_url)}, client id {clean(provider.client_id)}, "
        f"{provider.auth_method.value}, client secret {_secret_source(provider)}, rotation {provider.rotation.value}, "
        f"reuse grace {provider.reuse_grace:g} s, skew {provider.skew:g} s"
    )


def grant_summary(grant: Grant, now: float) -> list[str]:
    """Generation, fingerprints and expiry of a grant, as indented lines."""
    return [
        f"  generation     {grant.generation}",
        f"  refresh token  {grant.refresh_fp or '-'}",
        f"  access token   {grant.access_fp or '-'}",
        f"  expires        {expiry(grant.expires_at, now)}",
    ]


#: A refresh token or consent ending sooner than this is shown in yellow (red if only a new consent renews it).
SOON = 7 * 86400.0


def health(state: GrantState, last_error: str | None, ends: Iterable[RefreshTokenExpiry], now: float) -> str:
    """A grant's health: "red" when a person must act, "yellow" when it needs watching, else "green"."""
    ends = tuple(ends)
    if state is GrantState.NEEDS_REAUTH or any(not e.renewable and e.deadline - SOON <= now for e in ends):
        return "red"
    if last_error is not None or any(e.deadline - SOON <= now for e in ends):
        return "yellow"
    return "green"


def _health(status: GrantStatus, now: float) -> str:
    """`health` as a terminal style."""
    colour = health(status.state, status.last_error, status.refresh_ends, now)
    return "bold red" if colour == "red" else colour


def _access_cell(status: GrantStatus, now: float) -> Styled:
    if status.expires_at is None:
        return Styled("-", "dim")
    # A lapsed access token is routine (the next use refreshes it), so yellow, not red.
    return Styled(relative(status.expires_at, now), "green" if status.access_valid else "yellow")


def _refresh_end_cell(status: GrantStatus, now: float) -> Styled:
    if not status.refresh_ends:
        return Styled("-", "dim")
    end = status.refresh_ends[0]
    style = "" if end.deadline - SOON > now else "yellow" if end.renewable else "bold red"
    return Styled(f"{relative(end.deadline, now)} ({end.kind})", style)


def status_rows(
    statuses: Sequence[GrantStatus], now: float, *, terminal: bool = False
) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    """The all-grants table of `status` and `grant list` (for `echo_table`).

    Plain text keeps its long-standing columns (scripts parse them); a terminal gets relative times, the
    refresh token's first known end, and colour for health.
    """
    if not terminal:
        return (
            ("NAME", "PROVIDER", "STATE", "GEN", "ACCESS TOKEN EXPIRES", "LAST ERROR"),
            [
                (s.name, s.provider, s.state.value, s.generation, expiry(s.expires_at, now), s.last_error or "-")
                for s in statuses
            ],
        )
    return (
        ("NAME", "PROVIDER", "STATE", "GEN", "ACCESS TOKEN", "REFRESH TOKEN ENDS", "LAST ERROR"),
        [
            (s.name, s.provider, Styled(s.state.value, _health(s, now)), s.generation, _access_cell(s, now),
             _refresh_end_cell(s, now), Styled(s.last_error, "red") if s.last_error else "-")
            for s in statuses
        ],
    )  # fmt: skip


def grant_record(grant: Grant) -> dict[str, object]:
    """What a command that stored or removed `grant` reports with ``--json``: names and fingerprints only."""
    return {
        "name": grant.name,
        "provider": grant.provider,
        "generation": grant.generation,
        "scopes": list(grant.scopes),
        "refresh_fp": grant.refresh_fp,
        "access_fp": grant.access_fp,
        "expires_at": grant.expires_at,
    }


def grant_dict(status: GrantStatus) -> dict[str, object]:
    """The columns of `status_rows` as JSON data, with the fingerprints (never a token)."""
    return {
        "name": status.name,
        "provider": status.provider,
        "state": status.state.value,
        "generation": status.generation,
        "refresh_fp": status.refresh_fp,
        "access_fp": status.access_fp,
        "expires_at": status.expires_at,
        "access_valid": status.access_valid,
        "last_error": status.last_error,
        "last_error_at": status.last_error_at,
    }


def _when(ts: float | None) -> str:
    return iso_utc(ts) if ts is not None else "-"


def status_lines(status: GrantStatus, now: float) -> list[str]:
    """Everything `GrantStatus` holds, for one grant: fingerprints, lease, recent attempts."""
    lease = status.lease
    lease_text = (
        "none" if lease is None else f"held by {lease.worker} (fence {lease.fence}, until {iso_utc(lease.expires_at)})"
    )
    last_error = "-"
    if status.last_error is not None:
        at = f" at {iso_utc(status.last_error_at)}" if status.last_error_at is not None else ""
        last_error = f"{status.last_error}{at}"
    lines = [
        f"grant             {status.name}",
        f"provider          {status.provider}",
        f"state             {status.state.value}",
        f"generation        {status.generation}",
        f"refresh token     {status.refresh_fp or '-'}",
        f"refresh issued    {_when(status.refresh_issued_at)}, last used {_when(status.refresh_used_at)}",
        *(
            f"refresh ends      {expiry(e.deadline, now)}: {e.kind} lifetime, "
            + ("a refresh renews it" if e.renewable else "needs a new consent")
            for e in status.refresh_ends
        ),
        f"access token      {status.access_fp or '-'} ({'usable' if status.access_valid else 'not usable'})",
        f"expires           {expiry(status.expires_at, now)}",
        f"scopes            {' '.join(status.scopes) or '-'}",
        f"updated           {iso_utc(status.updated_at) if status.updated_at is not None else '-'}",
        f"last error        {last_error}",
        f"lease             {lease_text}",
        f"pending recovery  {status.pending_recovery}",
    ]
    lines = [clean(line) for line in lines]
    if not status.attempts:
        return [*lines, "recent attempts   none"]
    rows = [
        (a.id, a.generation, a.refresh_fp, a.worker, iso_utc(a.started_at), a.state.value, a.outcome or "-",
         a.resend_of if a.resend_of is not None else "-")
        for a in status.attempts
    ]  # fmt: skip
    header = ("ID", "GEN", "FINGERPRINT", "WORKER", "STARTED", "STATE", "OUTCOME", "RESEND OF")
    return [*lines, "recent attempts (newest first):", *("  " + row for row in table(header, rows))]
