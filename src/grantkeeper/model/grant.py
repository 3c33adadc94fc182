"""Grant: one named, stored authorization, and the lease that guards its refresh."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from grantkeeper._secrets import Secret
from grantkeeper.model.tokens import access_token_ok

__all__ = ["Grant", "GrantState", "Lease", "LeaseHolder", "ServedToken", "serve_until"]


class GrantState(StrEnum):
    ACTIVE = "active"
    NEEDS_REAUTH = "needs_reauth"


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant as read from the store. Tokens are `Secret`s; fingerprints are safe to show."""

    name: str
    provider: str
    refresh_token: Secret | None
    refresh_fp: str | None
    access_token: Secret | None
    access_fp: str | None
    expires_at: float | None
    scopes: tuple[str, ...]
    generation: int
    state: GrantState
    access_verified: bool = True
    last_error: str | None = None
    last_error_at: float | None = None
    updated_at: float | None = None
    refreshed_at: float | None = None  # last time the refresh token was used or obtained (idle expiry)
    created_at: float | None = None  # when the consent was imported (absolute expiry)
    refresh_issued_at: float | None = None  # when the current refresh token was issued; None: before schema v3
    refresh_expires_at: float | None = None  # the provider's stated expiry of the current refresh token, if any

    def usable_until(self, skew: float) -> float | None:
        """When the access token stops being served: expiry minus the skew (None: never, there is none or it is
        not header-safe).

        The skew is capped at half the token's lifetime (counted from when it was stored), so a provider that
        issues very short-lived tokens still gets them used instead of refreshed on every call.
        """
        return serve_until(self.access_token, self.expires_at, self.updated_at, skew)

    def access_usable(self, now: float, skew: float) -> bool:
        """An access token exists and stays valid beyond the skew."""
        until = self.usable_until(skew)
        return until is not None and until > now


def serve_until(
    access_token: Secret | None, expires_at: float | None, updated_at: float | None, skew: float
) -> float | None:
    """`Grant.usable_until` from just the columns it needs (the store's cold read fetches no more than these)."""
    if access_token is None or expires_at is None:
        return None
    if not access_token_ok(access_token.reveal()):  # stored before tokens were checked: never serve it
        return None
    if updated_at is not None:
        skew = min(skew, max(0.0, (expires_at - updated_at) / 2))
    return expires_at - skew


class ServedToken(NamedTuple):
    """An access token as it is served for a grant, and what is known about it: by the keeper from its cache
    (`Keeper.served`; the cache holds these), by the store from a cold read (`Store.served_access`). A named
    tuple: every cold read makes one, and it is the cheapest immutable record to build."""

    access_token: Secret
    generation: int
    expires_at: float  # the provider's expiry
    serve_until: float  # expiry minus the skew: never served past this (I4)


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a grant's lease (evidence for errors and status)."""

    worker: str
    fence: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to refresh one grant until ``expires_at``; ``fence`` tells holders apart."""

    grant: str
    worker: str
    fence: int
    expires_at: float
