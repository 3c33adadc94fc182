"""Plain-text rendering for the CLI: times, aligned tables, grants, providers. Never a token.

Everything here takes fingerprints and names only; values that came from a user or a provider are passed
through `clean` so control characters cannot rewrite the terminal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from grantkeeper.engine import GrantStatus
from grantkeeper.model import Grant, Provider
from grantkeeper.model.times import iso_utc

__all__ = [
    "clean",
    "expiry",
    "grant_dict",
    "grant_summary",
    "iso_utc",
    "provider_dict",
    "provider_rows",
    "provider_summary",
    "status_lines",
    "status_rows",
    "table",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: object) -> str:
    """`text` without control characters (terminal escapes), for values a user or provider supplied."""
    return _CONTROL.sub("?", str(text))


def expiry(ts: float | None, now: float) -> str:
    """``<ISO time> (<n> s left)`` or ``(expired <n> s ago)``; ``-`` when there is no access token."""
    if ts is None:
        return "-"
    left = ts - now
    relative = f"{left:.0f} s left" if left >= 0 else f"expired {-left:.0f} s ago"
    return f"{iso_utc(ts)} ({relative})"


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


def provider_rows(providers: Sequence[Provider]) -> list[str]:
    return table(
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


def status_rows(statuses: Sequence[GrantStatus], now: float) -> list[str]:
    return table(
        ("NAME", "PROVIDER", "STATE", "GEN", "ACCESS TOKEN EXPIRES", "LAST ERROR"),
        [
            (s.name, s.provider, s.state.value, s.generation, expiry(s.expires_at, now), s.last_error or "-")
            for s in statuses
        ],
    )


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
