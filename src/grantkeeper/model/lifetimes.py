"""When a grant's refresh token ends: shared by `status`/`keepalive` (ahead of time) and `doctor` (after a
rejection)."""

from __future__ import annotations

from dataclasses import dataclass

from grantkeeper.model.grant import Grant
from grantkeeper.model.provider import Provider, RotationMode

__all__ = ["RefreshTokenExpiry", "refresh_token_ends"]


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
    ends = []
    if provider.refresh_absolute_ttl is not None and grant.created_at is not None:
        ends.append(("absolute", grant.created_at + provider.refresh_absolute_ttl, False))
    if provider.refresh_idle_ttl is not None and grant.refreshed_at is not None:
        ends.append(("idle", grant.refreshed_at + provider.refresh_idle_ttl, True))
    if grant.refresh_expires_at is not None:
        ends.append(("stated", grant.refresh_expires_at, provider.rotation is not RotationMode.NEVER))
    return [RefreshTokenExpiry(grant.name, provider.name, kind, at, renew) for kind, at, renew in ends]
