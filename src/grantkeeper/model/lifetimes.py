"""When a grant's refresh token ends: shared by `status`/`keepalive` (ahead of time) and `doctor` (after a
rejection)."""

from __future__ import annotations

from dataclasses import dataclass

from grantkeeper.model.grant import Grant
from grantkeeper.model.provider import Provider, RotationMode

__all__ = ["RefreshTokenExpiry", "refresh_token_ends", "token_ends"]


@dataclass(frozen=True, slots=True)
class RefreshTokenExpiry:
    """When a grant's refresh token (or the consent behind it) ends, and whether a refresh can push that back.

    ``kind`` is ``"idle"`` (the provider's idle lifetime, counted from the last refresh: a refresh renews it),
    ``"stated"`` (the provider's own ``refresh_token_expires_in``: renewable when the provider rotates, since
    the successor comes with its own lifetime) or ``"absolute"`` (the provider's cap counted from consent:
    only a new consent renews it).
    """

    grant: str
    provider: str
    kind: str
    deadline: float
    renewable: bool


def refresh_token_ends(grant: Grant, provider: Provider) -> list[RefreshTokenExpiry]:
    """Every known end of the grant's refresh token: the provider's lifetimes and the expiry it stated."""
    return token_ends(
        grant.name, provider.name, created_at=grant.created_at, refreshed_at=grant.refreshed_at,
        refresh_expires_at=grant.refresh_expires_at, idle_ttl=provider.refresh_idle_ttl,
        absolute_ttl=provider.refresh_absolute_ttl, rotates=provider.rotation is not RotationMode.NEVER,
    )  # fmt: skip


def token_ends(
    grant: str, provider: str, *, created_at: float | None, refreshed_at: float | None,
    refresh_expires_at: float | None, idle_ttl: float | None, absolute_ttl: float | None, rotates: bool,
) -> list[RefreshTokenExpiry]:  # fmt: skip
    """`refresh_token_ends` from the columns alone (the console's grants list reads rows, not whole grants)."""
    ends = []
    if absolute_ttl is not None and created_at is not None:
        ends.append(("absolute", created_at + absolute_ttl, False))
    if idle_ttl is not None and refreshed_at is not None:
        ends.append(("idle", refreshed_at + idle_ttl, True))
    if refresh_expires_at is not None:
        ends.append(("stated", refresh_expires_at, rotates))
    return [RefreshTokenExpiry(grant, provider, kind, at, renew) for kind, at, renew in ends]
