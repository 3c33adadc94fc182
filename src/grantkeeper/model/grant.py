"""Grant: one named, stored authorization, and the lease that guards its refresh."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from grantkeeper._secrets import Secret
from grantkeeper.model.tokens import access_token_ok

__all__ = ["Grant", "GrantState", "Lease", "LeaseHolder"]


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
        if self.access_token is None or self.expires_at is None:
            return None
        if not access_token_ok(self.access_token.reveal()):  # stored before tokens were checked: never serve it
            return None
        if self.updated_at is not None:
            skew = min(skew, max(0.0, (self.expires_at - self.updated_at) / 2))
        return self.expires_at - skew

    def access_usable(self, now: float, skew: float) -> bool:
        """An access token exists and stays valid beyond the skew."""
        until = self.usable_until(skew)
        return until is not None and until > now


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
